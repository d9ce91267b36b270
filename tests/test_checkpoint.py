"""Checkpoint files: atomic writes that never lose the previous file, and clear load errors."""

import argparse
import hashlib
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from utils.checkpoint import (
    CheckpointError,
    has_digest,
    is_project_checkpoint,
    load_checkpoint,
    read_file,
    save_atomic,
    versions,
)

# The marker that train.py writes; checkpoints of earlier versions carry this exact string.
MARKER = "mixcldehazenet-checkpoint"


def _checkpoint(value: float) -> dict:
    return {"format": MARKER, "format_version": 1, "model": {"w": torch.full((2, 3), value)}}


def _interrupting_save(exc: BaseException, seen: list[Path]):
    """A torch.save that writes part of the file, then fails as a full disk or Ctrl-C would."""

    def save(obj, f) -> None:
        seen.append(Path(f.name))
        f.write(b"partial")
        f.flush()
        raise exc

    return save


def test_save_into_a_missing_folder_and_load_back(tmp_path):
    path = tmp_path / "runs" / "exp" / "last.pth"
    save_atomic(_checkpoint(1.5), path)
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == MARKER
    assert torch.equal(ckpt["model"]["w"], torch.full((2, 3), 1.5))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pth", "last.pth.sha256"]


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "last.pth"
    save_atomic(_checkpoint(1.0), path)
    save_atomic(_checkpoint(2.0), str(path))
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((2, 3), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "last.pth.sha256"]


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failure_mid_save_keeps_the_previous_file(tmp_path, monkeypatch, exc):
    path = tmp_path / "best.pth"
    save_atomic(_checkpoint(1.0), path)
    before = path.read_bytes()
    seen: list[Path] = []
    monkeypatch.setattr(torch, "save", _interrupting_save(exc, seen))
    with pytest.raises(type(exc)):
        save_atomic(_checkpoint(2.0), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.pth",
        "best.pth.sha256",
    ]  # no partial
    # The partial file lay beside the target (so the rename is atomic), hidden and named
    # *.tmp, so that nothing globbing for checkpoints picks up one a SIGKILL left behind.
    (partial,) = seen
    assert partial.parent == tmp_path
    assert partial.name.startswith(".best.pth.") and partial.name.endswith(".tmp")


def test_ctrl_c_right_after_the_rename_keeps_the_new_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_atomic(_checkpoint(1.0), path)
    replace = os.replace

    def replace_then_interrupt(src, dst) -> None:
        replace(src, dst)
        if Path(dst) == path:  # the new checkpoint is in place, its digest file not yet final
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_atomic(_checkpoint(2.0), path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((2, 3), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "last.pth.sha256"]


def test_an_object_that_cannot_be_saved_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.pth"
    save_atomic(_checkpoint(1.0), path)
    with pytest.raises(Exception, match="pickle"):
        save_atomic({"format": MARKER, "fn": lambda: 0}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((2, 3), 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "last.pth.sha256"]


def test_missing_file_is_named(tmp_path):
    for load in (read_file, load_checkpoint):
        with pytest.raises(CheckpointError, match=r"not found.*nope\.pth"):
            load(tmp_path / "nope.pth")
    (tmp_path / "folder.pth").mkdir()
    with pytest.raises(CheckpointError, match=r"folder\.pth"):
        load_checkpoint(tmp_path / "folder.pth")


def test_a_file_that_is_not_a_torch_file_is_refused(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"{path} is not a readable PyTorch checkpoint (truncated or another kind of file); "
        "pass a .pth written by train.py or released MixCLDehazeNet or MixDehazeNet weights"
    )


@pytest.mark.parametrize("unsafe_default", [False, True])
def test_a_pickled_object_is_refused(tmp_path, monkeypatch, unsafe_default):
    if unsafe_default:  # torch's own default turned to full unpickling: ours stays safe
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path = tmp_path / "pickled.pth"
    torch.save({"format": MARKER, "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(
        f"{path} holds Python objects (argparse.Namespace) that are not loaded, for safety; "
        "pass a .pth written by train.py"
    )


@pytest.mark.parametrize(
    "obj",
    [
        {"w": torch.zeros(2)},  # a bare state dict, e.g. someone else's weights
        {"format": "other-project", "model": {}},
        [1, 2],
    ],
)
def test_a_torch_file_that_is_not_our_checkpoint_is_refused(tmp_path, obj):
    path = tmp_path / "weights.pth"
    torch.save(obj, path)
    assert not is_project_checkpoint(read_file(path))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"{path} is not a checkpoint written by train.py (no 'mixcldehazenet-checkpoint' "
        "marker); for the authors' released weights pass --model NAME as well"
    )


def test_a_saved_file_gets_the_permissions_of_any_new_file(tmp_path):
    umask = os.umask(0o022)
    try:
        save_atomic(_checkpoint(1.0), tmp_path / "last.pth")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "last.pth").stat().st_mode) == 0o644  # 0o666 & ~umask


def test_a_checkpoint_saved_on_a_gpu_loads_on_the_cpu(tmp_path, monkeypatch):
    path = tmp_path / "gpu.pth"
    with monkeypatch.context() as m:  # tag the storages as CUDA ones, as a GPU run does
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(_checkpoint(3.0), path)
    w = load_checkpoint(path)["model"]["w"]
    assert w.device.type == "cpu" and torch.equal(w, torch.full((2, 3), 3.0))


def test_read_file_returns_any_torch_file_on_the_cpu(tmp_path):
    path = tmp_path / "released.pth"
    torch.save({"state_dict": {"w": torch.ones(3)}}, path)
    obj = read_file(path)
    assert torch.equal(obj["state_dict"]["w"], torch.ones(3))
    assert obj["state_dict"]["w"].device.type == "cpu"
    assert is_project_checkpoint(_checkpoint(0.0))
    assert not is_project_checkpoint(obj)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_checkpoint_is_named_by_its_digest(tmp_path, damage):
    path = tmp_path / "last.pth"
    save_atomic(_checkpoint(1.0), path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        del data[len(data) // 2 :]
    else:
        data[len(data) // 2] ^= 0x01  # one bit, where torch.load may not notice
    path.write_bytes(bytes(data))
    for load in (read_file, load_checkpoint):
        with pytest.raises(CheckpointError) as info:
            load(path)
        assert str(info.value) == (
            f"{path} does not match its digest last.pth.sha256 (truncated, corrupted or "
            "half-copied); use an earlier checkpoint or copy it again"
        )


def test_keep_n_keeps_the_previous_versions_newest_first(tmp_path):
    path = tmp_path / "last.pth"
    for value in range(4):
        save_atomic(_checkpoint(float(value)), path, keep=3)
    kept = list(versions(path))
    assert [p.name for p in kept] == ["last.pth", "last.1.pth", "last.2.pth"]
    assert [load_checkpoint(p)["model"]["w"][0, 0].item() for p in kept] == [3.0, 2.0, 1.0]
    save_atomic(_checkpoint(4.0), path, keep=2)  # a lower keep drops the oldest
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last.1.pth",
        "last.1.pth.sha256",
        "last.pth",
        "last.pth.sha256",
    ]


def test_a_checkpoint_written_before_digests_still_loads(tmp_path):
    path = tmp_path / "last.pth"
    torch.save(_checkpoint(1.0), path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((2, 3), 1.0))
    save_atomic(_checkpoint(2.0), path, keep=2)  # kept as last.1.pth, still without a digest
    assert load_checkpoint(tmp_path / "last.1.pth")["model"]["w"][0, 0].item() == 1.0
    assert not (tmp_path / "last.1.pth.sha256").exists()


# Saves checkpoints in a loop, as training does: last.pth keeping one previous version after
# every step, best.pth (one version) every 4th; stops when its stdin closes.
WRITER = """
import sys, threading, torch
from utils.checkpoint import save_atomic
folder, stop = sys.argv[1], threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
step = 0
while not stop.is_set():
    ckpt = {"format": "mixcldehazenet-checkpoint", "step": step, "w": torch.full((64, 64), step)}
    save_atomic(ckpt, f"{folder}/last.pth", keep=2)
    if step % 4 == 0:
        save_atomic(ckpt, f"{folder}/best.pth")
    step += 1
"""


def test_a_reader_always_loads_a_complete_verified_checkpoint_while_they_are_written(tmp_path):
    """Another process (test.py --ckpt, a copy, a watcher) loads last.pth and best.pth while
    training replaces them: every load succeeds, none is a false 'does not match its digest'."""
    repo = Path(__file__).resolve().parents[1]
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        cwd=repo,
        stdin=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120  # the writer imports torch first: seconds under load
        while not (tmp_path / "last.1.pth").exists():
            assert writer.poll() is None and time.monotonic() < deadline, "the writer never wrote"
            time.sleep(0.01)
        failures, steps, loads = [], set(), 0
        while loads < 600 or len(steps) < 30:  # hundreds of loads while 30 saves or more
            assert time.monotonic() < deadline + 120, f"{len(steps)} saves in 4 minutes"
            path = tmp_path / ("best.pth" if loads % 3 == 2 else "last.pth")
            loads += 1
            try:
                ckpt = load_checkpoint(path)
            except (CheckpointError, OSError) as e:
                failures.append(repr(e))
                continue
            assert torch.equal(ckpt["w"], torch.full((64, 64), ckpt["step"]))
            steps.add(ckpt["step"])
    finally:
        writer.communicate(timeout=120)  # closes its stdin: it stops
    assert writer.returncode == 0
    assert failures == [], f"{len(failures)} of {loads} loads failed, e.g. {failures[:3]}"


def test_every_path_names_a_verified_checkpoint_after_every_step_of_a_save(tmp_path, monkeypatch):
    """The states a reader can meet while save_atomic works, each one checked."""
    last, best = tmp_path / "last.pth", tmp_path / "best.pth"
    save_atomic(_checkpoint(0.0), last, keep=3)
    save_atomic(_checkpoint(0.0), best)
    replace, seen = os.replace, []

    def replace_then_load(src, dst) -> None:
        replace(src, dst)
        for path in (*versions(last), best):
            seen.append(load_checkpoint(path)["model"]["w"][0, 0].item())
            assert has_digest(path)

    monkeypatch.setattr(os, "replace", replace_then_load)
    for value in (1.0, 2.0, 3.0):
        save_atomic(_checkpoint(value), last, keep=3)
        save_atomic(_checkpoint(value), best)
    monkeypatch.undo()
    assert len(seen) > 50 and set(seen) == {0.0, 1.0, 2.0, 3.0}
    assert [load_checkpoint(p)["model"]["w"][0, 0].item() for p in versions(last)] == [3, 2, 1]


def test_every_digest_file_names_its_own_checkpoint_for_sha256sum(tmp_path):
    path = tmp_path / "last.pth"
    for value in range(3):
        save_atomic(_checkpoint(float(value)), path, keep=3)
    for kept in versions(path):
        digest = hashlib.sha256(kept.read_bytes()).hexdigest()
        assert (tmp_path / f"{kept.name}.sha256").read_text() == f"{digest}  {kept.name}\n"


def test_previous_versions_are_copied_where_hard_links_fail(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "last.pth"
    for value in range(3):
        save_atomic(_checkpoint(float(value)), path, keep=2)
    assert [load_checkpoint(p)["model"]["w"][0, 0].item() for p in versions(path)] == [2, 1]
    assert os.stat(path).st_ino != os.stat(tmp_path / "last.1.pth").st_ino
    assert not list(tmp_path.glob(".*.tmp"))


def _replacing_before_each_read(monkeypatch, path: Path, times: int) -> list[float]:
    """Make the next `times` reads of `path` find it replaced (a new value saved) between
    the read of its digest file and the read of its bytes; the values saved."""
    real_open, saved = open, []

    def open_after_a_save(file, *args, **kwargs):
        if Path(file) == path and len(saved) < times:
            saved.append(float(len(saved) + 10))
            save_atomic(_checkpoint(saved[-1]), path)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", open_after_a_save)
    return saved


def test_a_checkpoint_replaced_while_it_is_read_is_read_again_not_called_damaged(
    tmp_path, monkeypatch
):
    path = tmp_path / "best.pth"
    save_atomic(_checkpoint(1.0), path)
    saved = _replacing_before_each_read(monkeypatch, path, times=3)
    assert load_checkpoint(path)["model"]["w"][0, 0].item() == 12.0
    assert saved == [10.0, 11.0, 12.0]


def test_a_checkpoint_replaced_on_every_read_is_given_up_on_by_name(tmp_path, monkeypatch):
    path = tmp_path / "best.pth"
    save_atomic(_checkpoint(1.0), path)
    _replacing_before_each_read(monkeypatch, path, times=1000)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"{path} was replaced 20 times while being read; read it again when it is written "
        "less often"
    )


def test_no_digest_of_another_checkpoint_stays_beside_a_kept_one_written_before_digests(
    tmp_path,
):
    path = tmp_path / "last.pth"
    save_atomic(_checkpoint(1.0), path, keep=2)
    save_atomic(_checkpoint(2.0), path, keep=2)  # last.1.pth and its digest file exist
    (tmp_path / "last.pth.sha256").unlink()
    torch.save(_checkpoint(3.0), path)  # as an earlier version wrote it: no digest
    save_atomic(_checkpoint(4.0), path, keep=2)
    assert load_checkpoint(tmp_path / "last.1.pth")["model"]["w"][0, 0].item() == 3.0
    assert not has_digest(tmp_path / "last.1.pth")
    assert load_checkpoint(path)["model"]["w"][0, 0].item() == 4.0 and has_digest(path)


def test_a_checkpoint_whose_digest_went_away_while_it_was_read_is_read_again(tmp_path, monkeypatch):
    """A kept version shifted onto one written before digests loses its digest file."""
    path = tmp_path / "last.1.pth"
    save_atomic(_checkpoint(1.0), path)
    real_open = open

    def open_after_the_shift(file, *args, **kwargs):
        if Path(file) == path and has_digest(path):
            (tmp_path / "last.1.pth.sha256").unlink()
            torch.save(_checkpoint(2.0), tmp_path / "old.pth")
            os.replace(tmp_path / "old.pth", path)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", open_after_the_shift)
    assert load_checkpoint(path)["model"]["w"][0, 0].item() == 2.0


def test_kept_versions_are_found_when_the_newest_is_gone(tmp_path):
    """As after --resume set a damaged last.pth aside (renamed to last.pth.corrupt)."""
    path = tmp_path / "last.pth"
    for value in range(3):
        save_atomic(_checkpoint(float(value)), path, keep=3)
    path.rename(tmp_path / "last.pth.corrupt")
    assert list(versions(path)) == [tmp_path / "last.1.pth", tmp_path / "last.2.pth"]


def test_lowering_keep_drops_the_versions_beyond_it_digest_or_not(tmp_path):
    path = tmp_path / "last.pth"
    for value in range(3):
        save_atomic(_checkpoint(float(value)), path, keep=3)
    (tmp_path / "last.2.pth.sha256").unlink()  # a version written before digests
    save_atomic(_checkpoint(3.0), path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last.1.pth",
        "last.1.pth.sha256",
        "last.pth",
        "last.pth.sha256",
    ]
    save_atomic(_checkpoint(4.0), path, keep=1)  # no stale last.1.pth to fall back to
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "last.pth.sha256"]

"""Bad input fails clearly and early; interrupted or failing runs lose no checkpoint."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import training_run
from datasets.synthetic import make_synthetic_dataset
from utils.checkpoint import CheckpointError, load_checkpoint
from utils.config import ConfigError
from utils.errors import DataError, OutputError
from utils.image import read_rgb, write_rgb

from .helpers import REPO, load_entry, train_args

train, evaluate, predict = load_entry("train"), load_entry("test"), load_entry("predict")


def no_checkpoints(run_dir: Path) -> bool:
    return not list(run_dir.glob("*.pth")) if run_dir.exists() else True


def test_dataset_problems_reported_together_before_training(tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", n_train=6, n_test=2, size=(40, 48), seed=1)
    train_dir = root / "train"
    (train_dir / "GT" / "0000.png").unlink()  # hazy without GT
    (train_dir / "hazy" / "0001.png").unlink()  # GT without hazy
    (train_dir / "hazy" / "0002.png").write_text("not an image")
    (train_dir / "hazy" / "0003.png").write_bytes(b"")
    big = np.zeros((50, 50, 3), np.uint8)
    write_rgb(train_dir / "hazy" / "0004.png", big)  # GT is 40x48
    with pytest.raises(ValueError) as e:
        train.main(train_args(root, tmp_path / "runs"))
    msg = str(e.value)
    for name in ("0000.png", "0001.png", "0002.png", "0003.png", "0004.png"):
        assert name in msg
    assert "without a GT" in msg and "without a hazy" in msg
    assert no_checkpoints(tmp_path / "runs" / "run")


def test_corrupt_pixels_found_before_training(tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", n_train=4, n_test=2, size=(40, 48), seed=1)
    path = root / "train" / "GT" / "0002.png"
    path.write_bytes(path.read_bytes()[:120])  # header intact, pixel data cut off
    with pytest.raises(ValueError, match=r"0002\.png"):
        train.main(train_args(root, tmp_path / "runs"))
    assert no_checkpoints(tmp_path / "runs" / "run")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.train_split=trian", r"split folder not found: .*trian"),
        ("data.patch_size=4096", r"data\.patch_size=4096 is larger than every image"),
    ],
)
def test_wrong_split_or_patch_size_is_named(data_root, tmp_path, override, expected):
    with pytest.raises((ValueError, ConfigError), match=expected):
        train.main(train_args(data_root, tmp_path, override))
    assert no_checkpoints(tmp_path / "run")


def test_empty_split(tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", n_train=2, n_test=2, size=(40, 40), seed=0)
    for p in (root / "train" / "GT").iterdir():
        p.unlink()
    for p in (root / "train" / "hazy").iterdir():
        p.unlink()
    with pytest.raises(ValueError, match="no images in"):
        train.main(train_args(root, tmp_path / "runs"))


def _start_training(data_root: Path, out: Path, epochs: int, *extra: str) -> subprocess.Popen:
    """train.py in a process group of its own (with its loader workers, if any)."""
    args = train_args(data_root, out, f"train.epochs={epochs}", "train.eval_freq=1", *extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for_epochs(path: Path, epochs: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        if path.exists() and load_checkpoint(path)["epoch"] >= epochs:
            return
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"{path} did not reach epoch {epochs}")


def test_sigkill_mid_run_leaves_loadable_checkpoints_and_resume_continues(
    data_root, tmp_path, capsys
):
    run = tmp_path / "run"
    proc = _start_training(data_root, tmp_path, epochs=200)
    _wait_for_epochs(run / "last.pth", 2, proc)
    time.sleep(0.3)  # somewhere in a later epoch, possibly while saving
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()
    best = load_checkpoint(run / "best.pth")
    done = load_checkpoint(run / "last.pth")["epoch"]
    # best.pth is written before last.pth, so a kill between the two leaves best one epoch ahead
    assert done >= 2 and best["epoch"] <= done + 1
    train.main(
        [
            *train_args(data_root, tmp_path, "train.epochs=200"),
            "--resume",
            "--stop-after-epochs",
            "1",
        ]
    )
    assert f"after epoch {done}" in capsys.readouterr().out
    assert load_checkpoint(run / "last.pth")["epoch"] == done + 1
    assert not list(run.glob(".*.tmp"))


def test_a_stop_signal_writes_the_current_step_and_exits_with_its_code(data_root, tmp_path):
    """SIGTERM to the whole process group, loader workers included, as `kill -- -PGID` and
    SLURM's scancel send it (one worker process each signal under torchrun:
    tests/test_faults.py)."""
    signum = signal.SIGTERM
    run = tmp_path / "run"
    proc = _start_training(data_root, tmp_path, 200, "data.num_workers=2")
    _wait_for_epochs(run / "last.pth", 1, proc)
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=180)  # one more step, one save: seconds even under load
    assert proc.returncode == 128 + signum, err[-2000:]
    name = signal.Signals(signum).name
    (line,) = [line for line in err.splitlines() if line.startswith(f"{name}: stopped")]
    saved = load_checkpoint(run / "last.pth")
    assert f"(global step {saved['global_step']})" in line and "--resume auto" in line
    assert saved["epoch"] >= 1 and saved["global_step"] == 2 * saved["epoch"] + saved["epoch_step"]


def test_full_disk_while_saving_keeps_the_previous_checkpoint(data_root, tmp_path, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    def save_until_disk_fills(obj, f, *args, **kwargs):
        if ".pth." not in str(getattr(f, "name", "")):  # not a checkpoint (e.g. the CLIP cache)
            return real_save(obj, f, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] <= 2:  # epoch 1: best.pth and last.pth
            return real_save(obj, f, *args, **kwargs)
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("utils.checkpoint.torch.save", save_until_disk_fills)
    with pytest.raises(OutputError, match=r"could not write checkpoint .*No space left.*intact"):
        train.main(train_args(data_root, tmp_path))
    monkeypatch.undo()
    run = tmp_path / "run"
    assert load_checkpoint(run / "last.pth")["epoch"] == 1
    assert load_checkpoint(run / "best.pth")["epoch"] == 1
    assert not list(run.glob(".*.tmp"))


def test_nonfinite_loss_stops_with_the_step_and_a_good_checkpoint(data_root, tmp_path):
    with pytest.raises(training_run.NonFiniteLossError, match=r"epoch \d+, step \d+") as e:
        train.main(train_args(data_root, tmp_path, "train.lr=1e30", "train.epochs=3"))
    assert "last_good.pth" in str(e.value)
    good = load_checkpoint(tmp_path / "run" / "last_good.pth")
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_nonfinite_loss_can_skip_steps_instead(data_root, tmp_path, capsys):
    train.main(
        train_args(data_root, tmp_path, "train.lr=1e30", "train.nonfinite=skip", "train.epochs=2")
    )
    assert "step skipped" in capsys.readouterr().out
    last = load_checkpoint(tmp_path / "run" / "last.pth")
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_truncated_checkpoint_is_a_clear_error(trained, tmp_path):
    cut = tmp_path / "cut.pth"
    cut.write_bytes((trained / "last.pth").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"cut\.pth"):
        evaluate.main(["--ckpt", str(cut)])


def test_predict_on_hostile_inputs(trained, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "empty.png").write_bytes(b"")
    (inputs / "notes.txt").write_text("hello")
    write_rgb(inputs / "dot.png", np.full((1, 1, 3), 90, np.uint8))
    write_rgb(inputs / "ok.jpg", np.full((33, 47, 3), 120, np.uint8))
    cv2.imwrite(str(inputs / "huge.png"), np.zeros((8000, 8000, 3), np.uint8))
    out = tmp_path / "out"
    ckpt = str(trained / "last.pth")
    with pytest.warns(UserWarning, match="notes.txt"), pytest.raises(predict.PredictError) as e:
        predict.main(["--ckpt", ckpt, str(inputs), "--out", str(out)])
    msg = str(e.value)
    assert "empty.png" in msg and "empty" in msg
    # The 8000x8000 image either ran or was refused with a way out.
    assert (out / "huge.png").exists() or ("huge.png" in msg and "--max-side" in msg)
    assert read_rgb(out / "dot.png").shape == (1, 1, 3)
    assert read_rgb(out / "ok.png").shape == (33, 47, 3)

    small = tmp_path / "small"
    predict.main(
        ["--ckpt", ckpt, str(inputs / "huge.png"), "--out", str(small), "--max-side", "64"]
    )
    assert read_rgb(small / "huge.png").shape == (64, 64, 3)


def test_predict_output_folder_not_writable(trained, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    img = tmp_path / "x.png"
    write_rgb(img, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(OSError, match="cannot create output folder"):
        predict.main(["--ckpt", str(trained / "last.pth"), str(img), "--out", str(blocker / "out")])
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OutputError, match="not writable"):
            predict.main(["--ckpt", str(trained / "last.pth"), str(img), "--out", str(locked)])
        shutil.rmtree(locked, ignore_errors=True)


def test_command_line_errors_are_one_line_not_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "test.py", "--ckpt", str(tmp_path / "missing.pth")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: checkpoint not found: {tmp_path / 'missing.pth'}"


def test_a_file_that_is_not_a_checkpoint_is_one_line_of_our_own(tmp_path):
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    torch.save({"args": argparse.Namespace(lr=1), "state_dict": {}}, tmp_path / "pickled.pth")
    for name, expected in (("notes.pth", "not a readable"), ("pickled.pth", "argparse.Namespace")):
        with pytest.raises(CheckpointError) as e:
            evaluate.main(["--ckpt", str(tmp_path / name)])
        msg = str(e.value)
        assert name in msg and expected in msg
        assert "\n" not in msg and "weights_only" not in msg


def test_weights_of_another_model_are_a_short_message(trained, tmp_path):
    released = tmp_path / "released.pth"
    torch.save({"state_dict": load_checkpoint(trained / "best.pth")["model"]}, released)
    with pytest.raises(ValueError, match=r"cannot load weights.*and \d+ more") as e:
        evaluate.main(["--ckpt", str(released), "--model", "mixdehazenet-b"])
    assert len(str(e.value)) < 1000


def test_unknown_clip_arch_is_rejected_before_the_data_check(tmp_path):
    args = train_args(tmp_path / "no-data", tmp_path, "clip.arch=ViT-B-23")
    with pytest.raises(ConfigError, match=r"clip\.arch.*'ViT-B-23'.*ViT-B-32") as e:
        train.main(args)
    assert len(str(e.value)) < 200


def test_resume_without_a_checkpoint_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"--resume: no checkpoint at .*run/last\.pth"):
        train.main([*train_args(tmp_path / "no-data", tmp_path), "--resume"])


def test_missing_dataset_names_every_split_and_the_key(tmp_path):
    with pytest.raises(ValueError) as e:
        train.main(train_args(tmp_path / "no-data", tmp_path))
    msg = str(e.value)
    for missing in ("no-data/train", "no-data/test", "data.root", "data.synthetic"):
        assert missing in msg
    assert not (tmp_path / "no-data").exists()  # no synthetic data made up in its place


@pytest.mark.parametrize(
    ("entry", "argv"),
    [
        ("train", ["--stop-after-epochs", "0"]),
        ("predict", ["--ckpt", "x.pth", "--out", "o", "in.png", "--max-side", "-5"]),
        ("bench.bench_inference", ["--sizes", "256", "0"]),
        ("bench.bench_train", ["--shapes", "2x0"]),
        ("bench.bench_data", ["--pairs", "0"]),
    ],
)
def test_counts_and_sizes_below_one_are_refused(entry, argv, capsys):
    module = load_entry(entry) if "." not in entry else importlib.import_module(entry)
    with pytest.raises(SystemExit) as e:
        module.main(argv)
    assert e.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_no_progress_bars_when_output_is_not_a_terminal(trained, tmp_path, capsys):
    evaluate.main(["--ckpt", str(trained / "best.pth"), "--out", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert "it/s" not in out + err and "\r" not in out + err
    assert "PSNR" in out


def test_checkpoints_get_the_permissions_of_the_other_files(trained):
    mode = (trained / "config.yaml").stat().st_mode & 0o777
    for name in ("best.pth", "last.pth"):
        assert (trained / name).stat().st_mode & 0o777 == mode, name


def test_test_py_from_another_folder_names_the_relative_path_and_the_way_out(
    trained, tmp_path, monkeypatch
):
    ckpt = load_checkpoint(trained / "best.pth")
    ckpt["config"]["data"]["root"] = "data/synthetic"  # as the quickstart records it
    torch.save(ckpt, tmp_path / "best.pth")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        evaluate.main(["--ckpt", "best.pth"])
    msg = str(e.value)
    assert "data/synthetic/test" in msg and "data.root" in msg
    assert str(tmp_path) in msg and "--data-dir" in msg


def test_a_stop_under_slurm_requeues_the_job_after_the_checkpoint(
    data_root, tmp_path, monkeypatch, capsys
):
    calls = tmp_path / "scontrol-calls"
    bin_dir = tmp_path / "bin"  # SLURM's command, as a cluster node has it on PATH
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    real_step = train.training_step

    def usr1_before_step_2(setup, state, batch):
        if state.global_step == 1:
            assert not (tmp_path / "run" / "last.pth").exists()
            setup.stop.signum = signal.SIGUSR1
        return real_step(setup, state, batch)

    monkeypatch.setattr(train, "training_step", usr1_before_step_2)
    args = train_args(data_root, tmp_path, "train.requeue=true", "train.resume=auto")
    with pytest.raises(SystemExit) as e:
        train.main(args)
    assert e.value.code == 128 + signal.SIGUSR1
    assert calls.read_text() == "requeue 1234\n"
    assert "SLURM job 1234 requeued" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "run" / "last.pth")["global_step"] == 2


def test_keeping_no_checkpoint_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.keep_checkpoints=0"):
        train.main(train_args(tmp_path / "no-data", tmp_path, "train.keep_checkpoints=0"))

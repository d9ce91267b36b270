"""export.py: the ONNX graph that ONNX Runtime runs equals predict.py's output; the weights file."""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest
import torch

from models import build_model
from networks import model_from_checkpoint
from utils.clip_domains import embedding_width
from utils.errors import OutputError, OutputExistsError
from utils.image import read_rgb, uint8_to_tensor, write_rgb

from .helpers import load_entry

export, predict = load_entry("export"), load_entry("predict")
ort = pytest.importorskip("onnxruntime")


# A file of the user's named as export.py once named its temporary graph.
USERS_FILE = ".model.onnx.tmp"


def checked_paths(monkeypatch) -> list:
    """Where the graphs export.py checks lie, recorded as it checks them."""
    checked, check = [], export.check_onnx
    monkeypatch.setattr(export, "check_onnx", lambda p, d: checked.append(p) or check(p, d))
    return checked


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The tiny trained run's graph (a CLIP-guided network with the tiny random CLIP), and the
    temporary file it was checked in; beside it, USERS_FILE."""
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    (out.parent / USERS_FILE).write_text("mine")
    with pytest.MonkeyPatch.context() as m:
        checked = checked_paths(m)
        diffs = export.main(["--ckpt", str(trained / "last.pth"), "--onnx", str(out)])
    assert [size for size, _ in diffs] == list(export.CHECK_SIZES)
    assert all(d <= export.TOLERANCE for _, d in diffs)
    return out, checked[0]


@pytest.fixture(scope="module")
def onnx_file(exported):
    return exported[0]


def test_the_graph_is_checked_under_a_unique_name_beside_it(exported):
    out, checked = exported
    assert checked.parent == out.parent and checked.name.startswith(".model.onnx.")
    assert checked.name != USERS_FILE and not checked.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == [USERS_FILE, "model.onnx"]
    assert (out.parent / USERS_FILE).read_text() == "mine"


def test_onnx_runtime_dehazes_as_predict_does(onnx_file, trained, tmp_path):
    """Any size runs (dynamic H and W), and the PNG is predict.py's, within one 8-bit level."""
    photo = tmp_path / "in" / "photo.png"
    write_rgb(photo, torch.rand(3, 51, 77, generator=torch.Generator().manual_seed(5)))
    # In fp32, as export.py checks: the precision predict.py measures fastest differs by machine.
    fp32 = ["speed.predict_precision=none"]
    predict.main(["--ckpt", str(trained / "last.pth"), str(photo), "--out", str(tmp_path), *fp32])
    expected = read_rgb(tmp_path / "photo.png")

    img = read_rgb(photo)
    dehazer = predict.Dehazer.load(trained / "last.pth", precision="none")
    probs = dehazer.domain_probs(img)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    hazy = uint8_to_tensor(img)[None].numpy()
    assert [i.name for i in session.get_inputs()] == ["hazy", "domain"]
    (dehazed,) = session.run(None, {"hazy": hazy, "domain": probs.numpy()})
    write_rgb(tmp_path / "onnx.png", torch.from_numpy(dehazed))
    # The two compute in another order (within TOLERANCE): a value near a rounding boundary may
    # round to the next 8-bit level.
    assert np.abs(read_rgb(tmp_path / "onnx.png").astype(int) - expected).max() <= 1

    other = 1 - probs.argmax().item()
    forced = torch.nn.functional.one_hot(torch.tensor([other]), 2).float()
    (other_out,) = session.run(None, {"hazy": hazy, "domain": forced.numpy()})
    assert np.abs(other_out[0] - dehazer(img, forced).numpy()).max() <= export.TOLERANCE


def test_a_graph_that_disagrees_replaces_nothing_and_leaves_nothing(exported, trained, monkeypatch):
    """The second export to the same --onnx: its own temporary name, the first graph kept."""
    exportable = export.exportable

    def perturbed(dehazer):
        model = exportable(dehazer)
        with torch.no_grad():
            model.net.patch_unembed.proj[0].bias.add_(1e-2)
        return model

    monkeypatch.setattr(export, "exportable", perturbed)
    out, first = exported
    before, checked = out.read_bytes(), checked_paths(monkeypatch)
    args = ["--ckpt", str(trained / "last.pth"), "--onnx", str(out), "--overwrite"]
    with pytest.raises(export.ExportCheckError, match="differs from PyTorch"):
        export.main(args)
    assert checked[0].parent == out.parent and checked[0].name not in (first.name, USERS_FILE)
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == [USERS_FILE, "model.onnx"]
    assert (out.parent / USERS_FILE).read_text() == "mine"


def test_state_dict_holds_every_key_of_the_authors_network(trained, tmp_path):
    out = tmp_path / "weights.pth"
    export.main(["--ckpt", str(trained / "last.pth"), "--state-dict", str(out)])
    digest = (tmp_path / "weights.pth.sha256").read_text().split()[0]
    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()
    saved = torch.load(out, weights_only=True)
    assert list(saved) == ["state_dict"]
    # The authors' MixCLDehazeNet: the text branch too (unused; zeros), loaded strictly.
    authors = build_model(
        "mixcl-t", depths=(1, 1, 1, 1, 1), text_dim=embedding_width("tiny-clip"), text_branch=True
    )
    authors.load_state_dict(saved["state_dict"])
    assert not saved["state_dict"]["text_emb.q2.weight"].any()
    net, _, _ = model_from_checkpoint(trained / "last.pth")
    net.load_state_dict(saved["state_dict"], strict=False)
    assert all(torch.equal(v, saved["state_dict"][k]) for k, v in net.state_dict().items())


@pytest.fixture
def run_copy(trained, tmp_path):
    """A copy of the tiny trained run's last.pth and its digest, in tmp_path/run."""
    (tmp_path / "run").mkdir()
    for name in ("last.pth", "last.pth.sha256"):
        shutil.copy2(trained / name, tmp_path / "run" / name)
    return tmp_path / "run" / "last.pth"


@pytest.mark.parametrize("flag", ["--state-dict", "--onnx"])
@pytest.mark.parametrize("named", ["itself", "its digest", "a link", "a hard link"])
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_the_checkpoint_read_is_never_written_over(run_copy, flag, named, overwrite):
    ckpt, digest = run_copy, run_copy.with_name("last.pth.sha256")
    before = ckpt.read_bytes(), digest.read_bytes()
    target = {"itself": ckpt, "its digest": digest}.get(named, ckpt.with_name("other.pth"))
    if named == "a link":
        target.symlink_to(ckpt)
    elif named == "a hard link":
        os.link(ckpt, target)
    with pytest.raises(OutputError, match=r"is the checkpoint read .*even with --overwrite"):
        export.main(["--ckpt", str(ckpt), flag, str(target), *overwrite])
    assert (ckpt.read_bytes(), digest.read_bytes()) == before


@pytest.mark.parametrize("existing", ["a file", "its digest", "a dangling link"])
def test_an_existing_target_is_refused_without_overwrite(run_copy, tmp_path, existing):
    notes = tmp_path / "notes.txt"
    if existing == "a file":
        notes.write_text("my notes")
    elif existing == "its digest":
        (tmp_path / "notes.txt.sha256").write_text("my digest")
    else:
        notes.symlink_to(tmp_path / "elsewhere.txt")
    before = sorted((p.name, p.is_symlink()) for p in tmp_path.iterdir())
    with pytest.raises(OutputExistsError, match=r"notes\.txt.* already exists: pass --overwrite"):
        export.main(["--ckpt", str(run_copy), "--state-dict", str(notes)])
    assert sorted((p.name, p.is_symlink()) for p in tmp_path.iterdir()) == before
    if existing == "a file":
        assert notes.read_text() == "my notes"


@pytest.mark.parametrize("target", ["a file", "a dangling link"])
def test_overwrite_replaces_the_target_only_never_through_a_link(run_copy, tmp_path, target):
    out, outside, notes = tmp_path / "weights.pth", tmp_path / "elsewhere" / "x.pth", tmp_path / "n"
    if target == "a file":
        out.write_text("old")
    else:
        out.symlink_to(outside)
    notes.write_text("my notes")
    (tmp_path / "weights.pth.sha256").symlink_to(notes)
    (tmp_path / "weights.1.pth").write_text("mine")  # named like a kept checkpoint version
    export.main(["--ckpt", str(run_copy), "--state-dict", str(out), "--overwrite"])
    assert out.is_file() and not out.is_symlink() and not outside.parent.exists()
    digest = (tmp_path / "weights.pth.sha256").read_text().split()[0]
    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()
    assert notes.read_text() == "my notes"
    assert (tmp_path / "weights.1.pth").read_text() == "mine"


@pytest.mark.parametrize("flag", ["--state-dict", "--onnx"])
def test_a_folder_as_target_is_named(run_copy, tmp_path, flag):
    (tmp_path / "exports").mkdir()
    with pytest.raises(OutputError, match=rf"{flag}: \S*exports is a folder; name the file"):
        export.main(["--ckpt", str(run_copy), flag, str(tmp_path / "exports")])
    assert list((tmp_path / "exports").iterdir()) == []


def test_one_file_named_twice_is_refused(run_copy, tmp_path):
    out = str(tmp_path / "model.out")
    with pytest.raises(OutputError, match="name the same file"):
        export.main(["--ckpt", str(run_copy), "--onnx", out, "--state-dict", out])

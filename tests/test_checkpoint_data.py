"""A checkpoint is data: the paths its saved config names are not followed to code, and the
folders it names are not written to, unless the command line names them too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import networks
from utils.checkpoint import load_checkpoint, save_atomic
from utils.errors import WeightsError
from utils.image import write_rgb

from .helpers import load_entry

evaluate, predict, export = load_entry("test"), load_entry("predict"), load_entry("export")


def naming(trained, folder, **clip_and_speed) -> str:
    """A copy of the tiny trained run's last.pth in `folder` whose saved config names the given
    `clip_<key>` and `speed_<key>` values."""
    ckpt = load_checkpoint(trained / "last.pth")
    for key, value in clip_and_speed.items():
        section, name = key.split("_", 1)
        ckpt["config"][section][name] = value
    save_atomic(ckpt, folder / "last.pth")
    return str(folder / "last.pth")


@pytest.fixture(scope="module")
def torchscript_clip(tiny_clip, tmp_path_factory):
    """The tiny CLIP as a TorchScript file, the format of OpenAI's original weights."""
    path = tmp_path_factory.mktemp("jit") / "tiny-clip.pt"
    torch.jit.save(torch.jit.script(tiny_clip[0]), str(path))
    return path


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_weights_named_only_by_a_checkpoint_are_refused(
    trained, tmp_path, torchscript_clip, tiny_clip, monkeypatch
):
    ckpt = naming(trained, tmp_path, clip_pretrained=str(torchscript_clip))
    jit_load, loaded = torch.jit.load, []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loaded.append(a) or jit_load(*a, **k))
    refused = rf"clip\.pretrained={torchscript_clip}, a TorchScript file.*on the command line"
    photo = tmp_path / "in" / "photo.png"
    write_rgb(photo, np.full((20, 30, 3), 90, np.uint8))
    outputs = [tmp_path / "out", tmp_path / "results", tmp_path / "model.onnx"]
    for door in (
        lambda: predict.main(["--ckpt", ckpt, str(photo), "--out", str(outputs[0])]),
        lambda: evaluate.main(["--ckpt", ckpt, "--out", str(outputs[1])]),
        lambda: export.main(["--ckpt", ckpt, "--onnx", str(outputs[2])]),
    ):
        with pytest.raises(WeightsError, match=refused):
            door()
    assert loaded == []
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["in/photo.png", "last.pth", "last.pth.sha256"]
    given = predict.Dehazer.load(ckpt, overrides=[f"clip.pretrained={torchscript_clip}"])
    assert len(loaded) == 1
    clip, reference = given.clip[0].state_dict(), tiny_clip[0].state_dict()
    assert all(torch.equal(clip[k], reference[k]) for k in reference)


def test_plain_weights_named_by_a_checkpoint_load_weights_only(
    trained, tmp_path, tiny_clip_weights, tiny_clip
):
    ckpt = naming(trained, tmp_path, clip_pretrained=str(tiny_clip_weights))
    clip, reference = predict.Dehazer.load(ckpt).clip[0].state_dict(), tiny_clip[0].state_dict()
    assert all(torch.equal(clip[k], reference[k]) for k in reference)


def test_cache_folders_named_only_by_a_checkpoint_are_not_written(trained, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    folders = {"clip.cache_dir": elsewhere / "clip", "speed.cache_dir": elsewhere / "speed"}
    ckpt = naming(
        trained,
        tmp_path,
        clip_cache_dir=str(folders["clip.cache_dir"]),
        speed_cache_dir=str(folders["speed.cache_dir"]),
    )
    evaluate.main(["--ckpt", ckpt, "--out", str(tmp_path / "a")])
    assert not elsewhere.exists()
    out = capsys.readouterr().out
    for key, folder in folders.items():
        note = f"names {key}={folder}: a checkpoint's folders are not written to; using"
        assert f"{note} {networks.CACHE_FOLDERS[key]} (pass {key}={folder} to use it)" in out
    given = [f"{key}={folder}" for key, folder in folders.items()]
    evaluate.main(["--ckpt", ckpt, "--out", str(tmp_path / "b"), *given])
    assert len(list(folders["clip.cache_dir"].glob("*.pt"))) == 1
    assert len(list(folders["speed.cache_dir"].glob("*.json"))) == 1

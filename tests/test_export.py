"""export.py: the ONNX graph that ONNX Runtime runs equals predict.py's output; the weights file."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from models import build_model
from networks import model_from_checkpoint
from utils.clip_domains import embedding_width
from utils.image import read_rgb, uint8_to_tensor, write_rgb

from .helpers import load_entry

export, predict = load_entry("export"), load_entry("predict")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def onnx_file(trained, tmp_path_factory):
    """The tiny trained run's graph (a CLIP-guided network with the tiny random CLIP)."""
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    diffs = export.main(["--ckpt", str(trained / "last.pth"), "--onnx", str(out)])
    assert [size for size, _ in diffs] == list(export.CHECK_SIZES)
    assert all(d <= export.TOLERANCE for _, d in diffs)
    return out


def test_onnx_runtime_dehazes_as_predict_does(onnx_file, trained, tmp_path):
    """Any size runs (dynamic H and W), and the PNG equals predict.py's for both domains."""
    photo = tmp_path / "in" / "photo.png"
    write_rgb(photo, torch.rand(3, 51, 77, generator=torch.Generator().manual_seed(5)))
    predict.main(["--ckpt", str(trained / "last.pth"), str(photo), "--out", str(tmp_path)])
    expected = read_rgb(tmp_path / "photo.png")

    img = read_rgb(photo)
    dehazer = predict.Dehazer.load(trained / "last.pth")
    probs = dehazer.domain_probs(img)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    hazy = uint8_to_tensor(img)[None].numpy()
    assert [i.name for i in session.get_inputs()] == ["hazy", "domain"]
    (dehazed,) = session.run(None, {"hazy": hazy, "domain": probs.numpy()})
    write_rgb(tmp_path / "onnx.png", torch.from_numpy(dehazed))
    assert np.array_equal(read_rgb(tmp_path / "onnx.png"), expected)

    other = 1 - probs.argmax().item()
    forced = torch.nn.functional.one_hot(torch.tensor([other]), 2).float()
    (other_out,) = session.run(None, {"hazy": hazy, "domain": forced.numpy()})
    assert np.abs(other_out[0] - dehazer(img, forced).numpy()).max() <= export.TOLERANCE


def test_a_graph_that_disagrees_is_refused_and_not_kept(trained, tmp_path, monkeypatch):
    exportable = export.exportable

    def perturbed(dehazer):
        model = exportable(dehazer)
        with torch.no_grad():
            model.net.patch_unembed.proj[0].bias.add_(1e-2)
        return model

    monkeypatch.setattr(export, "exportable", perturbed)
    out = tmp_path / "model.onnx"
    with pytest.raises(export.ExportCheckError, match="differs from PyTorch"):
        export.main(["--ckpt", str(trained / "last.pth"), "--onnx", str(out)])
    assert list(tmp_path.iterdir()) == []


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

"""Which weights a key names: a copy elsewhere is the same weights, other weights are not, and
test.py's results folder says so."""

from __future__ import annotations

import argparse
import shutil

from utils import weights
from utils.config import WEIGHTS_KEYS
from utils.weights import RANDOM, TORCHVISION_RESNET152, clip_weights, resnet_weights, sha256

from .helpers import load_entry

evaluate = load_entry("test")


def files(tmp_path):
    """A weights file, a copy of it under another name, and other weights."""
    a = tmp_path / "a.pt"
    a.write_bytes(b"some weights")
    (tmp_path / "elsewhere").mkdir()
    copy = shutil.copy(a, tmp_path / "elsewhere" / "b.pt")
    other = tmp_path / "c.pt"
    other.write_bytes(b"other weights")
    return a, copy, other


def test_every_key_of_the_weights_role_is_identified():
    assert set(weights.IDENTIFY) == set(WEIGHTS_KEYS) == {"clip.pretrained", "loss.resnet_weights"}


def test_a_copy_is_the_same_weights_and_a_download_digest_is_its_tag(tmp_path, monkeypatch):
    a, copy, other = files(tmp_path)
    digest = sha256(a)
    assert clip_weights(str(a)) == clip_weights(str(copy)) == f"sha256:{digest[:16]}"
    assert clip_weights(str(other)) != clip_weights(str(a))
    assert clip_weights(None) == clip_weights("") == RANDOM
    assert clip_weights("openai") == "openai"
    assert clip_weights(str(tmp_path / "gone.pt")) == f"no file at {tmp_path / 'gone.pt'}"
    monkeypatch.setattr(weights, "_openai_clip_files", lambda: {digest: "openai"})
    assert clip_weights(str(copy)) == "openai"
    assert resnet_weights(None) == TORCHVISION_RESNET152
    assert resnet_weights(str(other)).startswith("sha256:")
    monkeypatch.setattr(weights, "_torchvision_resnet152", lambda: {digest[:8]: "tv"})
    assert resnet_weights(str(a)) == "tv"


def test_the_known_downloads_are_read_from_open_clip_and_torchvision():
    """OpenAI's ViT-B/32 file (its digest is in its address) and torchvision's ResNet-152
    (resnet152-394f9c45.pth)."""
    vit_b_32 = "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
    assert weights._openai_clip_files()[vit_b_32] == "openai"
    assert weights._torchvision_resnet152() == {"394f9c45": TORCHVISION_RESNET152}


def test_test_py_names_other_weights_in_its_results_folder_but_not_a_moved_copy(tmp_path):
    a, copy, other = files(tmp_path)
    args = argparse.Namespace(out=None, ckpt=str(tmp_path / "run" / "best.pth"))
    root = tmp_path / "data" / "RESIDE-6K"

    def folder(changes: dict) -> str:
        return evaluate.results_dir(args, root, "test", changes).name

    moved = {"clip.pretrained": (str(a), str(copy)), "data.root": ("/old", str(root))}
    assert folder(moved) == "RESIDE-6K-test"
    assert folder({"clip.pretrained": ("openai", None)}) == "RESIDE-6K-test_clip.pretrained=random"
    other_resnet = {"loss.resnet_weights": (None, str(other)), "precision.eval": ("none", "bf16")}
    assert folder(other_resnet) == (
        f"RESIDE-6K-test_loss.resnet_weights=sha256-{sha256(other)[:16]}_precision.eval=bf16"
    )

"""demo.py's work behind the page (the browser tests drive the page itself), and its extras."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from utils.errors import MissingPackageError, UserError
from utils.extras import require
from utils.image import read_rgb, write_rgb

from .helpers import load_entry

demo = load_entry("demo")


@pytest.fixture(scope="module")
def page(trained, tmp_path_factory):
    dehazer = sys.modules["predict"].Dehazer.load(trained / "last.pth")
    return demo.Page(dehazer, None, tmp_path_factory.mktemp("outputs"))


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    write_rgb(path, torch.rand(3, 37, 50, generator=torch.Generator().manual_seed(3)))
    return path


def test_forcing_a_domain_guides_the_network_with_it(page, photo):
    (hazy, dehazed), probs, note, png = page.run(str(photo), demo.CLIP_CHOICE)
    assert np.array_equal(hazy, read_rgb(photo))
    assert np.array_equal(dehazed, read_rgb(png))
    assert sorted(probs) == ["indoor", "outdoor"] and sum(probs.values()) == pytest.approx(1)
    guess = max(probs, key=probs.get)
    assert "50x37 px dehazed in" in note and note.endswith(f"guided as {guess}")

    other = "indoor" if guess == "outdoor" else "outdoor"
    (_, forced), forced_probs, note, _ = page.run(str(photo), other)
    assert forced_probs == probs  # CLIP's guess is still shown
    assert note.endswith(f"guided as {other}")
    one_hot = torch.tensor([[float(other == d) for d in page.domains]])
    expected = (page.dehazer(read_rgb(photo), one_hot).clamp(0, 1) * 255).round().byte()
    assert np.array_equal(forced, expected.permute(1, 2, 0).numpy())
    assert not np.array_equal(forced, dehazed)


def test_uploads_it_cannot_dehaze_are_named_with_the_way_out(page, photo, tmp_path, monkeypatch):
    with pytest.raises(demo.DemoError, match="upload a photo"):
        page.run(None, demo.CLIP_CHOICE)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    with pytest.raises(demo.DemoError, match=r"notes\.txt is not an image"):
        page.run(str(notes), demo.CLIP_CHOICE)
    monkeypatch.setattr(sys.modules["predict"], "available_memory", lambda device: 10_000)
    with pytest.raises(demo.DemoError, match=r"photo\.png is too large: .*--max-side"):
        page.run(str(photo), demo.CLIP_CHOICE)


def test_examples_are_one_synthetic_scene_per_domain(tmp_path):
    examples = demo.write_examples(tmp_path)
    assert [p.name for p in examples] == ["synthetic-indoor.png", "synthetic-outdoor.png"]
    assert all(read_rgb(p).shape == (*demo.EXAMPLE_SIZE, 3) for p in examples)


def test_a_missing_extra_is_one_line_saying_what_to_install():
    with pytest.raises(MissingPackageError, match=r"pip install -r requirements-deploy\.txt"):
        require("no_such_module_here", "demo.py")


def test_a_missing_checkpoint_is_named(tmp_path):
    pytest.importorskip("gradio")
    with pytest.raises(UserError, match=r"missing\.pth"):
        demo.main(["--ckpt", str(tmp_path / "missing.pth")])

"""What the entry points share: overrides given one way everywhere, notes shown to the user,
and the real problem of a command reported first."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from models import build_model
from utils.cli import OVERRIDES_HELP, setup_logging
from utils.errors import ConfigError
from utils.image import write_rgb
from utils.weights import sha256

from . import helpers
from .helpers import REPO, TINY, load_entry, train_args

train, evaluate = load_entry("train"), load_entry("test")
# Each entry point that takes overrides, and the other arguments it needs.
TAKE_OVERRIDES = {
    "train": [],
    "test": ["--ckpt", "best.pth"],
    "predict": ["--ckpt", "best.pth", "photo.jpg", "--out", "dehazed"],
    "demo": ["--ckpt", "best.pth"],
    "export": ["--ckpt", "best.pth", "--onnx", "out.onnx"],
}


@pytest.mark.parametrize("name", list(TAKE_OVERRIDES))
def test_every_entry_point_takes_overrides_anywhere_and_says_so(name, capsys):
    entry = load_entry(name)
    args = entry.parse_args(["data.root=/d", *TAKE_OVERRIDES[name], "speed.strips=false"])
    assert args.overrides == ["data.root=/d", "speed.strips=false"]
    with pytest.raises(SystemExit):
        entry.parse_args(["--help"])
    assert OVERRIDES_HELP.splitlines()[0] in capsys.readouterr().out
    if name in ("test", "demo", "export"):  # no positional argument besides the overrides
        with pytest.raises(SystemExit):
            entry.parse_args([*TAKE_OVERRIDES[name], "best.pth"])
        assert "not a section.key=value override: best.pth" in capsys.readouterr().err


def test_train_and_predict_tell_their_inputs_from_the_overrides():
    args = train.parse_args(["train.lr=1e-3", "configs/quickstart.yaml", "--resume", "auto"])
    assert (args.config, args.overrides, args.resume) == (
        "configs/quickstart.yaml",
        ["train.lr=1e-3"],
        "auto",
    )
    assert train.parse_args(["train.lr=1e-3"]).config == train.DEFAULT_CONFIG
    predict = load_entry("predict")
    argv = ["a.jpg", "clip.mode=soft", "--ckpt", "c.pth", "photos/", "--out", "o"]
    args = predict.parse_args(argv)
    assert (args.inputs, args.overrides) == (["a.jpg", "photos/"], ["clip.mode=soft"])


def test_a_bad_config_is_reported_before_the_run_folder(data_root, tmp_path):
    """Not "the folder already holds checkpoints" first, and the real problem on a second try."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pth").write_bytes(b"an earlier run's")
    args = train_args(data_root, tmp_path)
    with pytest.raises(ConfigError, match=r"^command line: model\.depths: one number of blocks"):
        train.main([*args, "model.depths=[1,1,1]"])
    with pytest.raises(ConfigError, match=r"^loss: every term's weight is 0"):
        train.main([*args, "loss.l1_weight=0"])


def test_a_warm_start_shows_its_note(data_root, tmp_path, capsys):
    plain = tmp_path / "plain.pth"
    torch.save(build_model("mixdehazenet-t", depths=TINY).state_dict(), plain)
    args = train_args(
        data_root, tmp_path, f"model.init_from={plain}", "train.epochs=1", "speed.autotune=false"
    )
    train.main(args)
    assert "warm start from a model without text fusion: text_emb." in capsys.readouterr().err


def test_released_weights_show_the_dropped_branch_and_other_clip_weights_name_the_results(
    data_root, tmp_path, tiny_clip_weights, monkeypatch, capsys
):
    """The authors' file holds the text branch their network never uses."""
    net = build_model("mixcl-t", depths=TINY, text_dim=32, text_branch=True)
    released = tmp_path / "MixCLDehazeNet-T.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, released)
    monkeypatch.chdir(tmp_path)
    evaluate.main(
        [
            *("--ckpt", str(released), "--model", "mixcl-t"),
            *("--config", str(REPO / "configs" / "quickstart.yaml")),
            *("model.depths=[1,1,1,1,1]", f"data.root={data_root}"),
            *(f"clip.cache_dir={tmp_path / 'cache'}", f"speed.cache_dir={helpers.SPEED_CACHE}"),
            f"clip.pretrained={tiny_clip_weights}",  # the config's: null, a random CLIP
        ]
    )
    err = capsys.readouterr().err
    assert "dropping the unused text-branch weights of the file: text_emb.k1.bias" in err
    results = tmp_path / "results" / f"{tmp_path.name}_MixCLDehazeNet-T"
    named = f"synthetic-test_clip.pretrained=sha256-{sha256(tiny_clip_weights)[:16]}"
    assert [p.name for p in results.iterdir()] == [f"{named}_model.depths=-1-1-1-1-1-"]


def test_quiet_shows_warnings_but_not_notes(capsys):
    note = logging.getLogger("models.loading")
    setup_logging(quiet=True)
    note.info("a note")
    note.warning("a warning")
    setup_logging()
    note.info("another note")
    logging.getLogger("open_clip").info("a library's note")
    assert capsys.readouterr().err == "a warning\nanother note\n"


def _run_script(code: str, *args: str) -> list[str]:
    """What a fresh Python process running `code` (with `args`) prints, as lines."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


# Runs an entry point as a script with the given arguments, then prints which heavy modules it
# imported on the way.
AS_SCRIPT = (
    "import runpy, sys\n"
    "script, sys.argv = sys.argv[1], sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_path(script, run_name='__main__')\n"
    "except SystemExit:\n"
    "    pass\n"
    "print(*sorted(m for m in ('torch', 'open_clip') if m in sys.modules))\n"
)


@pytest.mark.parametrize("name", ["train", "test", "predict", "compare", "demo", "export"])
def test_help_and_usage_errors_answer_before_torch_is_imported(name):
    assert _run_script(AS_SCRIPT, f"{name}.py", "--help")[-1] == ""
    assert _run_script(AS_SCRIPT, f"{name}.py", "--no-such-flag") == [""]


def test_a_network_without_clip_guidance_predicts_without_importing_open_clip(tmp_path):
    weights, photo = tmp_path / "mixdehazenet-t.pth", tmp_path / "photo.png"
    torch.save({"state_dict": build_model("mixdehazenet-t", depths=TINY).state_dict()}, weights)
    write_rgb(photo, np.full((40, 48, 3), 120, np.uint8))
    args = ["--ckpt", str(weights), "--model", "mixdehazenet-t", str(photo)]
    args += ["--out", str(tmp_path / "out"), "model.depths=[1,1,1,1,1]", "speed.autotune=false"]
    assert _run_script(AS_SCRIPT, "predict.py", *args)[-1] == "torch"
    assert (tmp_path / "out" / "photo.png").is_file()

"""train.py, test.py and predict.py end to end, in-process, on synthetic data with the tiny CLIP."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from models import MixDehazeNet, build_model
from utils.checkpoint import CheckpointError, load_checkpoint
from utils.cli import run
from utils.config import ConfigError, load_config
from utils.errors import WeightsError
from utils.image import read_rgb, write_rgb

from .helpers import REPO, bomb_png, load_entry, train_args

train, evaluate, predict = load_entry("train"), load_entry("test"), load_entry("predict")


def test_train_writes_checkpoints_config_and_events(trained):
    for name in ("best.pth", "last.pth"):
        ckpt = load_checkpoint(trained / name)
        assert ckpt["model_name"] == "mixcl-t"
        assert ckpt["config"]["model"]["depths"] == [1, 1, 1, 1, 1]
    assert load_checkpoint(trained / "last.pth")["epoch"] == 2
    assert "exp_name: run" in (trained / "config.yaml").read_text()
    assert "quickstart.yaml exp_name=run" in (trained / "command.txt").read_text()
    events = EventAccumulator(str(trained / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "val/psnr", "val/ssim"} <= set(tags["scalars"])
    assert len(events.Scalars("val/psnr")) == 2
    assert len(events.Scalars("train/loss")) == 4  # 8 images / batch 4, 2 epochs
    # Each loss term (the quickstart's L1 alone, weight 1): its value at every step.
    assert "train/loss_cr" not in tags["scalars"]
    l1, total = events.Scalars("train/loss_l1"), events.Scalars("train/loss")
    assert [e.value for e in l1] == [e.value for e in total]
    assert tags["images"], "no hazy|output|GT triplets logged"


def test_resume_matches_uninterrupted_run(data_root, tmp_path, trained):
    args = train_args(data_root, tmp_path)
    train.main([*args, "--stop-after-epochs", "1"])
    halfway = load_checkpoint(tmp_path / "run" / "last.pth")
    assert halfway["epoch"] == 1
    train.main([*args, "--resume"])
    resumed = load_checkpoint(tmp_path / "run" / "last.pth")
    straight = load_checkpoint(trained / "last.pth")
    assert resumed["epoch"] == 2
    if not torch.cuda.is_available():
        for key, value in straight["model"].items():
            assert torch.equal(value, resumed["model"][key]), key
        return
    # CUDA's backward kernels with atomic adds (reflection padding, pooling) do not repeat bit
    # for bit: the runs must differ by far less than the second epoch moved the weights.
    floats = [k for k, v in straight["model"].items() if v.is_floating_point()]

    def distance(a: dict, b: dict) -> float:
        return torch.stack([(a[k].double() - b[k].double()).norm() for k in floats]).norm().item()

    moved = distance(straight["model"], halfway["model"])
    assert distance(straight["model"], resumed["model"]) <= 0.01 * moved


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA's backward is not bit-exact")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_run_stopped_mid_epoch_resumes_exactly(
    data_root, tmp_path, trained, monkeypatch, num_workers
):
    args = train_args(data_root, tmp_path, f"data.num_workers={num_workers}")
    straight = trained / "last.pth"  # 2 epochs of 2 steps, augmented in the main process
    if num_workers:
        train.main(train_args(data_root, tmp_path, *args[-1:], exp="straight"))
        straight = tmp_path / "straight" / "last.pth"
    real_step = train.training_step

    def signal_before_step_3(setup, state, batch):
        if state.global_step == 2:
            setup.stop.signum = signal.SIGTERM  # as the handler records a SIGTERM
        return real_step(setup, state, batch)

    monkeypatch.setattr(train, "training_step", signal_before_step_3)
    with pytest.raises(SystemExit) as e:
        train.main(args)
    assert e.value.code == 128 + signal.SIGTERM
    stopped = load_checkpoint(tmp_path / "run" / "last.pth")
    assert (stopped["epoch"], stopped["epoch_step"], stopped["global_step"]) == (1, 1, 3)
    monkeypatch.undo()
    train.main([*args, "--resume", "auto"])
    resumed = load_checkpoint(tmp_path / "run" / "last.pth")
    assert resumed["global_step"] == 4
    assert _same_weights(resumed["model"], load_checkpoint(straight)["model"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA's backward is not bit-exact")
def test_resume_auto_starts_continues_and_passes_over_a_corrupt_checkpoint(
    data_root, tmp_path, trained, capsys
):
    args = [*train_args(data_root, tmp_path), "--resume", "auto"]
    train.main([*args, "--stop-after-epochs", "1"])  # nothing to resume: a new run
    train.main([*args, "--stop-after-epochs", "1"])  # the same command continues it
    run = tmp_path / "run"
    assert load_checkpoint(run / "last.pth")["epoch"] == 2
    assert load_checkpoint(run / "last.1.pth")["epoch"] == 1  # train.keep_checkpoints=2
    data = bytearray((run / "last.pth").read_bytes())
    data[len(data) // 2] ^= 0x01
    (run / "last.pth").write_bytes(bytes(data))
    capsys.readouterr()
    train.main(args)
    out, err = capsys.readouterr()
    assert "skipping last.pth" in err and "does not match its digest" in err
    assert f"resuming {run / 'last.1.pth'} after epoch 1" in out
    final = load_checkpoint(run / "last.pth")
    assert final["epoch"] == 2
    assert _same_weights(final["model"], load_checkpoint(trained / "last.pth")["model"])
    assert (run / "last.pth.corrupt").exists()  # set aside, not kept as the previous one
    assert load_checkpoint(run / "last.1.pth")["epoch"] == 1


def test_new_run_refuses_to_overwrite_and_resume_checks_model(data_root, trained):
    args = train_args(data_root, trained.parent)
    with pytest.raises(FileExistsError, match="--resume"):
        train.main(args)
    with pytest.raises(ConfigError, match=r"model\.name='mixcl-t'.*model\.name='mixcl-s'"):
        train.main([*args, "model.name=mixcl-s", "--resume"])


def test_config_typo_names_the_key(data_root, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.lrr"):
        train.main(train_args(data_root, tmp_path, "train.lrr=1e-3"))
    with pytest.raises(SystemExit) as e:  # what the command line shows: one line
        run(lambda: train.main(train_args(data_root, tmp_path, "train.lrr=1e-3")))
    assert e.value.code.startswith("error: ") and "unknown config key train.lrr" in e.value.code
    assert "\n" not in e.value.code


def test_a_bug_in_the_network_keeps_its_traceback(data_root, tmp_path, monkeypatch):
    def broken_forward(self, hazy, text_feature=None):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x24 and 48x24)")

    monkeypatch.setattr(MixDehazeNet, "forward", broken_forward)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as e:
        run(lambda: train.main(train_args(data_root, tmp_path)))
    assert any(entry.name == "broken_forward" for entry in e.traceback)


def test_test_py_writes_csv_and_metrics(trained, data_root, tmp_path):
    out = tmp_path / "result"
    summary = evaluate.main(
        ["--ckpt", str(trained / "best.pth"), "--out", str(out), "--save-images"]
    )
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["count"] == len(rows) == 3
    assert metrics["psnr"] == pytest.approx(sum(float(r["psnr"]) for r in rows) / 3, abs=1e-9)
    assert metrics["ssim"] == pytest.approx(sum(float(r["ssim"]) for r in rows) / 3, abs=1e-9)
    assert summary["psnr"] == metrics["psnr"]
    domains = {r["domain"] for r in rows}
    assert domains <= {"indoor", "outdoor"} and domains
    assert sum(d["count"] for d in metrics["per_domain"].values()) == 3
    for r in rows:
        saved = read_rgb(out / "images" / f"{Path(r['name']).stem}.png")
        assert saved.shape == read_rgb(data_root / "test" / "GT" / r["name"]).shape


def test_the_grammatical_prompts_ablation_trains_and_tests_on_labelled_data(data_root, tmp_path):
    """Its clip section changes only the prompts' wording: the domain ids stay those of the
    split's domains.csv, so the test step reads the labels and scores CLIP against them."""
    ablation = REPO / "configs/reside6k/ablations/prompt-grammatical.yaml"
    clip = [
        f"clip.{k}={json.dumps(v)}" for k, v in yaml.safe_load(ablation.read_text())["clip"].items()
    ]
    train.main(train_args(data_root, tmp_path, *clip, "train.epochs=1"))
    trained_with = load_config(tmp_path / "run" / "config.yaml").clip
    assert trained_with.domains == ("indoor", "outdoor")
    assert [p.texts for p in trained_with.prompts] == [
        ("a photo taken indoors",),
        ("a photo taken outdoors",),
    ]
    out = tmp_path / "result"
    summary = evaluate.main(["--ckpt", str(tmp_path / "run" / "last.pth"), "--out", str(out)])
    assert summary["labels"] == str(data_root / "test" / "domains.csv")
    assert summary["clip_domains"]["count"] == 3
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["true_domain"] for r in rows} | {r["domain"] for r in rows} <= {"indoor", "outdoor"}


def test_test_py_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "notes.pth"
    bogus.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"notes\.pth"):
        evaluate.main(["--ckpt", str(bogus)])
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="--model"):
        evaluate.main(["--ckpt", str(tmp_path / "other.pth")])


def test_predict_writes_one_output_per_input_at_input_size(trained, tmp_path):
    inputs = tmp_path / "in"
    sizes = {"a.png": (37, 53), "b.jpg": (20, 31), "c.bmp": (1, 1)}
    gen = torch.Generator().manual_seed(0)
    for name, (h, w) in sizes.items():
        write_rgb(inputs / name, torch.rand(3, h, w, generator=gen))
    (inputs / "readme.txt").write_text("not an image")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="readme.txt"):
        written = predict.main(
            ["--ckpt", str(trained / "last.pth"), str(inputs), "--out", str(out), "--compare"]
        )
    assert sorted(p.name for p in written) == ["a.png", "b.png", "c.png"]
    for name, (h, w) in sizes.items():
        assert read_rgb(out / f"{Path(name).stem}.png").shape == (h, w, 3)
        assert read_rgb(out / f"{Path(name).stem}_compare.png").shape == (h, 2 * w, 3)


def test_ddp_two_cpu_processes(data_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "train.py",
        *train_args(data_root, tmp_path, "train.epochs=1", exp="ddp"),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("normalises BatchNorm over its own share of the batch") == 1
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pth")
    assert ckpt["epoch"] == 1 and len(ckpt["rng"]) == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])


def test_test_py_on_unseen_mixed_format_data_matches_its_saved_images(trained, tmp_path):
    root = tmp_path / "unseen"
    gen = torch.Generator().manual_seed(3)
    for name, (h, w) in {"a.png": (41, 67), "a.jpg": (53, 45), "b.jpg": (64, 61)}.items():
        clean = torch.rand(3, h, w, generator=gen)
        write_rgb(root / "test" / "GT" / name, clean)
        write_rgb(root / "test" / "hazy" / name, clean * 0.6 + 0.4)
    out = tmp_path / "result"
    ckpt, cache = str(trained / "best.pth"), f"clip.cache_dir={tmp_path / 'cache'}"
    summary = evaluate.main(
        ["--ckpt", ckpt, "--data-dir", str(root), "--out", str(out), "--save-images", cache]
    )
    saved = sorted(p.name for p in (out / "images").iterdir())
    assert saved == ["a.jpg.png", "a.png.png", "b.png"]
    recomputed = []
    for name, png in (("a.png", "a.png.png"), ("a.jpg", "a.jpg.png"), ("b.jpg", "b.png")):
        mine = torch.from_numpy(read_rgb(out / "images" / png)).double() / 255
        gt = torch.from_numpy(read_rgb(root / "test" / "GT" / name)).double() / 255
        recomputed.append(10 * torch.log10(1 / ((mine - gt) ** 2).mean()).item())
    assert summary["count"] == 3
    assert summary["psnr"] == pytest.approx(sum(recomputed) / 3, abs=0.05)


def test_test_py_evaluates_released_weights_with_model_flag(trained, data_root, tmp_path):
    ckpt = load_checkpoint(trained / "best.pth")
    released = {f"module.{k}": v for k, v in ckpt["model"].items()}
    unused = build_model("mixcl-t", depths=(1,) * 5, text_dim=32, text_branch=True)
    for key, value in unused.state_dict().items():
        if key.split(".")[1] in ("q2", "k1", "v1", "postProj_t"):
            released[f"module.{key}"] = value
    path = tmp_path / "MixCLDehazeNet-T.pth"
    torch.save({"state_dict": released}, path)
    # The run's own domain cache: CLIP on another device would give features that differ in
    # the last bits (CUDA test.py classifies on the GPU, train.py on the CPU).
    common = [f"data.root={data_root}", f"clip.cache_dir={trained.parent / 'cache'}"]
    # One computation for both, bit for bit: measured speed settings may differ between them.
    common.append("speed.autotune=false")
    ours = evaluate.main(
        ["--ckpt", str(trained / "best.pth"), "--out", str(tmp_path / "a"), common[-1]]
    )
    quickstart = str(REPO / "configs" / "quickstart.yaml")
    theirs = evaluate.main(
        [
            *("--ckpt", str(path), "--model", "mixcl-t", "--config", quickstart),
            *("--out", str(tmp_path / "b"), "model.depths=[1,1,1,1,1]", *common),
        ]
    )
    assert theirs["psnr"] == pytest.approx(ours["psnr"], abs=1e-9)
    assert theirs["ssim"] == pytest.approx(ours["ssim"], abs=1e-9)


def test_prepare_domains_builds_the_caches_training_reuses(data_root, tmp_path, capsys):
    args = train_args(data_root, tmp_path)
    assert train.main([*args, "--prepare-domains"]) == {}
    caches = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(caches) == 2  # train and test splits
    assert not list((tmp_path / "run").glob("*.pth"))
    capsys.readouterr()
    train.main([*args, "train.epochs=1"])
    out = capsys.readouterr().out
    assert out.count("reusing") == 2 and "classifying" not in out


def test_test_py_speed_switches_keep_the_metrics(trained, tmp_path, exact_fp32):
    ckpt = str(trained / "best.pth")
    plain = evaluate.main(["--ckpt", ckpt, "--out", str(tmp_path / "a"), "speed.strips=false"])
    fast = evaluate.main(["--ckpt", ckpt, "--out", str(tmp_path / "b"), "speed.strips=true"])
    bf16 = evaluate.main(["--ckpt", ckpt, "--out", str(tmp_path / "c"), "precision.eval=bf16"])
    assert fast["psnr"] == pytest.approx(plain["psnr"], abs=1e-4)
    assert bf16["psnr"] == pytest.approx(plain["psnr"], abs=0.1)  # bf16 keeps ~3 digits


def test_predict_never_touches_an_input_nor_writes_two_outputs_to_one_file(trained, tmp_path):
    photos = tmp_path / "photos"
    write_rgb(photos / "photo.jpg", np.full((20, 30, 3), 90, np.uint8))
    write_rgb(photos / "photo.png", np.full((24, 28, 3), 150, np.uint8))
    before = {p: p.read_bytes() for p in photos.iterdir()}
    ckpt = str(trained / "last.pth")
    for inputs in ([str(photos)], [str(photos / "photo.jpg")]):
        with pytest.raises(FileExistsError, match="holds input images"):
            predict.main(["--ckpt", ckpt, *inputs, "--out", str(photos), "--compare"])
    assert {p: p.read_bytes() for p in photos.iterdir()} == before

    out = photos / "dehazed"  # inside the input folder, which is not searched recursively
    args = ["--ckpt", ckpt, str(photos), "--out", str(out), "--compare"]
    predict.main(args)
    assert sorted(p.name for p in out.iterdir()) == [
        "photo.jpg.png",
        "photo.jpg_compare.png",
        "photo.png.png",
        "photo.png_compare.png",
    ]
    assert read_rgb(out / "photo.jpg.png").shape == (20, 30, 3)
    assert read_rgb(out / "photo.png.png").shape == (24, 28, 3)
    with pytest.raises(FileExistsError, match=r"4 output.*--overwrite"):
        predict.main(args)
    (out / "photo.png.png").write_bytes(b"stale")
    assert len(predict.main([*args, "--overwrite"])) == 2
    assert read_rgb(out / "photo.png.png").shape == (24, 28, 3)
    assert {p: p.read_bytes() for p in photos.iterdir() if p.is_file()} == before


def test_predict_never_writes_through_a_link_in_its_output_folder(trained, tmp_path):
    photo, out, outside = tmp_path / "photo.png", tmp_path / "out", tmp_path / "elsewhere.png"
    write_rgb(photo, np.full((20, 30, 3), 90, np.uint8))
    out.mkdir()
    (out / "photo.png").symlink_to(outside)  # dangling: Path.exists() is False for it
    args = ["--ckpt", str(trained / "last.pth"), str(photo), "--out", str(out)]
    with pytest.raises(FileExistsError, match=r"1 output.*photo\.png.*--overwrite"):
        predict.main(args)
    predict.main([*args, "--overwrite"])
    assert not os.path.lexists(outside)
    assert not (out / "photo.png").is_symlink() and read_rgb(out / "photo.png").shape == (20, 30, 3)


def test_predict_refuses_a_decompression_bomb_by_its_header(trained, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    write_rgb(photos / "fine.png", np.full((20, 30, 3), 90, np.uint8))
    bomb_png(photos / "bomb.png", 12000, 12000, rgb=True)  # 144 MP, 430 MB decoded
    decoded = []
    decode = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda data, f: decoded.append(f) or decode(data, f))
    args = ["--ckpt", str(trained / "last.pth"), str(photos), "--out", str(tmp_path / "out")]
    with (
        pytest.warns(UserWarning, match="skipping"),
        pytest.raises(predict.PredictError, match=r"bomb\.png: 12000x12000 pixels.*--max-side"),
    ):
        predict.main(args)
    assert len(decoded) == 1  # fine.png only
    assert read_rgb(tmp_path / "out" / "fine.png").shape == (20, 30, 3)


def test_a_moved_clip_file_is_overridden_and_the_network_settings_are_not(
    trained, tmp_path, tiny_clip_weights
):
    moved = load_checkpoint(trained / "last.pth")
    moved["config"]["clip"]["pretrained"] = str(tmp_path / "old-machine" / "tiny-clip.pt")
    torch.save(moved, tmp_path / "moved.pth")
    write_rgb(tmp_path / "in" / "a.png", np.full((20, 24, 3), 120, np.uint8))
    args = ["--ckpt", str(tmp_path / "moved.pth"), str(tmp_path / "in")]
    with pytest.raises(WeightsError, match="old-machine"):
        predict.main([*args, "--out", str(tmp_path / "a")])
    override = f"clip.pretrained={tiny_clip_weights}"
    assert len(predict.main([*args, "--out", str(tmp_path / "b"), override])) == 1

    best = str(trained / "best.pth")
    with pytest.raises(ConfigError, match=r"model\.name='mixcl-t'.*model\.name='mixcl-s'") as e:
        evaluate.main(["--ckpt", best, "model.name=mixcl-s"])
    assert len(str(e.value)) < 500
    with pytest.raises(ConfigError, match=r"train\.lr"):
        predict.main([*args, "--out", str(tmp_path / "c"), "train.lr=1"])
    quickstart = str(REPO / "configs" / "quickstart.yaml")
    with pytest.raises(ConfigError, match=r"--config.*section\.key=value"):
        evaluate.main(["--ckpt", best, "--config", quickstart])


def test_test_py_keeps_differently_configured_results_apart(trained, tmp_path, monkeypatch):
    run = tmp_path / "myrun"
    run.mkdir()
    shutil.copy(trained / "best.pth", run)
    monkeypatch.chdir(run)  # `--ckpt best.pth` from inside the run folder
    evaluate.main(["--ckpt", "best.pth"])
    evaluate.main(["--ckpt", "best.pth", "precision.eval=bf16"])
    results = run / "results" / "myrun_best"
    plain = json.loads((results / "synthetic-test" / "metrics.json").read_text())
    bf16 = json.loads((results / "synthetic-test_precision.eval=bf16" / "metrics.json").read_text())
    assert plain["overrides"] == [] and plain["config"]["precision"]["eval"] == "none"
    assert bf16["overrides"] == ["precision.eval=bf16"]
    assert bf16["config"]["precision"]["eval"] == "bf16"
    assert bf16["config"]["model"]["name"] == "mixcl-t"

    with pytest.raises(FileExistsError, match="--overwrite"):
        evaluate.main(["--ckpt", "best.pth", "--save-images"])
    evaluate.main(["--ckpt", "best.pth", "--overwrite", "--save-images"])
    evaluate.main(["--ckpt", "best.pth", "--overwrite"])
    assert not (results / "synthetic-test" / "images").exists()  # no stale images left
    with pytest.raises(SystemExit):
        evaluate.main(["--ckpt", "best.pth", "--data-dir", "a", "--dataset", "b"])


def test_resume_honours_or_refuses_changed_settings(data_root, tmp_path, trained, capsys):
    args = train_args(data_root, tmp_path)  # train.epochs=2
    train.main([*args, "--stop-after-epochs", "1"])
    assert "stopped after epoch 1 of 2; continue with --resume" in capsys.readouterr().out
    train.main([*args, "--print-test-ckpt"])  # what train.sh tests: nothing yet
    assert capsys.readouterr().out == "\n"
    run = tmp_path / "run"
    config_yaml = (run / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"train\.lr=0\.0005 but the config says train\.lr=1e-05"):
        train.main([*args, "--resume", "train.lr=1e-5"])
    assert (run / "config.yaml").read_text() == config_yaml

    train.main([*args, "--resume", "train.epochs=4", "--stop-after-epochs", "1"])
    out = capsys.readouterr().out
    assert "re-planned for 4 epochs" in out and "stopped after epoch 2 of 4" in out
    ckpt = load_checkpoint(run / "last.pth")
    lr, eta = 5e-4, 5e-4 * 1e-2
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(
        eta + (lr - eta) * (1 + math.cos(math.pi * 2 / 4)) / 2  # a 4-epoch cosine after epoch 2
    )
    assert ckpt["scheduler"]["T_max"] == ckpt["config"]["train"]["epochs"] == 4
    assert "epochs: 4" in (run / "config.yaml").read_text()
    assert "train.epochs=4" in (run / "command.txt").read_text().splitlines()[-1]

    finished = load_checkpoint(trained / "last.pth")["epoch"]
    train.main([*train_args(data_root, trained.parent), "--resume"])
    assert f"nothing to do: {trained / 'last.pth'} has finished all {finished}" in (
        capsys.readouterr().out
    )
    train.main([*train_args(data_root, trained.parent), "--print-test-ckpt"])
    assert capsys.readouterr().out == f"{trained / 'best.pth'}\n"


def test_train_sh_help_is_printed_once(tmp_path):
    proc = subprocess.run(
        ["bash", str(REPO / "train.sh"), "configs/quickstart.yaml", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and not proc.stderr
    assert proc.stdout.count("bash train.sh [CONFIG]") == 1
    assert not (tmp_path / "runs").exists()

"""train.py follows the authors' run: fp32 validation, whole-image validation when configured,
one extra epoch at the final lr, and a saved note of every key that leaves the paper."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import training_run
from datasets import paired
from networks import build_network
from utils.checkpoint import load_checkpoint
from utils.config import load_config
from utils.distributed import DistInfo
from utils.speed import speed_for

from .helpers import REPO, load_entry, train_args

train, evaluate = load_entry("train"), load_entry("test")


def test_validation_runs_in_the_eval_precision_not_the_training_one(data_root):
    def validation_psnr(*overrides: str) -> float:
        cfg = load_config(
            REPO / "configs" / "quickstart.yaml",
            [
                f"data.root={data_root}",
                *("data.patch_size=32", "data.num_workers=0", "model.name=mixdehazenet-t"),
                *("model.depths=[1,1,1,1,1]", *overrides),
            ],
        )
        loader = training_run.make_loaders(
            cfg, DistInfo(), *train.open_splits(cfg), torch.Generator()
        ).val
        torch.manual_seed(0)
        net = build_network(cfg, None, speed_for(cfg, torch.device("cpu"), "train")[0])
        return train.validate(net, loader, torch.device("cpu"), cfg, DistInfo())[0]

    fp32 = validation_psnr("precision.train=bf16", "precision.eval=none")
    bf16 = validation_psnr("precision.train=none", "precision.eval=bf16")
    assert bf16 != pytest.approx(fp32, abs=1e-6)
    assert validation_psnr("precision.train=none") == pytest.approx(fp32, abs=1e-9)


def test_train_classifies_on_its_own_device(monkeypatch, tmp_path):
    devices = []

    def fake_features(clip, split_dir, names, device="cpu"):
        devices.append(device)
        return {}, None

    monkeypatch.setattr(train, "split_text_features", fake_features)
    split = SimpleNamespace(  # a PairedDataset's
        split_dir=tmp_path / "test", names=["a.png"], set_text_features=lambda features: None
    )
    cfg = train.load_config(None, [f"data.root={tmp_path}"])
    train.attach_text_features(cfg, DistInfo(), torch.device("cuda", 0), (split,))
    assert devices == ["cuda:0"]


def test_extra_epoch_at_the_final_lr_and_whole_image_validation(data_root, tmp_path, capsys):
    args = train_args(
        data_root, tmp_path, "train.epochs=1", "train.extra_epoch=true", "data.valid_mode=test"
    )
    train.main([*args, "--stop-after-epochs", "1"])
    assert "stopped after epoch 1 of 2" in capsys.readouterr().out
    assert train.main([*args, "--print-test-ckpt"]) == {}
    assert capsys.readouterr().out.strip() == ""  # the extra epoch is still to come
    result = train.main([*args, "--resume"])
    run = tmp_path / "run"
    assert load_checkpoint(run / "last.pth")["epoch"] == 2
    train.main([*args, "--print-test-ckpt"])
    assert capsys.readouterr().out.strip().endswith("best.pth")
    train.main([*args, "--resume"])  # finished, extra epoch included: nothing left to train
    assert "nothing to do" in capsys.readouterr().out
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert lrs == pytest.approx([5e-4, 5e-4, 5e-6, 5e-6])  # 2 steps an epoch; lr_min = lr / 100
    assert len(events.Scalars("val/psnr")) == 2

    # Whole images, one at a time, in fp32: exactly what test.py measures.
    summary = evaluate.main(["--ckpt", str(run / "last.pth"), "--out", str(tmp_path / "test")])
    assert result["last_psnr"] == pytest.approx(summary["psnr"], abs=1e-6)
    assert result["last_ssim"] == pytest.approx(summary["ssim"], abs=1e-6)


def test_run_folder_says_how_the_run_compares_with_the_paper(trained):
    report = (trained / "protocol_differences.txt").read_text()
    assert report.startswith("protocol: no published setting for data.root=")


def test_each_split_is_opened_once_per_run(data_root, tmp_path, monkeypatch):
    headers = []
    real = paired.image_size

    def counting_image_size(path):
        headers.append(path)
        return real(path)

    monkeypatch.setattr(paired, "image_size", counting_image_size)
    train.main(train_args(data_root, tmp_path, "model.name=mixdehazenet-t", "train.epochs=1"))
    pairs = len(list(data_root.glob("*/hazy/*.png")))
    assert len(headers) == 2 * pairs  # one hazy and one GT header per pair


def test_mid_epoch_checkpoints_fall_due_by_steps_or_by_rank_0s_clock():
    cfg = load_config(None, ["train.checkpoint_every_steps=3", "train.checkpoint_every_minutes=2"])
    clock = training_run.CheckpointClock(cfg)
    assert [clock.due(step, is_main=True) for step in (1, 2, 3, 6)] == [False, False, True, True]
    clock.saved -= 121  # two minutes and a second since the last write
    assert clock.due(4, is_main=True) and not clock.due(4, is_main=False)
    clock.reset()
    assert not clock.due(4, is_main=True)

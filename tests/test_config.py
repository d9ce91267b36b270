"""Config loading: inheritance, overrides, and errors that name the offending key."""

from pathlib import Path

import pytest
import yaml

from utils.config import (
    Config,
    ConfigError,
    config_from_checkpoint,
    config_from_dict,
    config_to_dict,
    load_config,
    override_config,
)

from .helpers import load_entry

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_config_loads():
    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(files) >= 8
    for f in files:
        assert isinstance(load_config(f), Config), f


def test_paper_config_matches_protocol():
    cfg = load_config(REPO / "configs/reside6k/mixcl-s.yaml")
    assert cfg.model.name == "mixcl-s"
    t = cfg.train
    assert (t.batch_size, t.epochs, t.lr, t.lr_min_ratio, t.eval_freq) == (16, 1000, 1e-4, 1e-2, 1)
    assert cfg.loss.cr_weight == 0.1
    assert cfg.precision.train == "fp16" and cfg.precision.eval == "none"
    assert cfg.data.patch_size == 256 and cfg.data.only_h_flip and cfg.data.edge_decay == 0
    assert cfg.data.valid_mode == "valid" and cfg.train.extra_epoch and cfg.train.sync_batchnorm
    assert cfg.loss.resnet_batchnorm == "batch" and not cfg.loss.resnet_imagenet_norm
    assert cfg.clip.precision == "auto" and cfg.clip.quick_gelu == "auto"
    assert cfg.clip.arch == "ViT-B-32" and cfg.clip.pretrained == "openai"
    assert cfg.clip.mode == "hard"
    assert [cfg.clip.template.format(d) for d in cfg.clip.domains] == [
        "a photo of a indoor",
        "a photo of a outdoor",
    ]


@pytest.mark.parametrize(
    ("config", "authors"),  # the authors' configs/indoor and configs/outdoor MixDehazeNet-s.json
    [
        ("reside-in/mixcl-s.yaml", (36, 2e-4, 500, 1, False, "test")),
        ("reside-out/mixcl-s.yaml", (49, 2e-4, 50, 1, True, "valid")),
    ],
)
def test_reside_in_and_out_configs_are_the_authors(config, authors, capsys):
    load_entry("train").main([str(REPO / "configs" / config), "--print-config"])
    c = yaml.safe_load(capsys.readouterr().out)
    t, d = c["train"], c["data"]
    assert (t["batch_size"], t["lr"], t["epochs"], t["eval_freq"]) == authors[:4]
    assert (d["only_h_flip"], d["valid_mode"], d["patch_size"], d["edge_decay"]) == (
        *authors[4:],
        256,
        0.0,
    )
    assert c["model"]["name"] == "mixcl-s" and c["loss"]["cr_weight"] == 0.1


def test_base_inheritance_and_overrides():
    cfg = load_config(
        REPO / "configs/reside6k/ablations/fusion-add.yaml",
        ["train.lr=2e-4", "data.root=/tmp/x", "model.depths=[1,1,1,1,1]"],
    )
    assert cfg.model.fusion == "add"
    assert cfg.model.name == "mixcl-s"  # from the base file
    assert cfg.train.lr == 2e-4
    assert cfg.data.root == "/tmp/x"
    assert cfg.model.depths == (1, 1, 1, 1, 1)


def test_unknown_key_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.lrr"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"data\.patchsize"):
        load_config(None, ["data.patchsize=128"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config(None, ["train.batch_size=abc"])
    with pytest.raises(ConfigError, match=r"data\.only_h_flip"):
        load_config(None, ["data.only_h_flip=3"])
    with pytest.raises(ConfigError, match=r"clip\.mode"):
        load_config(None, ["clip.mode=medium"])
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_config(None, ["lr"])


def test_roundtrip_through_plain_data():
    cfg = load_config(REPO / "configs/reside6k/mixcl-s.yaml", ["model.depths=[1,2,1,2,1]"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert override_config(cfg, ["train.epochs=3"]).train.epochs == 3
    assert cfg.train.epochs == 1000  # configs are never mutated


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("train.cr_weight", "loss.cr_weight"),
        ("train.cr_weights", "loss.resnet_weights"),
        ("train.amp", "precision.train"),
        ("speed.amp", "precision.eval"),
    ],
)
def test_renamed_key_names_its_new_place(old, new, tmp_path):
    with pytest.raises(ConfigError, match=rf"{old} was renamed: use {new}"):
        load_config(None, [f"{old}=1"])
    section, key = old.split(".")
    f = tmp_path / "old.yaml"
    f.write_text(f"{section}:\n  {key}: 1\n")
    with pytest.raises(ConfigError, match=rf"old\.yaml.*{old} was renamed"):
        load_config(f)


def test_checkpoint_configs_written_before_a_rename_still_load():
    old = config_to_dict(Config())
    old["train"]["cr_weight"] = old.pop("loss")["cr_weight"]
    old["train"]["amp"] = "bf16"
    del old["precision"]
    del old["clip"]["precision"]
    cfg = config_from_checkpoint(old)
    assert cfg.loss.cr_weight == 0.1 and cfg.precision.train == "bf16"
    # what such a run was trained with: CLIP in fp32, the CR backbone in eval mode
    assert cfg.clip.precision == "fp32" and cfg.loss.resnet_batchnorm == "frozen"
    assert config_from_checkpoint(config_to_dict(Config())) == Config()

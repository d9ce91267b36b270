"""Config loading: inheritance, overrides, and errors that name the offending key."""

import copy
from dataclasses import replace
from pathlib import Path
from typing import Literal

import pytest
import yaml

from utils.config import (
    EVALUATION_KEYS,
    KEY_ROLES,
    LOCATION_KEYS,
    REPEAT_IGNORES,
    RESULT_KEYS,
    RESUME_KEYS,
    WEIGHTS_KEYS,
    Config,
    ConfigError,
    _convert,
    config_changes,
    config_from_checkpoint,
    config_from_dict,
    config_to_dict,
    covers,
    dump_config,
    flatten,
    load_config,
    override_config,
    refuse_changes,
    role_of,
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
        ("train.cr_imagenet_norm", "loss.resnet_imagenet_norm"),
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


def test_defaults_are_the_published_setting():
    """PROTOCOL.md's RESIDE-6K schedule and MODEL_SPEC's loss, with no YAML file at all."""
    cfg = load_config()
    assert (cfg.exp_name, cfg.output_dir, cfg.run_dir) == ("mixcl-s", "runs", Path("runs/mixcl-s"))
    assert (cfg.model.name, cfg.model.fusion, cfg.model.depths) == ("mixcl-s", None, None)
    t = cfg.train
    assert (t.batch_size, t.epochs, t.lr, t.lr_min_ratio, t.eval_freq) == (16, 1000, 1e-4, 1e-2, 1)
    assert t.weight_decay == 0.01  # AdamW's own default: upstream passes none
    d = cfg.data
    assert (d.root, d.train_split, d.test_split) == ("data/RESIDE-6K", "train", "test")
    assert (d.patch_size, d.edge_decay, d.only_h_flip) == (256, 0.0, True)
    assert not d.synthetic.enabled
    assert (cfg.loss.cr_weight, cfg.loss.resnet_weights, cfg.loss.resnet_imagenet_norm) == (
        0.1,
        None,
        False,
    )
    assert (cfg.precision.train, cfg.precision.eval) == ("fp16", "none")
    c = cfg.clip
    assert (c.arch, c.pretrained, c.mode) == ("ViT-B-32", "openai", "hard")
    assert [c.template.format(x) for x in c.domains] == [
        "a photo of a indoor",
        "a photo of a outdoor",
    ]


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        # An optional field (None by default) given a value of the wrong kind.
        ("model:\n  depths: abc\n", r"model\.depths: expected a list, got 'abc'"),
        ("model:\n  fusion: bogus\n", r"model\.fusion: 'bogus' is not one of"),
        ("clip:\n  pretrained: 5\n", r"clip\.pretrained: expected a string, got 5"),
        ("model:\n  depths: [1, x]\n", r"model\.depths\[1\]: expected an integer, got 'x'"),
        ("train:\n  lr: abc\n", r"train\.lr: expected a number, got 'abc'"),
        ("train:\n  lr: true\n", r"train\.lr: expected a number, got True"),
        ("train:\n  lr: [1]\n", r"train\.lr: expected a number, got \[1\]"),
        ("train:\n  batch_size: 2.5\n", r"train\.batch_size: expected an integer, got 2\.5"),
        ("train:\n  batch_size: true\n", r"train\.batch_size: expected an integer, got True"),
        ("data:\n  only_h_flip: 1\n", r"data\.only_h_flip: expected true or false, got 1"),
        ("exp_name: 5\n", r"exp_name: expected a string, got 5"),
        # A section given as a scalar, and nested sections.
        ("train: 5\n", r"train: expected a mapping, got 5"),
        ("data:\n  synthetic: yes\n", r"data\.synthetic: expected a mapping, got True"),
        ("data:\n  synthetic:\n    seed: x\n", r"data\.synthetic\.seed: expected an integer"),
        # The file itself.
        ("- a\n- b\n", r"expected a mapping at the top level"),
        ("just text\n", r"expected a mapping at the top level"),
        ("train: [1\n", r"not valid YAML"),
        ("1: 2\n", r"unknown config key 1 \(known keys: exp_name, output_dir, model, data"),
        ("train:\n  2: x\n", r"unknown config key train\.2 \(known keys of train: batch_size"),
        ("base: 5\n", r"base: expected a file name, got 5"),
    ],
)
def test_errors_in_a_file_name_the_file_and_the_key(tmp_path, yaml_text, message):
    f = tmp_path / "exp.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError, match=rf"exp\.yaml: {message}"):
        load_config(f)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.depths=abc", r"^command line: model\.depths: expected a list, got 'abc'$"),
        ("train.lr=abc", r"^command line: train\.lr: expected a number, got 'abc'$"),
        ("train=5", r"^command line: train: expected a mapping, got 5$"),
        ("model.depths=[1,2.5]", r"^command line: model\.depths\[1\]: expected an integer"),
        ("lr", r"^override 'lr' is not of the form section\.key=value$"),
        ("=1", r"^override '=1' is not of the form section\.key=value$"),
        (".lr=1", r"override '\.lr=1' is not of the form"),
        ("train..lr=1", r"override 'train\.\.lr=1' is not of the form"),
        ("train.lrr=1,x=2", r"^command line: unknown config key train\.lrr "),
    ],
)
def test_errors_in_an_override_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
    with pytest.raises(ConfigError, match=message):
        override_config(Config(), [override])


def test_an_error_names_where_the_bad_value_came_from(tmp_path):
    """A bad override is the command line's, a bad value of the file the file's, even when
    both are given."""
    quickstart = REPO / "configs" / "quickstart.yaml"
    with pytest.raises(ConfigError, match=r"^command line: model\.name: 'plainunet-b' is not"):
        load_config(quickstart, ["model.name=plainunet-b"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {quickstart}\ntrain:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: train\.lr: expected a number, got 'fast'"):
        load_config(bad, ["train.epochs=3"])
    load_config(bad, ["train.lr=1e-3"])  # the override replaces the bad value
    with pytest.raises(ConfigError, match=r"^command line: model\.depths: one number of blocks"):
        load_config(quickstart, ["model.depths=[1,1,1]"])


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.stem)
def test_a_config_file_holds_only_what_differs_from_its_base(path):
    own = yaml.safe_load(path.read_text())
    base = own.pop("base", None)
    inherited = flatten(config_to_dict(load_config(path.parent / base if base else None)))
    assert [k for k, v in flatten(own).items() if k in inherited and inherited[k] == v] == []


def test_unknown_keys_are_all_listed_with_the_known_ones():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.zz=1", "train.aa=2"])
    message = str(info.value)
    assert message.startswith(
        "command line: unknown config key train.aa, train.zz (known keys of train: "
    )
    assert "batch_size, epochs" in message


def test_override_values_are_read_as_yaml():
    cfg = load_config(
        None,
        [
            "train.lr=1e-3",  # YAML 1.1 reads this as a string
            "train.lr_min_ratio=1",  # an integer where a number is expected
            "clip.pretrained=null",
            "model.depths=[2, 1, 1, 1, 2]",
            "data.root=/data/a=b",  # only the first '=' separates key and value
            "exp_name=",
            "data.synthetic.train=5",
        ],
    )
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.lr_min_ratio == 1.0 and isinstance(cfg.train.lr_min_ratio, float)
    assert cfg.clip.pretrained is None
    assert cfg.model.depths == (2, 1, 1, 1, 2)
    assert cfg.data.root == "/data/a=b"
    assert cfg.exp_name == ""
    assert cfg.data.synthetic.train == 5 and cfg.data.synthetic.test == 16
    assert cfg.train.epochs == 1000  # untouched keys of a section keep their values


def test_bases_merge_section_by_section_relative_to_the_file(tmp_path):
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "root.yaml").write_text("train:\n  lr: 0.5\n  epochs: 7\n")
    (tmp_path / "bases" / "mid.yaml").write_text("base: root.yaml\ntrain:\n  epochs: 8\n")
    (tmp_path / "exp.yaml").write_text("base: bases/mid.yaml\ndata:\n  patch_size: 64\n")
    cfg = load_config(tmp_path / "exp.yaml", ["train.batch_size=2"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.batch_size) == (0.5, 8, 2)
    assert cfg.data.patch_size == 64 and cfg.data.root == "data/RESIDE-6K"
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml") == Config()


def test_missing_files_and_cycles_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "a.yaml").write_text("base: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"config file not found: .*gone\.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: `base:` files form a cycle"):
        load_config(tmp_path / "b.yaml")


def test_override_config_keeps_the_rest_and_returns_the_same_config_without_overrides():
    cfg = load_config(None, ["train.lr=0.5", "model.depths=[1,1,1,1,1]"])
    assert override_config(cfg, []) is cfg
    new = override_config(cfg, ["train.epochs=3"])
    assert (new.train.epochs, new.train.lr, new.model.depths) == (3, 0.5, (1, 1, 1, 1, 1))


def test_dumped_config_reads_back_in_field_order():
    cfg = load_config(None, ["model.depths=[1,2,1,2,1]", "clip.domains=[a, b, c]"])
    text = dump_config(cfg)
    assert text.startswith("exp_name: mixcl-s\noutput_dir: runs\nmodel:\n  name: mixcl-s\n")
    assert "depths:\n  - 1\n  - 2\n" in text
    assert config_from_dict(yaml.safe_load(text)) == cfg
    assert config_to_dict(cfg)["clip"]["domains"] == ["a", "b", "c"]


def test_checkpoint_config_is_read_without_changing_the_stored_copy():
    old = config_to_dict(Config())
    del old["loss"]
    old["train"]["cr_imagenet_norm"] = True
    old["train"]["cr_weights"] = "/w/resnet152.pth"
    old["speed"]["amp"] = "bf16"
    snapshot = copy.deepcopy(old)
    cfg = config_from_checkpoint(old)
    assert old == snapshot
    loss = cfg.loss
    assert (loss.cr_weight, loss.resnet_weights, loss.resnet_imagenet_norm) == (
        0.1,
        "/w/resnet152.pth",
        True,
    )
    assert cfg.precision.eval == "bf16"
    assert config_from_checkpoint(config_to_dict(cfg)) == cfg
    del old["speed"]  # a section that did not exist yet when the checkpoint was written
    assert config_from_checkpoint(old).speed == Config().speed


def test_plain_data_that_is_not_a_mapping_is_named():
    with pytest.raises(ConfigError, match=r"^config: expected a mapping, got \[1\]$"):
        config_from_dict([1])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, None),
        ("auto", None),
        (3, r"^x: 3 fits none of typing\.Union\[typing\.Literal\['auto'\], bool"),
    ],
)
def test_a_union_takes_the_first_type_that_fits(value, message):
    tp = Literal["auto"] | bool | None
    if message is None:
        assert _convert(value, tp, "x") == value
    else:
        with pytest.raises(ConfigError, match=message):
            _convert(value, tp, "x")
    assert _convert(None, tp, "x") is None


def test_a_field_of_an_unsupported_type_is_a_code_error_naming_it():
    with pytest.raises(TypeError, match=r"unsupported config type <class 'complex'> for train\.x"):
        _convert(1, complex, "train.x")


def test_refuse_changes_names_each_refused_key_with_both_values():
    old = load_config(None, ["train.lr=0.5", "train.epochs=3"])
    new = load_config(None, ["train.lr=0.25", "train.epochs=4", "data.num_workers=1"])
    allowed = ["train.epochs", "data"]
    assert refuse_changes(old, old, allowed, "a.pth") == {}
    with pytest.raises(ConfigError) as info:
        refuse_changes(old, new, allowed, "a.pth", "; start a new run")
    assert str(info.value) == (
        "a.pth was trained with train.lr=0.5 but the config says train.lr=0.25; only these "
        "may differ: train.epochs, data; start a new run"
    )
    with pytest.raises(ConfigError) as info:
        refuse_changes(old, new, ["data"], "a.pth")  # two refused keys, no hint
    assert str(info.value) == (
        "a.pth was trained with train.epochs=3, train.lr=0.5 but the config says "
        "train.epochs=4, train.lr=0.25; only these may differ: data"
    )
    allowed = [*allowed, "train.lr"]
    assert refuse_changes(old, new, allowed, "a.pth") == {
        "train.lr": (0.5, 0.25),
        "train.epochs": (3, 4),
        "data.num_workers": (16, 1),
    }
    assert config_changes(new, old)["train.lr"] == (0.25, 0.5)


def test_covers_takes_keys_and_whole_sections_but_not_prefixes():
    assert covers(["train.lr", "data"], "train.lr")
    assert covers(["train.lr", "data"], "data.synthetic.seed")
    assert not covers(["train.lr", "data"], "train.lr_min_ratio")
    assert not covers(["train.lr", "data"], "dataset")
    assert not covers([], "train.lr")


def test_flatten_dots_nested_keys():
    assert flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": None}) == {
        "a.b": 1,
        "a.c.d": [2],
        "e": None,
    }


def test_a_checkpoint_without_a_section_gets_its_added_keys_as_they_were_then():
    old = config_to_dict(Config())
    del old["loss"]  # written before the section existed, and trained with the defaults
    assert config_from_checkpoint(old).loss == replace(Config().loss, resnet_batchnorm="frozen")


def test_the_former_name_of_predicts_precision_still_reads(tmp_path):
    """precision.predict is now speed.predict_precision: old YAML files, overrides and
    checkpoints keep working, their null meaning auto as before; both names at once are refused."""
    base = tmp_path / "base.yaml"
    base.write_text("speed: {predict_precision: none}\n")
    old = tmp_path / "old.yaml"
    old.write_text("base: base.yaml\nprecision: {predict: bf16}\n")
    assert load_config(old).speed.predict_precision == "bf16"  # the file wins over its base
    assert load_config(old, ["speed.predict_precision=fp16"]).speed.predict_precision == "fp16"
    assert load_config(None, ["precision.predict=fp16"]).speed.predict_precision == "fp16"
    cfg = override_config(load_config(old), ["precision.predict=none"])
    assert cfg.speed.predict_precision == "none"
    stored = config_to_dict(Config())
    del stored["speed"]["predict_precision"]
    for value, now in (("bf16", "bf16"), (None, "auto")):
        stored["precision"]["predict"] = value
        assert config_from_checkpoint(stored).speed.predict_precision == now
    assert "predict" not in config_to_dict(config_from_checkpoint(stored))["precision"]
    with pytest.raises(ConfigError, match=r"precision\.predict and speed\.predict_precision"):
        load_config(None, ["precision.predict=none", "speed.predict_precision=bf16"])


def test_every_config_key_declares_its_role():
    """A key added without an entry in KEY_ROLES fails here: its role decides whether the
    protocol report compares it and whether --resume, test.py and compare.py accept a change."""
    keys = flatten(config_to_dict(Config()))
    assert [k for k in keys if role_of(k) is None] == []
    for entry in KEY_ROLES:
        assert any(covers((entry,), k) for k in keys), f"{entry} is no config key or section"


def test_the_key_lists_follow_the_roles():
    assert covers(RESUME_KEYS, "train.epochs") and not covers(EVALUATION_KEYS, "train.epochs")
    assert covers(EVALUATION_KEYS, "clip.mode") and not covers(RESUME_KEYS, "clip.mode")
    assert covers(LOCATION_KEYS, "data.root") and not covers(RESULT_KEYS, "data.root")
    assert covers(RESULT_KEYS, "model.init_from") and covers(RESUME_KEYS, "model.init_from")
    assert covers(RESUME_KEYS, "speed.strips") and not covers(LOCATION_KEYS, "speed.strips")
    assert not any(covers(keys, "train.lr") for keys in (RESUME_KEYS, EVALUATION_KEYS))
    # The number of loader workers draws the augmentations: compared, yet another draw.
    assert covers(RESULT_KEYS, "data.num_workers") and covers(REPEAT_IGNORES, "data.num_workers")
    assert covers(RESULT_KEYS, "train.nonfinite") and covers(RESUME_KEYS, "train.nonfinite")
    assert WEIGHTS_KEYS == ("clip.pretrained", "loss.resnet_weights")
    assert all(covers(RESULT_KEYS, k) and covers(LOCATION_KEYS, k) for k in WEIGHTS_KEYS)

"""The published settings and the note a run writes of every key that leaves them."""

from pathlib import Path

import pytest

from utils import weights
from utils.config import load_config
from utils.losses import LOSS_TERMS
from utils.protocol import (
    DEHAZEFORMER_SETTINGS,
    PUBLISHED_SETTINGS,
    compared_keys,
    protocol_report,
    published_setting,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    ("config", "dataset"),
    [
        ("reside6k/mixcl-s.yaml", "RESIDE-6K"),
        ("reside-in/mixcl-s.yaml", "RESIDE-IN"),
        ("reside-out/mixcl-s.yaml", "RESIDE-OUT"),
    ],
)
def test_the_shipped_dataset_configs_are_the_published_settings(config, dataset):
    cfg = load_config(CONFIGS / config)
    assert published_setting(cfg.data.root)[0] == dataset
    source = PUBLISHED_SETTINGS[dataset].source
    assert protocol_report(cfg).endswith(
        f"published {dataset} setting ({source}): no differences\n"
    )


@pytest.mark.parametrize(
    ("config", "overrides", "lines"),
    [
        ("reside6k/mixcl-s.yaml", ["train.batch_size=8"], ["train.batch_size=8 (paper: 16)"]),
        ("reside6k/mixdehazenet-s.yaml", [], ["model.name=mixdehazenet-s (paper: mixcl-s)"]),
        ("reside6k/ablations/soft-domains.yaml", [], ["clip.mode=soft (paper: hard)"]),
        (
            "reside6k/ablations/cr-frozen-bn.yaml",
            [],
            ["loss.resnet_batchnorm=frozen (paper: batch)"],
        ),
        (
            "reside6k/ablations/prompt-grammatical.yaml",
            [],
            [
                "clip.prompts=[{domain: indoor, texts: [a photo taken indoors]}, "
                "{domain: outdoor, texts: [a photo taken outdoors]}] (paper: [])"
            ],
        ),
        (
            "reside-in/mixcl-s.yaml",
            ["data.root=/datasets/reside_in", "train.extra_epoch=false", "precision.train=bf16"],
            ["train.extra_epoch=false (paper: true)", "precision.train=bf16 (paper: fp16)"],
        ),
    ],
)
def test_every_key_that_leaves_the_paper_is_named(config, overrides, lines):
    cfg = load_config(CONFIGS / config, overrides)
    report = protocol_report(cfg)
    assert report.splitlines()[1:] == [f"  {line}" for line in lines]
    assert "its numbers are not the paper's" in report


# DehazeFormer's configs/reside6k/dehazeformer-{t,s,b}.json: batch, lr, epochs, eval_freq.
@pytest.mark.parametrize(
    ("size", "authors"),
    [("t", (32, 2e-4, 1000, 10)), ("s", (16, 1e-4, 1000, 10)), ("b", (16, 1e-4, 1000, 10))],
)
def test_dehazeformer_configs_are_its_authors_reside6k_settings(size, authors):
    cfg = load_config(CONFIGS / f"reside6k/dehazeformer-{size}.yaml")
    t, d = cfg.train, cfg.data
    assert (t.batch_size, t.lr, t.epochs, t.eval_freq) == authors
    assert (d.patch_size, d.only_h_flip, d.valid_mode, d.edge_decay) == (256, True, "valid", 0)
    assert cfg.loss.cr_weight == 0 and t.extra_epoch and t.lr_min_ratio == 0.01
    source = f"configs/reside6k/dehazeformer-{size}.json"
    assert protocol_report(cfg).endswith(f"{source}): no differences\n")
    guided = protocol_report(load_config(CONFIGS / f"reside6k/clipdehazeformer-{size}.yaml"))
    assert source in guided
    assert guided.splitlines()[1:] == [
        f"  model.name=clipdehazeformer-{size} (paper: dehazeformer-{size})"
    ]
    mixcl = load_config(CONFIGS / "reside6k/mixcl-s.yaml", [f"model.name=dehazeformer-{size}"])
    assert "  loss.cr_weight=0.1 (paper: 0.0)" in protocol_report(mixcl).splitlines()


def test_a_model_without_published_setting_on_its_dataset_says_so():
    cfg = load_config(CONFIGS / "reside6k/dehazeformer-b.yaml", ["model.name=dehazeformer-l"])
    assert published_setting(cfg.data.root, cfg.model.name) is None
    assert protocol_report(cfg).startswith(
        "protocol: no published setting for data.root=data/RESIDE-6K with dehazeformer-l"
    )


def test_a_dataset_without_published_setting_says_so():
    report = protocol_report(load_config(CONFIGS / "quickstart.yaml"))
    assert report.startswith("protocol: no published setting for data.root=data/synthetic")
    assert "RESIDE-6K, RESIDE-IN, RESIDE-OUT" in report


def test_published_settings_give_every_key_that_changes_the_numbers():
    dehazeformer = [s for sizes in DEHAZEFORMER_SETTINGS.values() for s in sizes.values()]
    for setting in [*PUBLISHED_SETTINGS.values(), *dehazeformer]:
        assert set(setting.values) == set(compared_keys(setting)), setting.source


def test_oracle_domains_a_warm_start_and_a_loss_weight_are_named():
    overrides = [
        "clip.domain_source=labels",
        "model.init_from=mixdehazenet.pth",
        "loss.cr_weight=0.2",
    ]
    report = protocol_report(load_config(CONFIGS / "reside6k/mixcl-s.yaml", overrides))
    assert report.splitlines()[1:] == [
        "  model.init_from=mixdehazenet.pth (paper: null)",
        "  clip.domain_source=labels (paper: clip)",
        "  loss.cr_weight=0.2 (paper: 0.1)",
    ]


@pytest.mark.parametrize("term", list(LOSS_TERMS))
def test_every_loss_weight_is_in_the_protocol_report(term):
    key = f"loss.{LOSS_TERMS[term].weight_key}"
    report = protocol_report(load_config(CONFIGS / "reside6k/mixcl-s.yaml", [f"{key}=0.75"]))
    assert f"  {key}=0.75 (paper: " in report.splitlines()[1]


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("clip.pretrained=null", "clip.pretrained=null (random; paper: openai)"),
        ("clip.pretrained=laion2b_s34b_b79k", "clip.pretrained=laion2b_s34b_b79k (paper: openai)"),
        ("data.num_workers=7", "data.num_workers=7 (paper: 16)"),
        ("train.nonfinite=skip", "train.nonfinite=skip (paper: stop)"),
    ],
)
def test_each_other_key_that_changes_the_numbers_is_named_alone(override, line):
    report = protocol_report(load_config(CONFIGS / "reside6k/mixcl-s.yaml", [override]))
    assert report.splitlines()[1:] == [f"  {line}"]


def test_other_weights_files_are_named_by_digest_and_a_copy_of_the_papers_is_not(
    tmp_path, monkeypatch
):
    resnet = tmp_path / "my-resnet152.pth"
    resnet.write_bytes(b"other ImageNet weights")
    digest = weights.sha256(resnet)
    report = protocol_report(
        load_config(CONFIGS / "reside6k/mixcl-s.yaml", [f"loss.resnet_weights={resnet}"])
    )
    assert report.splitlines()[1:] == [
        f"  loss.resnet_weights={resnet} (sha256:{digest[:16]}; paper: torchvision:IMAGENET1K_V1)"
    ]
    # A local copy of the published weights, known by the digest of their download.
    monkeypatch.setattr(weights, "_torchvision_resnet152", lambda: {digest[:8]: "tv"})
    monkeypatch.setattr(weights, "TORCHVISION_RESNET152", "tv")
    monkeypatch.setattr(weights, "_openai_clip_files", lambda: {digest: "openai"})
    cfg = load_config(
        CONFIGS / "reside6k/mixcl-s.yaml",
        [f"loss.resnet_weights={resnet}", f"clip.pretrained={resnet}"],
    )
    assert protocol_report(cfg).endswith(": no differences\n")

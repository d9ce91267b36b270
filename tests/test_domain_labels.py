"""Domain labels files: strict reading, CLIP accuracy against them, the oracle features."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from utils.clip_domains import split_text_features
from utils.config import load_config
from utils.domain_labels import (
    domain_confusion,
    labels_file,
    read_domain_labels,
    write_domain_labels,
)
from utils.errors import DataError
from utils.image import list_images

from .helpers import REPO, load_entry, train_args

train, evaluate = load_entry("train"), load_entry("test")

DOMAINS = ("indoor", "outdoor")


def test_clip_accuracy_and_confusion_on_a_hand_made_case():
    true = {"a": "indoor", "b": "indoor", "c": "indoor", "d": "outdoor", "e": "outdoor"}
    predicted = {"a": "indoor", "b": "outdoor", "c": "indoor", "d": "outdoor", "e": "indoor"}
    predicted["z"] = "outdoor"  # not labelled: not counted
    report = domain_confusion(true, predicted, DOMAINS)
    assert report["accuracy"] == pytest.approx(3 / 5)
    assert (report["correct"], report["count"]) == (3, 5)
    assert report["confusion"] == {
        "indoor": {"indoor": 2, "outdoor": 1},
        "outdoor": {"indoor": 1, "outdoor": 1},
    }


def test_labels_round_trip(tmp_path):
    labels = {"b.png": "outdoor", "a.jpg": "indoor"}
    write_domain_labels(labels_file(tmp_path / "test"), labels)
    path = tmp_path / "test" / "domains.csv"
    assert path.read_text().splitlines() == ["name,domain", "a.jpg,indoor", "b.png,outdoor"]
    assert read_domain_labels(path, DOMAINS, ["a.jpg", "b.png"]) == labels


def test_a_labels_file_that_does_not_match_its_images_is_refused(tmp_path):
    path = tmp_path / "domains.csv"
    path.write_text("name,domain\na.png,indoor\na.png,outdoor\nb.png,kitchen\nold.png,indoor\n")
    with pytest.raises(ValueError) as err:
        read_domain_labels(path, DOMAINS, ["a.png", "b.png", "c.png"])
    message = str(err.value)
    assert str(path) in message
    assert "line 4: 'kitchen'" in message
    assert "more than once: a.png" in message
    assert "no label for 1 image(s): c.png" in message
    assert "not images of the split: old.png" in message
    path.write_text("file,label\na.png,indoor\n")
    with pytest.raises(ValueError, match=r"domains\.csv: expected a header"):
        read_domain_labels(path, DOMAINS, ["a.png"])
    with pytest.raises(DataError, match=r"missing\.csv"):
        read_domain_labels(tmp_path / "missing.csv", DOMAINS, ["a.png"])


def test_synthetic_data_comes_with_its_true_domains(synthetic_root):
    for split in ("train", "test"):
        names = sorted(p.name for p in (synthetic_root / split / "hazy").iterdir())
        labels = read_domain_labels(synthetic_root / split / "domains.csv", DOMAINS, names)
        assert sorted(labels) == names


def domain_text_features(cfg, split: Path):
    """Text features and CLIP's domains of every hazy image of `split`."""
    names = [p.name for p in list_images(split / "hazy")]
    return split_text_features(cfg.clip, split, names)


def oracle_config(root: Path, cache: Path, source: str):
    return load_config(
        REPO / "configs" / "quickstart.yaml",
        [f"data.root={root}", f"clip.cache_dir={cache}", f"clip.domain_source={source}"],
    )


def test_oracle_labels_feed_exactly_the_labelled_domains_prompt_embedding(synthetic_root, tmp_path):
    split = synthetic_root / "test"
    guessed, cache = domain_text_features(oracle_config(synthetic_root, tmp_path, "clip"), split)
    # Labels that contradict CLIP on every image: each feature must change to the other prompt's.
    flipped = {n: DOMAINS[1 - DOMAINS.index(d)] for n, d in cache.domains.items()}
    write_domain_labels(labels_file(split), flipped)
    oracle, _ = domain_text_features(oracle_config(synthetic_root, tmp_path, "labels"), split)
    assert sorted(oracle) == sorted(guessed) == sorted(flipped)
    for name, domain in flipped.items():
        assert oracle[name].shape == (1, cache.prompt_emb.shape[1])
        assert torch.equal(oracle[name][0], cache.prompt_emb[DOMAINS.index(domain)])
        assert not torch.equal(oracle[name], guessed[name])


def test_oracle_labels_fail_before_clip_runs_when_the_file_is_missing(synthetic_root, tmp_path):
    (synthetic_root / "test" / "domains.csv").unlink()
    cfg = oracle_config(synthetic_root, tmp_path / "cache", "labels")
    with pytest.raises(DataError, match=r"test/domains\.csv"):
        domain_text_features(cfg, synthetic_root / "test")
    assert not (tmp_path / "cache").exists()


def test_a_run_trained_on_oracle_domains_feeds_them_to_the_network_in_test_py(
    data_root, tmp_path, monkeypatch
):
    root = shutil.copytree(data_root, tmp_path / "data")
    args = train_args(root, tmp_path, "train.epochs=1", exp="oracle")
    _, cache = domain_text_features(load_config(args[0], args[1:]), root / "test")
    flipped = {n: DOMAINS[1 - DOMAINS.index(d)] for n, d in cache.domains.items()}
    write_domain_labels(labels_file(root / "test"), flipped)
    train.main([*args, "clip.domain_source=labels"])

    fed = []
    real = evaluate.inference_network

    def spy(net, cfg, device):
        run = real(net, cfg, device)
        return lambda hazy, text: fed.append(text.clone()) or run(hazy, text)

    monkeypatch.setattr(evaluate, "inference_network", spy)
    out = tmp_path / "result"
    summary = evaluate.main(["--ckpt", str(tmp_path / "oracle" / "last.pth"), "--out", str(out)])
    names = sorted(flipped)  # test.py evaluates in file name order
    assert len(fed) == len(names)
    for name, text in zip(names, fed, strict=True):
        assert torch.equal(text[0], cache.prompt_emb[DOMAINS.index(flipped[name])].reshape(1, -1))
    # CLIP guessed the opposite of every label.
    assert summary["clip_domains"]["accuracy"] == 0.0
    assert json.loads((out / "metrics.json").read_text())["config"]["clip"]["domain_source"] == (
        "labels"
    )
    with open(out / "per_image.csv") as f:
        assert {r["name"]: r["true_domain"] for r in csv.DictReader(f)} == flipped

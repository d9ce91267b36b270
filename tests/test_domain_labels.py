"""Domain labels files: strict reading, CLIP accuracy against them, the oracle features."""

import pytest

from utils.domain_labels import (
    domain_confusion,
    labels_file,
    read_domain_labels,
    write_domain_labels,
)

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
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        read_domain_labels(tmp_path / "missing.csv", DOMAINS, ["a.png"])


def test_synthetic_data_comes_with_its_true_domains(synthetic_root):
    for split in ("train", "test"):
        names = sorted(p.name for p in (synthetic_root / split / "hazy").iterdir())
        labels = read_domain_labels(synthetic_root / split / "domains.csv", DOMAINS, names)
        assert sorted(labels) == names

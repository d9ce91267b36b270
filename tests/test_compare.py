"""compare.py on hand-made result folders (and once on test.py's own output)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from utils.comparison import Bootstrap, ComparisonError, paired_interval

from .helpers import load_entry

compare, evaluate = load_entry("compare"), load_entry("test")

N = 30
NAMES = [f"{i:04d}.png" for i in range(N)]
TRUE = ["indoor" if i % 3 else "outdoor" for i in range(N)]
RNG = np.random.default_rng(7)
BASE_PSNR = RNG.uniform(20, 30, N)
BASE_SSIM = RNG.uniform(0.85, 0.95, N)
HAZY_PSNR = RNG.uniform(10, 16, N)


def write_result(
    folder: Path,
    psnr: np.ndarray = BASE_PSNR,
    ssim: np.ndarray = BASE_SSIM,
    names: list[str] = NAMES,
    hazy: np.ndarray = HAZY_PSNR,
    predicted: list[str] | None = None,
    true: list[str] | None = TRUE,
    metrics: dict | None = None,
) -> Path:
    """A result folder as test.py writes it: per_image.csv and (optionally) metrics.json."""
    folder.mkdir(parents=True)
    with open(folder / "per_image.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "domain", "psnr", "ssim", "hazy_psnr", "hazy_ssim", "true_domain"])
        for i, name in enumerate(names):
            pred = predicted[i] if predicted else ""
            w.writerow([name, pred, psnr[i], ssim[i], hazy[i], 0.6, true[i] if true else ""])
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def run_compare(tmp_path: Path, *folders: Path, extra: tuple[str, ...] = ()) -> dict:
    return compare.main([*map(str, folders), "--out", str(tmp_path / "cmp"), *extra])


def differences(report: dict, run: str) -> dict[str, dict]:
    return {d["domain"]: d for d in report["differences"] if d["run"] == run}


def test_a_run_compared_with_itself_gives_zero_with_a_zero_width_interval(tmp_path, capsys):
    a = write_result(tmp_path / "results" / "a_best" / "set-test")
    b = shutil.copytree(a, tmp_path / "results" / "copy_best" / "set-test")
    report = run_compare(tmp_path, a, b)
    rows = differences(report, "copy_best")
    assert set(rows) == {"all", "indoor", "outdoor"}
    for row in rows.values():
        for m in ("psnr", "ssim"):
            assert row[f"d_{m}"] == row[f"d_{m}_low"] == row[f"d_{m}_high"] == 0.0
    assert "| copy_best | all | 30 | +0.00 | [+0.00, +0.00] | +0.0000 |" in capsys.readouterr().out


def test_a_tiny_difference_is_never_printed_as_zero(tmp_path, capsys):
    a = write_result(tmp_path / "a")
    b = write_result(tmp_path / "b", BASE_PSNR + 0.001)
    run_compare(tmp_path, a, b)
    assert "| b | all | 30 | +0.001 | [+0.001, +0.001] | +0.0000 | [+0.0000, +0.0000] |" in (
        capsys.readouterr().out
    )


def test_a_known_margin_lies_inside_the_interval(tmp_path):
    noise = RNG.normal(0, 0.3, N)
    noise -= noise.mean()  # the true mean difference is exactly the margin
    better_psnr, better_ssim = BASE_PSNR + 0.5 + noise, BASE_SSIM + 0.01 + noise / 100
    a = write_result(tmp_path / "a")
    b = write_result(tmp_path / "b", better_psnr, better_ssim)
    row = differences(run_compare(tmp_path, a, b), "b")["all"]
    assert row["d_psnr"] == pytest.approx(0.5)
    assert row["d_psnr_low"] < 0.5 < row["d_psnr_high"]
    assert row["d_psnr_high"] - row["d_psnr_low"] < 0.5  # informative: excludes 0
    assert row["d_ssim_low"] < 0.01 < row["d_ssim_high"]
    assert row["d_psnr_method"] == "BCa"


def test_paired_intervals_are_reproducible_and_the_seed_is_used():
    run, base = BASE_PSNR + RNG.normal(0.2, 1.0, N), BASE_PSNR
    first = paired_interval(run, base, Bootstrap(seed=0))
    assert paired_interval(run, base, Bootstrap(seed=0)) == first
    assert paired_interval(run, base, Bootstrap(seed=1)) != first
    wider = paired_interval(run, base, Bootstrap(confidence=0.99, seed=0))
    assert wider.low < first.low < first.high < wider.high


def test_results_that_share_no_image_are_refused_naming_both_folders(tmp_path):
    a = write_result(tmp_path / "a")
    b = write_result(tmp_path / "b", names=[f"other_{n}" for n in NAMES])
    with pytest.raises(ComparisonError, match=rf"{a} and {b} share no image"):
        run_compare(tmp_path, a, b)


def test_results_of_different_data_are_refused_naming_both_folders(tmp_path):
    a = write_result(tmp_path / "a")
    b = write_result(tmp_path / "b", hazy=HAZY_PSNR + np.where(np.arange(N) == 4, 2.0, 0.0))
    with pytest.raises(ComparisonError, match=rf"{a} and {b} were tested on different data.*0004"):
        run_compare(tmp_path, a, b)
    assert not (tmp_path / "cmp").exists()


def test_partly_shared_images_are_compared_on_the_common_ones(tmp_path, capsys):
    a = write_result(tmp_path / "a")
    b = write_result(tmp_path / "b", BASE_PSNR[:20] + 1, names=NAMES[:20], true=TRUE[:20])
    report = run_compare(tmp_path, a, b)
    assert report["images"] == 20
    assert differences(report, "b")["all"]["d_psnr"] == pytest.approx(1.0)
    out = capsys.readouterr().out
    assert "on 20 common images" in out and "Images left out (not in every run): a 10" in out


def test_runs_repeated_with_other_seeds_are_grouped_with_their_spread(tmp_path, capsys):
    def metrics(seed: int, model: str, exp: str) -> dict:
        config = {"exp_name": exp, "model": {"name": model}, "train": {"seed": seed, "lr": 1e-4}}
        return {"checkpoint": f"{tmp_path}/runs/{exp}/best.pth", "config": config}

    a = write_result(tmp_path / "s0", metrics=metrics(0, "mixcl-t", "q"))
    b = write_result(tmp_path / "s1", BASE_PSNR + 0.3, metrics=metrics(1, "mixcl-t", "q-seed1"))
    c = write_result(tmp_path / "s2", BASE_PSNR + 0.1, metrics=metrics(2, "mixcl-t", "q-seed2"))
    other = write_result(
        tmp_path / "plain", BASE_PSNR - 1, metrics=metrics(0, "mixdehazenet-t", "p")
    )
    report = run_compare(tmp_path, a, b, other, c)
    (group,) = report["seed_groups"]
    assert group["runs"] == ["s0", "s1", "s2"] and group["seeds"] == [0, 1, 2]
    assert group["psnr_mean"] == pytest.approx(BASE_PSNR.mean() + 0.4 / 3)
    assert group["psnr_sd"] == pytest.approx(np.std([0.0, 0.3, 0.1], ddof=1))
    sd = {d["run"]: d.get("seed_sd_psnr") for d in report["differences"] if d["domain"] == "all"}
    assert sd == {
        "s1": pytest.approx(group["psnr_sd"]),
        "s2": pytest.approx(group["psnr_sd"]),
        "plain": None,
    }
    assert "| q (best.pth) | 0, 1, 2 |" in capsys.readouterr().out


def test_repeats_are_grouped_by_the_weights_they_read_not_by_the_path(tmp_path):
    clip = tmp_path / "ViT-B-32.pt"
    clip.write_bytes(b"CLIP weights")
    moved = tmp_path / "elsewhere" / "ViT-B-32.pt"
    moved.parent.mkdir()
    moved.write_bytes(clip.read_bytes())

    def metrics(seed: int, pretrained: str | None, workers: int = 16) -> dict:
        config = {
            "exp_name": "q",
            "train": {"seed": seed},
            "clip": {"pretrained": pretrained},
            "data": {"num_workers": workers},
        }
        return {"checkpoint": f"{tmp_path}/runs/q-seed{seed}/best.pth", "config": config}

    a = write_result(tmp_path / "s0", metrics=metrics(0, str(clip)))
    b = write_result(tmp_path / "s1", BASE_PSNR + 0.3, metrics=metrics(1, str(moved), 4))
    random = write_result(tmp_path / "s2", BASE_PSNR + 0.1, metrics=metrics(2, None))
    report = run_compare(tmp_path, a, b, random)
    (group,) = report["seed_groups"]
    assert group["runs"] == ["s0", "s1"]


def test_clip_accuracy_is_shown_against_the_true_domains(tmp_path, capsys):
    predicted = ["indoor"] * N  # right on the 20 indoor images, wrong on the 10 outdoor ones
    a = write_result(tmp_path / "a", predicted=predicted)
    b = write_result(tmp_path / "b", predicted=TRUE)
    report = run_compare(tmp_path, a, b)
    clip = {r["label"]: r["clip_domains"] for r in report["runs"]}
    assert clip["a"]["accuracy"] == pytest.approx(20 / 30)
    assert clip["a"]["confusion"] == {
        "indoor": {"indoor": 20, "outdoor": 0},
        "outdoor": {"indoor": 10, "outdoor": 0},
    }
    assert clip["b"]["accuracy"] == 1.0
    assert "| a | 66.7% | 20 | 0 | 10 | 0 |" in capsys.readouterr().out
    assert report["domain_counts"] == {"indoor": 20, "outdoor": 10}


def test_without_true_domains_the_baselines_clip_domains_split_the_rows(tmp_path):
    a = write_result(tmp_path / "a", true=None)
    b = write_result(tmp_path / "b", true=None, predicted=TRUE)
    report = run_compare(tmp_path, a, b)
    assert report["domain_source"] == "clip:b"
    assert all(r["clip_domains"] is None for r in report["runs"])


def test_folders_that_are_not_results_are_refused_with_what_to_pass(tmp_path):
    a = write_result(tmp_path / "results" / "a_best" / "set-test")
    with pytest.raises(ComparisonError, match=r"a_best: no per_image\.csv.*a_best/set-test"):
        run_compare(tmp_path, a.parent, a)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "per_image.csv").write_text("name,psnr\na.png,20\n")
    with pytest.raises(ComparisonError, match=r"bad/per_image\.csv: no column domain, hazy_psnr"):
        run_compare(tmp_path, a, bad)
    shutil.copy(a / "per_image.csv", bad / "per_image.csv")
    with open(bad / "per_image.csv", "a") as f:
        f.write("x.png,,twenty,0.9,12,0.6,indoor\n")
    with pytest.raises(ComparisonError, match=r"line 32, column psnr: 'twenty'"):
        run_compare(tmp_path, a, bad)
    with pytest.raises(ComparisonError, match="more than once"):
        run_compare(tmp_path, a, a)


def test_outputs_are_written_and_an_earlier_comparisons_files_replaced(tmp_path):
    a, b = write_result(tmp_path / "a"), write_result(tmp_path / "b", BASE_PSNR + 1)
    c = write_result(tmp_path / "c", BASE_PSNR - 1)
    run_compare(tmp_path, a, b, c)
    out = tmp_path / "cmp"
    first = sorted(p.name for p in out.iterdir())
    assert first == [
        "compare.json",
        "differences.csv",
        "psnr_diff_1_b.png",
        "psnr_diff_2_c.png",
        "report.md",
        "runs.csv",
    ]
    with open(out / "differences.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["domain"]) for r in rows][:3] == [
        ("b", "all"),
        ("b", "indoor"),
        ("b", "outdoor"),
    ]
    assert float(rows[0]["d_psnr"]) == pytest.approx(1.0)
    run_compare(tmp_path, a, b)
    assert "psnr_diff_2_c.png" not in {p.name for p in out.iterdir()}
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ComparisonError, match="mine is not empty"):
        compare.main([str(a), str(b), "--out", str(tmp_path / "mine")])


def test_validation_curves_come_from_the_runs_tensorboard_events(tmp_path):
    run_dir = tmp_path / "runs" / "q"
    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        for epoch, value in ((5, 18.0), (10, 20.5)):
            writer.add_scalar("val/psnr", value, epoch)
    metrics = {"checkpoint": str(run_dir / "best.pth")}
    a = write_result(tmp_path / "a", metrics=metrics)
    b = write_result(tmp_path / "b", metrics={"checkpoint": str(tmp_path / "gone" / "best.pth")})
    report = run_compare(tmp_path, a, b)
    assert report["validation_psnr"] == {"a": [[5, 18.0], [10, 20.5]]}
    assert report["notes"] == [f"b: no TensorBoard events in {tmp_path / 'gone' / 'tensorboard'}"]
    assert (tmp_path / "cmp" / "val_psnr.png").is_file()


def test_compare_reads_what_test_py_writes(trained, tmp_path):
    best = tmp_path / "results" / "run_best" / "synthetic-test"
    evaluate.main(["--ckpt", str(trained / "best.pth"), "--out", str(best)])
    again = shutil.copytree(best, tmp_path / "results" / "again_best" / "synthetic-test")
    report = run_compare(tmp_path, best, again)
    assert [r["label"] for r in report["runs"]] == ["run_best", "again_best"]
    assert report["images"] == 3 and report["domain_source"] == "true"
    assert len(report["validation_psnr"]["run_best"]) == 2  # the fixture's two validations
    assert all(r["clip_domains"] is not None for r in report["runs"])
    assert report["seed_groups"] == []  # the same run twice is no seed repeat


def write_fade_result(folder: Path, fade: np.ndarray, hazy_fade: np.ndarray) -> Path:
    """A result of a split without ground truth: FADE of the output and of the hazy input."""
    folder.mkdir(parents=True)
    with open(folder / "per_image.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "domain", "fade", "hazy_fade", "true_domain"])
        for i, name in enumerate(NAMES):
            w.writerow([name, "", fade[i], hazy_fade[i], TRUE[i]])
    return folder


def test_no_reference_results_are_compared_with_lower_fade_better(tmp_path, capsys):
    hazy = RNG.uniform(1.5, 3.0, N)
    base = hazy * 0.5
    a = write_fade_result(tmp_path / "a", base, hazy)
    b = write_fade_result(tmp_path / "b", base - 0.1 + RNG.normal(0, 0.02, N), hazy)
    report = run_compare(tmp_path, a, b)
    assert report["metrics"] == {"fade": "lower"}
    row = differences(report, "b")["all"]
    assert row["d_fade"] == pytest.approx(-0.1, abs=0.02)
    assert row["d_fade_low"] < row["d_fade"] < row["d_fade_high"] < 0
    assert report["hazy"]["fade"] == pytest.approx(hazy.mean())
    out = capsys.readouterr().out
    assert "Better: FADE lower." in out and "| run | FADE | FADE indoor | FADE outdoor |" in out
    assert (tmp_path / "cmp" / "fade_diff_1_b.png").is_file()
    c = write_fade_result(tmp_path / "c", base, hazy * 1.01)
    with pytest.raises(ComparisonError, match="different data: the hazy input's FADE differs"):
        run_compare(tmp_path, a, c)
    with pytest.raises(ComparisonError, match="share no metric"):
        run_compare(tmp_path, a, write_result(tmp_path / "paired"))

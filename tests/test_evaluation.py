"""test.py's results folder and scoring: an evaluation that loses nothing and replaces nothing of
the user's, the hazy inputs' scores cached, the same numbers wherever a metric is computed."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from datasets.synthetic import make_synthetic_dataset
from utils import scoring
from utils.errors import DataError, OutputError, OutputExistsError
from utils.evaluation import PROGRESS, RowLog, read_rows
from utils.files import unescape_name
from utils.image import write_rgb
from utils.quality import METRICS

from .helpers import REPO, bomb_png, load_entry
from .test_quality import needs

evaluate = load_entry("test")


def run_args(trained: Path, out: Path, *extra: str, ckpt: str = "best.pth") -> list[str]:
    return ["--ckpt", str(trained / ckpt), "--out", str(out), *extra]


def results_of(out: Path) -> dict[str, bytes]:
    """Every file under `out`, by relative path: what a user finds there."""
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def network_calls(monkeypatch, fail_at: int | None = None) -> list[int]:
    """Count test.py's network calls (one per image); raise at call `fail_at`, as a crash
    (or an out-of-memory) mid-split would."""
    calls: list[int] = []
    real = evaluate.inference_network

    def counted(*args, **kwargs):
        run = real(*args, **kwargs)

        def call(hazy, text):
            calls.append(len(calls) + 1)
            if len(calls) == fail_at:
                raise RuntimeError("injected crash")
            return run(hazy, text)

        return call

    monkeypatch.setattr(evaluate, "inference_network", counted)
    return calls


def test_a_crashed_evaluation_continues_where_it_stopped_and_ends_as_an_uninterrupted_one(
    trained, tmp_path, monkeypatch
):
    reference = tmp_path / "reference"
    evaluate.main(run_args(trained, reference, "--save-images"))
    out = tmp_path / "result"
    with monkeypatch.context() as m:
        network_calls(m, fail_at=3)
        with pytest.raises(RuntimeError, match="injected crash"):
            evaluate.main(run_args(trained, out, "--save-images"))
    assert len(read_rows(out / PROGRESS / "rows.0.jsonl")[0]) == 2  # flushed as scored
    assert not (out / "per_image.csv").exists()
    with pytest.raises(OutputExistsError, match=r"unfinished evaluation that differs in metrics"):
        evaluate.main(run_args(trained, out, "--metrics", "psnr"))  # never mixed in
    with pytest.raises(OutputExistsError, match=r"differs in config key precision\.eval"):
        evaluate.main(run_args(trained, out, "--save-images", "precision.eval=bf16"))
    calls = network_calls(monkeypatch)
    other_cache = f"clip.cache_dir={tmp_path / 'clip'}"  # where files are cached changes nothing
    evaluate.main(run_args(trained, out, "--save-images", other_cache))
    assert len(calls) == 1  # only the image not scored yet
    got, want = results_of(out), results_of(reference)
    tables = ("metrics.json", "manifest.json")  # metrics.json says which command wrote it
    assert {k: v for k, v in got.items() if k not in tables} == {
        k: v for k, v in want.items() if k not in tables
    }
    got, want = (json.loads(r["metrics.json"]) for r in (got, want))
    assert (got.pop("overrides"), want.pop("overrides")) == ([other_cache], [])
    for summary in (got, want):
        summary["config"]["clip"].pop("cache_dir")
    assert got == want


def test_overwrite_keeps_the_users_files_and_the_earlier_results_until_new_ones_are_complete(
    trained, tmp_path, monkeypatch
):
    out = tmp_path / "result"
    mine = {"images/holiday/IMG_0001.jpg": b"my photo", "notes.txt": b"my notes"}
    for name, data in mine.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    evaluate.main(run_args(trained, out, "--save-images"))  # the user's images/ is no result
    earlier = results_of(out)
    assert len([n for n in earlier if n.startswith("images/0")]) == 3
    with monkeypatch.context() as m:
        network_calls(m, fail_at=2)
        with pytest.raises(RuntimeError, match="injected crash"):
            evaluate.main(run_args(trained, out, "--overwrite", "--metrics", "psnr"))
    assert {k: v for k, v in results_of(out).items() if PROGRESS not in k} == earlier

    summary = evaluate.main(run_args(trained, out, "--overwrite"))  # discards that progress
    assert summary["count"] == 3 and "ssim" in summary
    left = results_of(out)
    assert {n: left[n] for n in mine} == mine
    assert not [n for n in left if n.startswith("images/0")]  # test.py's own images removed
    assert sorted(n for n in left if n not in mine) == [
        "manifest.json",
        "metrics.json",
        "per_image.csv",
    ]


def test_no_result_is_written_through_a_link(trained, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "notes.txt").write_text("my notes")
    out = tmp_path / "result"
    out.mkdir()
    (out / "metrics.json").symlink_to(outside / "victim.json")  # dangling
    (out / "per_image.csv").symlink_to(outside / "notes.txt")
    with pytest.raises(OutputExistsError, match=r"metrics\.json"):
        evaluate.main(run_args(trained, out))
    evaluate.main(run_args(trained, out, "--overwrite"))
    assert not os.path.lexists(outside / "victim.json")
    assert (outside / "notes.txt").read_text() == "my notes"
    assert not (out / "metrics.json").is_symlink() and not (out / "per_image.csv").is_symlink()

    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "images").symlink_to(outside)
    with pytest.raises(OutputError, match=r"images is a link"):
        evaluate.main(run_args(trained, linked, "--save-images"))
    assert sorted(p.name for p in outside.iterdir()) == ["notes.txt"]


def test_file_names_that_are_not_utf8_are_written_escaped(trained, data_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data_root / "test", root / "test", ignore=shutil.ignore_patterns("*.csv"))
    odd = os.fsdecode(b"caf\xe9.png")
    for sub in ("GT", "hazy"):
        os.rename(root / "test" / sub / "0001.png", root / "test" / sub / odd)
    out = tmp_path / "result"
    cache = f"clip.cache_dir={tmp_path / 'cache'}"
    summary = evaluate.main(run_args(trained, out, "--data-dir", str(root), "--save-images", cache))
    assert summary["count"] == 3
    with open(out / "per_image.csv", encoding="utf-8", newline="") as f:
        names = [row["name"] for row in csv.DictReader(f)]
    assert names == ["0000.png", "0002.png", "caf\\xe9.png"]
    assert [unescape_name(n) for n in names] == ["0000.png", "0002.png", odd]
    assert (out / "images" / odd).is_file()


def test_an_image_too_large_to_dehaze_whole_is_refused_by_its_header(
    trained, tmp_path, monkeypatch
):
    root = tmp_path / "data"
    for sub in ("GT", "hazy"):
        (root / "test" / sub).mkdir(parents=True)
        path = bomb_png(root / "test" / sub / "big.png", 6000, 5000)
        path.write_bytes(path.read_bytes()[:60])  # the header only: decoding it would fail
    monkeypatch.setattr("predict.available_memory", lambda device="cpu": 8 * 2**30)
    with pytest.raises(DataError, match=r"big\.png \(6000x5000\).*too large|too large.*big\.png"):
        evaluate.main(run_args(trained, tmp_path / "result", "--data-dir", str(root)))


def counting(monkeypatch, metric: str) -> list[float]:
    """The values metric `metric` computes, in order, as test.py loads it."""
    values: list[float] = []
    real = METRICS[metric]

    def build(paths, device):
        scorer = real.build(paths, device)
        return lambda image, ref: values.append(scorer(image, ref)) or values[-1]

    monkeypatch.setitem(METRICS, metric, dataclasses.replace(real, build=build))
    return values


def test_a_second_checkpoint_scores_no_hazy_input_again(trained, data_root, tmp_path, monkeypatch):
    needs("skimage")
    cache = ["--score-cache", str(tmp_path / "scores"), "--metrics", "ciede2000,psnr"]
    cache += ["--metric-workers", "0"]  # counted in this process
    values, psnr = counting(monkeypatch, "ciede2000"), counting(monkeypatch, "psnr")
    first = evaluate.main(run_args(trained, tmp_path / "a", *cache))
    assert len(values) == 6  # the outputs' and the hazy inputs'
    second = evaluate.main(run_args(trained, tmp_path / "b", *cache, ckpt="last.1.pth"))
    assert len(values) == 9  # the outputs' only
    assert second["hazy_ciede2000"] == first["hazy_ciede2000"]
    assert len(psnr) == 12  # this project's metrics are not cached: their code has no version

    root = tmp_path / "data"
    shutil.copytree(data_root / "test", root / "test")
    write_rgb(root / "test" / "hazy" / "0001.png", np.zeros((40, 56, 3), np.uint8))
    clip = f"clip.cache_dir={tmp_path / 'clip'}"
    evaluate.main(run_args(trained, tmp_path / "c", *cache, "--data-dir", str(root), clip))
    assert len(values) == 13  # a changed file is scored again, the others are not
    monkeypatch.setattr(scoring.importlib.metadata, "version", lambda package: "99.0")
    evaluate.main(run_args(trained, tmp_path / "d", *cache))
    assert len(values) == 19  # so is every file with another version of the library


def test_the_metrics_computed_beside_the_network_equal_those_computed_in_line(trained, tmp_path):
    needs("skimage")  # (FADE in a worker: test_quality's FADE test)
    metrics = ["--metrics", "psnr,ciede2000", "--score-cache", str(tmp_path / "none")]
    evaluate.main(run_args(trained, tmp_path / "a", *metrics, "--metric-workers", "0"))
    shutil.rmtree(tmp_path / "none")
    evaluate.main(run_args(trained, tmp_path / "b", *metrics, "--metric-workers", "1"))
    assert results_of(tmp_path / "a") == results_of(tmp_path / "b")


def test_a_progress_file_cut_off_mid_row_keeps_its_complete_rows(tmp_path):
    path = tmp_path / "rows.0.jsonl"
    path.write_bytes(b'{"name": "a.png", "psnr": 20.5}\n{"name": "b.png", "ps')
    assert read_rows(path) == ([{"name": "a.png", "psnr": 20.5}], 32)
    log = RowLog(path)
    log.append({"name": "b.png", "psnr": float("inf")})
    log.close()
    rows = read_rows(path)[0]
    assert [r["name"] for r in rows] == ["a.png", "b.png"] and rows[1]["psnr"] == float("inf")


def _session(sid: int) -> list[str]:
    """The live processes of session `sid` (zombies left out)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, _, session = stat.read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue
        if int(session) == sid and state != "Z":
            found.append(stat.parent.name)
    return found


def _wait_for(condition, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.faults
def test_an_evaluation_killed_mid_split_continues_to_the_uninterrupted_results(trained, tmp_path):
    needs("skimage")  # CIEDE2000: scored in a worker process, which must end with test.py
    root = make_synthetic_dataset(tmp_path / "data", n_train=1, n_test=40, size=(64, 64), seed=1)
    common = ["--data-dir", str(root), "--metrics", "psnr,ciede2000", "--metric-workers", "1"]
    common += [f"clip.cache_dir={tmp_path / 'clip'}", "speed.autotune=false"]
    reference = tmp_path / "reference"
    evaluate.main(run_args(trained, reference, *common, "--score-cache", str(tmp_path / "a")))

    out = tmp_path / "result"
    argv = run_args(trained, out, *common, "--score-cache", str(tmp_path / "b"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(
        [sys.executable, "test.py", *argv], cwd=REPO, env=env, start_new_session=True
    )
    rows = out / PROGRESS / "rows.0.jsonl"
    _wait_for(lambda: rows.exists() and read_rows(rows)[0], "the first scored rows", 120)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < len(read_rows(rows)[0]) < 40  # killed mid-split
    _wait_for(lambda: not _session(proc.pid), "test.py's worker processes to end", 30)

    evaluate.main(argv)
    assert results_of(out) == results_of(reference)


@pytest.mark.faults
def test_torchrun_splits_the_images_and_writes_what_one_process_writes(
    trained, data_root, tmp_path
):
    ckpt = ["--ckpt", str(trained / "best.pth"), "speed.autotune=false"]
    ckpt += [f"clip.cache_dir={tmp_path / 'clip'}", f"speed.cache_dir={tmp_path / 'speed'}"]
    evaluate.main([*ckpt, "--out", str(tmp_path / "one"), "--save-images"])
    photos = data_root / "test" / "hazy"
    load_entry("predict").main([*ckpt, str(photos), "--out", str(tmp_path / "one_png")])

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for cmd, said_once in (
        (["test.py", *ckpt, "--out", str(tmp_path / "two"), "--save-images"], "results in"),
        (["predict.py", *ckpt, str(photos), "--out", str(tmp_path / "two_png")], "wrote 3"),
    ):
        proc = subprocess.run(
            [*torchrun, *cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count(said_once) == 1  # by rank 0, of every rank's images
    assert results_of(tmp_path / "two") == results_of(tmp_path / "one")
    assert results_of(tmp_path / "two_png") == results_of(tmp_path / "one_png")

"""The GPU check (bench/gpu_check.sh) rehearsed on the CPU, so that it cannot rot between GPU
loans. The end-to-end step starts nine Python processes (half a minute on 2 cores): it runs
with the slow tests (`-m e2e`, the second step of .ci/run). The ddp step only prints its help
in a rehearsal; tests/test_distributed.py runs its check on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import gpu_check
from bench.gpu_check import E2E_OVERRIDES, QUICKSTART
from utils.config import load_config

from .helpers import REPO, load_entry

STEPS = ("env", "attention", "inference", "train", "auto", "data", "checkpoint", "pytest")


def test_rehearsal_runs_every_step_and_reports_in_one_json(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", str(out), "--rehearse", "--steps", ",".join(STEPS)],
        cwd=REPO,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    # What comes back from the GPU machine: at most 8 files, no deeper than 2 folders.
    assert sorted(p.name for p in out.rglob("*")) == [
        "gpu_check.json",
        "gpu_check.log",
        "pytest.xml",
    ]
    payload = json.loads((out / "gpu_check.json").read_text())
    status = {s["step"]: s["status"] for s in payload["steps"]}
    assert {s for s in STEPS if status[s] == "ok"} == set(STEPS)
    assert "e2e" not in status and "ddp" not in status
    verdicts = payload["verdicts"]
    assert verdicts["attention_fused"] is True and not verdicts["failed_steps"]
    assert set(verdicts["training"]) == {"optimised"}  # no compiled step in the rehearsal
    auto = verdicts["auto"]
    assert set(auto["train"]["choice"]) == {"channels_last", "fused_dwconv"}
    assert set(auto["predict"]["choice"]) == {"channels_last", "strips", "predict_precision"}
    assert auto["train_step_over_best"] > 0
    assert "none" in verdicts["inference"]["bytes_per_pixel"]
    assert set(verdicts["data"]["pairs_per_s_by_workers"]) == {"0", "1"}
    assert payload["pytest"]["tests"] > 0 and payload["pytest"]["failures"] == 0
    assert payload["env"]["collective"] == {"backend": "gloo", "ok": True}
    assert payload["checkpoint"]["save_s"] > 0 and payload["checkpoint"]["load_s"] > 0
    assert "GPU check summary" in (out / "gpu_check.log").read_text()


def test_a_failing_step_is_recorded_in_the_json_and_the_exit_status(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", str(out), "--rehearse", "--steps", "pytest"],
        cwd=REPO,
        env={**os.environ, "PYTHON": sys.executable, "PYTEST_ADDOPTS": "--no-such-option"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    payload = json.loads((out / "gpu_check.json").read_text())
    steps = [(s["step"], s["status"]) for s in payload["steps"] if s["step"] != "wheels"]
    assert steps == [("pytest", "failed")]  # wheels install first wherever .whl/ holds some
    assert payload["verdicts"]["failed_steps"] == ["pytest"]


@pytest.mark.parametrize("rehearse", [False, True])
def test_end_to_end_commands_parse(rehearse):
    """Every config key and flag the end-to-end step passes exists."""
    train = load_entry("train")
    args = train.parse_args([QUICKSTART, *E2E_OVERRIDES[rehearse], "--stop-after-epochs", "1"])
    assert args.stop_after_epochs == 1
    load_config(REPO / args.config, args.overrides)


@pytest.mark.e2e
def test_the_end_to_end_step_passes_on_the_cpu():
    """The quickstart through train.sh for part of its epochs, the same command continued with
    --resume, test.py on its best checkpoint and a torchrun run, in a scratch copy."""
    result = gpu_check.e2e(rehearse=True, timeout=600)
    assert result["ok"], json.dumps(result, indent=1)
    assert result["after_resume"]["epoch"] == 3  # train.epochs=2 and the extra epoch

"""The Python steps of bench/gpu_check.sh: the machine, the end-to-end run, and the summary.

    python -m bench.gpu_check env --device cuda --json env.json
    python -m bench.gpu_check e2e --json e2e.json [--rehearse]
    python -m bench.gpu_check summary --work DIR --json gpu_check.json

`env` records the machine and its packages and runs one collective (NCCL on CUDA, gloo on CPU)
in a single process. `e2e` copies the repository to a scratch folder and runs there, as a user
would: the quickstart through train.sh (AMP on CUDA) for part of its epochs, `--resume` to the
end, test.py, and the same training under torchrun with one process. `summary` merges every
step's JSON into one, checks the targets and prints what happened. torch is imported inside
the steps that need it, so that the summary runs in a moment even where torch is broken.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path
from typing import Any

from utils.config import DataConfig

REPO = Path(__file__).resolve().parents[1]
PACKAGES = (
    "torch",
    "torchvision",
    "open_clip_torch",
    "ftfy",
    "wcwidth",
    "pytorch-msssim",
    "timm",
    "numpy",
    "opencv-python-headless",
    "opencv-python",
    "tensorboard",
    "pyyaml",
    "pytest",
)
# What the scratch copy leaves out: version control, wheels, environments, earlier outputs.
NOT_COPIED = {".git", ".whl", ".venv", ".ci-venv", "data", "runs", "results", "cache"}
# The targets of the GPU check (docs/PERFORMANCE.md).
TRAIN_SPEEDUP_TARGET = 2.0
TRAIN_MEMORY_TARGET = 0.5
LARGE_FP16_BYTES_TARGET = 8e9
LARGE_SIZE = "3840x2160"
TRAIN_WORKERS = DataConfig.num_workers  # train.py's loader workers
ABSENT = "not in this tree"  # gpu_check.sh's note on a step whose script is missing


def write(path: str | Path, payload: Any) -> None:
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


# --- env -------------------------------------------------------------------------------------


def env(device_name: str) -> dict[str, Any]:
    """The machine, the packages, and one collective over a one-process group."""
    import torch
    import torch.distributed as dist

    from bench.common import machine_info

    info: dict[str, Any] = {"machine": machine_info(torch.get_num_threads())}
    info["packages"] = {}
    for name in PACKAGES:
        try:
            info["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info["packages"][name] = None
    info["python_on_path"] = shutil.which("python")
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"]
        info["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True).stdout.strip()
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA was asked for but torch sees no GPU")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(0)  # NCCL works on the current device
        info["nccl"] = str(torch.cuda.nccl.version())
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        t = torch.ones(4, device=device)
        dist.all_reduce(t)
        info["collective"] = {"backend": backend, "ok": bool((t == 1).all())}
    finally:
        dist.destroy_process_group()
    return info


# --- e2e -------------------------------------------------------------------------------------

QUICKSTART = "configs/quickstart.yaml"
# GPU: the quickstart as users run it, shortened; rehearsal: a tiny network on tiny data.
E2E_OVERRIDES = {
    False: ["train.epochs=4", "train.eval_freq=2"],
    True: [
        "train.epochs=2",
        "train.eval_freq=1",
        "model.depths=[1,1,1,1,1]",
        "data.patch_size=32",
        "data.num_workers=0",
        "data.synthetic.train=8",
        "data.synthetic.test=2",
        "train.batch_size=4",
    ],
}


def run_command(cmd: list[str], cwd: Path, env_vars: dict[str, str], timeout: float) -> dict:
    """Run `cmd` with its output in the log. Its process group (data-loader workers, torchrun's
    children) is killed when it times out, and when this process is told to stop."""
    print(f"\n$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env_vars, start_new_session=True)

    def stop(signum: int, frame: Any) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        sys.exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        rc: int | str = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = "timeout"
    finally:
        signal.signal(signal.SIGTERM, previous)
    return {"command": " ".join(cmd), "rc": rc, "seconds": time.perf_counter() - start}


def checkpoint_facts(path: Path) -> dict[str, Any]:
    """Epoch and gradient-scaler state of a checkpoint (the scale exists only with AMP)."""
    import torch

    if not path.is_file():
        return {"exists": False}
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {
        "exists": True,
        "epoch": ckpt["epoch"],
        "grad_scale": ckpt["scaler"].get("scale"),
        "trained_with_cuda_rng": "cuda" in ckpt["rng"][0],
    }


def e2e(rehearse: bool, timeout: float) -> dict[str, Any]:
    """The quickstart through train.sh, --resume, test.py and torchrun, in a scratch copy."""
    from train import total_epochs
    from utils.config import load_config

    overrides = [QUICKSTART, *E2E_OVERRIDES[rehearse]]
    epochs = total_epochs(load_config(REPO / QUICKSTART, overrides[1:]))  # extra epoch included
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "repo"
        shutil.copytree(
            REPO,
            scratch,
            ignore=lambda d, names: {
                n for n in names if n == "__pycache__" or (Path(d) == REPO and n in NOT_COPIED)
            },
        )
        # train.sh calls `python`: make it this interpreter (the GPU image may only have python3).
        shim = Path(tmp) / "bin"
        shim.mkdir()
        (shim / "python").write_text(f'#!/bin/sh\nexec "{python}" "$@"\n')
        (shim / "python").chmod(0o755)
        env_vars = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}"}
        commands = {
            "train.sh": ["bash", "train.sh", *overrides, "--stop-after-epochs", str(epochs // 2)],
            "resume": [python, "train.py", *overrides, "--resume"],
            "test.py": [python, "test.py", "--ckpt", "runs/quickstart/best.pth", "--out", "res"],
            "torchrun": [
                *(python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"),
                *("train.py", *overrides, "exp_name=quickstart-torchrun"),
            ],
        }
        result: dict[str, Any] = {"overrides": overrides, "commands": {}}
        for name, cmd in commands.items():
            result["commands"][name] = run_command(cmd, scratch, env_vars, timeout)
            if name == "train.sh":
                result["after_train_sh"] = checkpoint_facts(scratch / "runs/quickstart/last.pth")
        result["after_resume"] = checkpoint_facts(scratch / "runs/quickstart/last.pth")
        result["torchrun_run"] = checkpoint_facts(scratch / "runs/quickstart-torchrun/last.pth")
        metrics = scratch / "res" / "metrics.json"
        if metrics.is_file():
            m = json.loads(metrics.read_text())
            result["test"] = {k: m[k] for k in ("psnr", "ssim", "hazy_psnr", "hazy_ssim", "count")}
    # train.sh and --resume train with fp16 autocast and gradient scaling on CUDA only.
    amp = result["after_resume"].get("grad_scale") is not None
    result["amp"] = amp
    result["ok"] = (
        all(c["rc"] == 0 for c in result["commands"].values())
        and result["after_train_sh"].get("epoch") == epochs // 2
        and result["after_resume"].get("epoch") == epochs
        and result["torchrun_run"].get("epoch") == epochs
        and "test" in result
        and amp == cuda_available()
    )
    return result


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# --- summary ---------------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_steps(path: Path) -> list[dict[str, Any]]:
    """The step records gpu_check.sh wrote: name, status, exit code, seconds, note."""
    steps = []
    if path.is_file():
        for line in path.read_text().splitlines():
            name, status, rc, seconds, note = (line.split("\t") + [""] * 5)[:5]
            steps.append(
                {"step": name, "status": status, "rc": rc, "seconds": float(seconds or 0)}
                | ({"note": note} if note else {})
            )
    return steps


def pytest_counts(path: Path) -> dict[str, Any] | None:
    """Totals of a junit XML file, with the names of failed and skipped tests."""
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    counts: dict[str, Any] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors")}
    counts["skipped"] = int(suite.get("skipped", 0))
    counts["seconds"] = float(suite.get("time", 0))
    for kind in ("failure", "error", "skipped"):
        counts[f"{kind}_names"] = [
            f"{case.get('classname')}::{case.get('name')}"
            for case in suite.iter("testcase")
            if case.find(kind) is not None
        ]
    return counts


def train_targets(train: dict[str, Any]) -> dict[str, Any]:
    """Images/s and peak memory of ours (eager, compiled) against the authors' computation."""
    by_setting = {r["setting"]: r for r in train.get("results", [])}
    base = by_setting.get("straightforward")
    out: dict[str, Any] = {}
    for setting in ("optimised", "+compile"):
        r = by_setting.get(setting)
        if base is None or r is None:
            continue
        speedup = r["images_per_s"] / base["images_per_s"]
        memory = r["peak_mib"] / base["peak_mib"] if base.get("peak_mib") else None
        out[setting] = {
            "images_per_s": r["images_per_s"],
            "authors_images_per_s": base["images_per_s"],
            "speedup": speedup,
            "peak_mib": r["peak_mib"],
            "authors_peak_mib": base["peak_mib"],
            "memory_ratio": memory,
            "met": speedup >= TRAIN_SPEEDUP_TARGET
            and memory is not None
            and memory <= TRAIN_MEMORY_TARGET,
        }
    return out


def inference_targets(inference: dict[str, Any]) -> dict[str, Any]:
    """4K fp16 memory, and the bytes per pixel predict.py's estimate needs per precision."""
    results = inference.get("results", [])
    out: dict[str, Any] = {"bytes_per_pixel": {}}
    for r in results:
        if r["setting"] == "optimised" and "bytes_per_pixel" in r:
            best = out["bytes_per_pixel"].get(r["precision"], 0)
            out["bytes_per_pixel"][r["precision"]] = max(best, r["bytes_per_pixel"])
        if r["setting"] == "optimised" and r["size"] == LARGE_SIZE and r["precision"] == "fp16":
            if "peak_mib" in r:
                total = (r["peak_mib"] + r["baseline_mib"]) * 2**20
                out["large_fp16"] = {"total_bytes": total, "met": total <= LARGE_FP16_BYTES_TARGET}
            else:
                out["large_fp16"] = {"met": False, "why": r.get("oom") or r.get("skipped")}
    return out


def auto_verdict(auto: dict[str, Any]) -> dict[str, Any]:
    """What speed.*: auto picked in each phase, how long measuring took, and auto's training
    step over the faster of NCHW and channels-last."""
    out: dict[str, Any] = {
        phase: {
            "choice": r["choice"],
            "measuring_s": r["measuring_s"],
            "times": {str(t["setting"]): t.get("median_s", t.get("error")) for t in r["times"]},
        }
        for phase, r in auto.get("auto", {}).items()
    }
    if "auto_over_best" in auto:
        out["train_step_over_best"] = auto["auto_over_best"]
    return out


def data_verdict(data: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """Does the loader (at train.py's worker count) keep up with the training step?"""
    loader = {r["workers"]: r["pairs_per_s"] for r in data.get("results", [])}
    need = max((r["images_per_s"] for r in train.get("results", [])), default=None)
    at_default = loader.get(TRAIN_WORKERS)
    out: dict[str, Any] = {"pairs_per_s_by_workers": loader, "fastest_training_images_per_s": need}
    if at_default is not None and need is not None:
        out["gpu_waits_for_data"] = at_default < need
    return out


def summary(work: Path, junit: Path) -> dict[str, Any]:
    """Every step's results and the verdicts, as one JSON payload."""
    parts = {
        name: read_json(work / f"{name}.json")
        for name in (
            "env",
            "attention",
            "train",
            "auto",
            "inference",
            "data",
            "checkpoint",
            "e2e",
            "ddp",
        )
    }
    train, inference = parts["train"] or {}, parts["inference"] or {}
    steps = read_steps(work / "steps.tsv")
    verdicts: dict[str, Any] = {
        # Failed, timed out, or left out for lack of time; a step the tree lacks is only skipped.
        "failed_steps": [
            s["step"] for s in steps if s["status"] != "ok" and s.get("note") != ABSENT
        ],
        "skipped_steps": [s["step"] for s in steps if s.get("note") == ABSENT],
        "attention_fused": (parts["attention"] or {}).get("all_fused"),
        "training": train_targets(train),
        "auto": auto_verdict(parts["auto"] or {}),
        "inference": inference_targets(inference),
        "data": data_verdict(parts["data"] or {}, train),
        "end_to_end_ok": (parts["e2e"] or {}).get("ok"),
    }
    return {
        "steps": steps,
        "verdicts": verdicts,
        "pytest": pytest_counts(junit),
        **parts,
    }


def print_summary(payload: dict[str, Any]) -> None:
    print("\nGPU check summary")
    for s in payload["steps"]:
        note = f"  ({s['note']})" if "note" in s else ""
        print(f"  {s['step']:<10} {s['status']:<8} {s['seconds']:6.0f} s{note}")
    v = payload["verdicts"]
    print(f"  failed, timed out or out of time: {v['failed_steps'] or 'none'}")
    if v["skipped_steps"]:
        print(f"  not in this tree: {v['skipped_steps']}")
    print(f"  fused attention everywhere: {v['attention_fused']}")
    for setting, t in v["training"].items():
        memory = "?" if t["memory_ratio"] is None else f"{t['memory_ratio']:.2f}x"
        print(
            f"  training {setting}: {t['images_per_s']:.1f} images/s, {t['speedup']:.2f}x the "
            f"authors', peak memory {memory} theirs -> target met: {t['met']}"
        )
    auto = dict(v["auto"])
    over = auto.pop("train_step_over_best", None)
    for phase, a in auto.items():
        print(f"  speed auto, {phase}: {a['choice']} (measured in {a['measuring_s']:.1f} s)")
    if over is not None:
        print(f"  speed auto: its training step is {over:.3f}x the faster of NCHW, channels-last")
    large = v["inference"].get("large_fp16")
    if large:
        print(f"  {LARGE_SIZE} fp16 inference within 8 GB: {large}")
    print(f"  bytes per pixel (optimised): {v['inference']['bytes_per_pixel']}")
    if "gpu_waits_for_data" in v["data"]:
        print(f"  GPU waits for data at {TRAIN_WORKERS} workers: {v['data']['gpu_waits_for_data']}")
    if payload["checkpoint"] is not None:
        c = payload["checkpoint"]
        print(
            f"  checkpoint: {c['file_mib']:.1f} MiB written in {c['save_s']:.2f} s, "
            f"overhead {c.get('overhead_by_minutes', 0):.3%} at the default interval"
        )
    print(f"  end to end: {v['end_to_end_ok']}")
    if payload["ddp"] is not None:
        print(f"  ddp equality: {json.dumps(payload['ddp'])[:300]}")
    if payload["pytest"]:
        p = payload["pytest"]
        print(
            f"  pytest: {p['tests']} tests, {p['failures']} failed, {p['errors']} errors, "
            f"{p['skipped']} skipped"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_env = sub.add_parser("env", help="the machine, packages and a collective")
    p_env.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p_e2e = sub.add_parser("e2e", help="quickstart, resume, test.py and torchrun")
    p_e2e.add_argument("--rehearse", action="store_true", help="tiny network and data (CPU)")
    p_e2e.add_argument("--timeout", type=float, default=300, help="seconds per command")
    for p in (p_env, p_e2e):
        p.add_argument("--json", required=True)
    p_sum = sub.add_parser("summary", help="merge the steps' results")
    p_sum.add_argument("--work", required=True, help="folder with the steps' JSON files")
    p_sum.add_argument("--junit", required=True, help="the test suite's junit XML file")
    p_sum.add_argument("--json", required=True)
    args = parser.parse_args(argv)

    if args.command == "env":
        write(args.json, env(args.device))
        return 0
    if args.command == "e2e":
        result = e2e(args.rehearse, args.timeout)
        write(args.json, result)
        return 0 if result["ok"] else 1
    payload = summary(Path(args.work), Path(args.junit))
    write(args.json, payload)
    print_summary(payload)
    return 1 if payload["verdicts"]["failed_steps"] else 0


if __name__ == "__main__":
    sys.exit(main())

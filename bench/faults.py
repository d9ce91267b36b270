"""Inject the faults of a cluster job into real training runs and check what survives.

Every scenario trains the same tiny run (tiny MixCL network, tiny random CLIP, synthetic data)
under `torchrun --standalone --nproc_per_node=2` (gloo on the CPU, two processes on 127.0.0.1,
each with one loader worker that makes its crops and flips) with the command of every launch,
`--resume auto`, and a checkpoint after every optimiser step
(`train.checkpoint_every_steps=1`). Once the newest checkpoint is inside an epoch, a fault is
injected; the run must then end by itself (torchrun restarts the workers, which continue from
the newest valid checkpoint) or, where the launch ends, by relaunching the same command.

    sigkill   SIGKILL to the rank-1 worker (a crashed or OOM-killed process); --max-restarts=1
    sigterm   SIGTERM to the rank-1 worker (preemption, `kill`); --max-restarts=1
    sigusr1   SIGUSR1 to the rank-0 worker (SLURM's --signal=USR1@90); --max-restarts=1
    corrupt   SIGTERM to the torchrun agent (which stops both workers), then one bit of the
              newest checkpoint flipped, then the same command again (--max-restarts=0)

Each row: the workers' exit codes seen, the optimiser steps trained again (steps logged to
TensorBoard over all launches minus the run's steps), and whether the final weights equal those
of the uninterrupted run bit for bit.

Usage: python -m bench.faults [--scenarios sigkill sigterm ...] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from datasets.synthetic import make_synthetic_dataset
from utils.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
EPOCHS, TRAIN_PAIRS, BATCH = 4, 16, 4  # 4 steps an epoch (2 images a step on each process)
STEPS = EPOCHS * TRAIN_PAIRS // BATCH
INJECT_AT = 5  # the newest checkpoint's global step when the fault is injected: in epoch 2
SCENARIOS = ("sigkill", "sigterm", "sigusr1", "corrupt")
TIMEOUT = 600  # a launch on 2 busy cores; each wait ends as soon as its condition holds


def train_command(data: Path, out: Path, exp: str, max_restarts: int) -> list[str]:
    return [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
        f"--max-restarts={max_restarts}",
        "train.py",
        str(REPO / "configs" / "quickstart.yaml"),
        *(f"exp_name={exp}", f"output_dir={out}", f"data.root={data}", "data.patch_size=32"),
        *("data.num_workers=1", f"clip.cache_dir={out / 'cache'}", "model.depths=[1,1,1,1,1]"),
        *(f"train.batch_size={BATCH}", f"train.epochs={EPOCHS}", "train.extra_epoch=false"),
        *("train.checkpoint_every_steps=1", "--resume", "auto"),
    ]


def launch(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    with open(log, "a") as f:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)


def newest_step(last: Path) -> int:
    """The global step of last.pth, -1 while there is none. A path that save_atomic writes
    names a complete, verified checkpoint at every instant, so this reads it mid-run."""
    return load_checkpoint(last)["global_step"] if last.exists() else -1


def wait_for_step(last: Path, step: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while newest_step(last) < step:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{last} never reached step {step} (see the launch log)")
        time.sleep(0.02)


def worker_pid(agent: int, rank: int) -> int:
    """The pid of the worker of `rank` that the torchrun agent `agent` started."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if ppid == agent and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    raise RuntimeError(f"no worker of rank {rank} under torchrun {agent}")


def finish(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def steps_logged(run: Path) -> int:
    """Optimiser steps logged to TensorBoard over every launch (one event file each)."""
    total = 0
    for events_file in (run / "tensorboard").glob("events.out.tfevents.*"):
        events = EventAccumulator(str(events_file))
        events.Reload()
        if "train/loss" in events.Tags()["scalars"]:
            total += len(events.Scalars("train/loss"))
    return total


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def inject(scenario: str, proc: subprocess.Popen, last: Path) -> None:
    """The fault of `scenario`, once last.pth is inside an epoch."""
    wait_for_step(last, INJECT_AT, proc)
    if scenario == "corrupt":
        proc.send_signal(signal.SIGTERM)  # the agent stops its workers with SIGTERM
        return
    sig = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigusr1": signal.SIGUSR1}
    os.kill(worker_pid(proc.pid, 0 if scenario == "sigusr1" else 1), sig[scenario])


def run_scenario(scenario: str, data: Path, out: Path) -> dict[str, Any]:
    """Train with `scenario`'s fault injected; what was lost and whether the result is exact."""
    run, log = out / scenario, out / f"{scenario}.log"
    cmd = train_command(data, out, scenario, max_restarts=0 if scenario == "corrupt" else 1)
    proc = launch(cmd, log)
    inject(scenario, proc, run / "last.pth")
    codes = [finish(proc)]
    if scenario == "corrupt":
        flip_a_bit(run / "last.pth")
        codes.append(finish(launch(cmd, log)))
    text = log.read_text()
    return {
        "scenario": scenario,
        "exit_codes": codes,
        "fell_back": "does not match its digest" in text,
        "steps_trained_again": steps_logged(run) - STEPS,
        "finished": newest_step(run / "last.pth") == STEPS,
    }


def reference(data: Path, out: Path) -> dict[str, torch.Tensor]:
    log = out / "reference.log"
    code = finish(launch(train_command(data, out, "reference", 0), log))
    if code != 0:
        raise RuntimeError(f"the uninterrupted run failed: {log.read_text()[-3000:]}")
    return load_checkpoint(out / "reference" / "last.pth")["model"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def dataset(out: Path) -> Path:
    return make_synthetic_dataset(out / "data", n_train=TRAIN_PAIRS, n_test=2, size=(40, 48))


def checked_scenario(
    scenario: str, data: Path, out: Path, expected: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """run_scenario's row, with whether its final weights equal `expected` (the reference's)."""
    row = run_scenario(scenario, data, out)
    final = load_checkpoint(out / scenario / "last.pth")["model"]
    row["weights_equal_uninterrupted"] = same_weights(final, expected)
    return row


def run_all(scenarios: list[str], out: Path) -> list[dict[str, Any]]:
    data = dataset(out)
    expected = reference(data, out)
    rows = []
    for scenario in scenarios:
        rows.append(checked_scenario(scenario, data, out, expected))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| fault | exit codes | steps trained again | finished | final weights = uninterrupted |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {', '.join(map(str, r['exit_codes']))} | "
            f"{r['steps_trained_again']} | {'yes' if r['finished'] else 'no'} | "
            f"{'yes' if r['weights_equal_uninterrupted'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--keep", type=Path, help="run in this folder and keep it (logs, runs)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        rows = run_all(args.scenarios, out)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    ok = all(r["finished"] and r["weights_equal_uninterrupted"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

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
    node_lost two nodes of one process each (two torchrun agents with c10d rendezvous on
              127.0.0.1, --max-restarts=3, NODE_ENV); SIGKILL to the second node's
              agent and worker (a node that crashed or lost its network), then its command
              started again, once the first node has seen its workers fail
    host_lost the same two nodes; SIGKILL to the first, which hosts the rendezvous store:
              the second cannot go on, and both are started again (a requeued job)

Each row: the exit codes of the launches (torchrun's), the seconds from the first launch to
the last exit, the optimiser steps trained again (steps logged to TensorBoard over all launches
minus the run's steps), and whether the final weights equal those of the uninterrupted run bit
for bit.

Usage: python -m bench.faults [--scenarios sigkill sigterm ...] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
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
SCENARIOS = ("sigkill", "sigterm", "sigusr1", "corrupt", "node_lost", "host_lost")
# The environment of a node (docs/CLUSTERS.md, scripts/slurm/multinode.sbatch). Without it a
# restarted node cannot rejoin: it waits for the address of the workers' store, which the node of
# rank 0 published in the first rendezvous only (torchrun shares its rendezvous store with the
# workers by default), and the run fails.
NODE_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
TIMEOUT = 600  # a launch on 2 busy cores; each wait ends as soon as its condition holds


def train_command(data: Path, out: Path, exp: str, launcher: list[str]) -> list[str]:
    return [
        *(sys.executable, "-m", "torch.distributed.run", *launcher),
        "train.py",
        str(REPO / "configs" / "quickstart.yaml"),
        *(f"exp_name={exp}", f"output_dir={out}", f"data.root={data}", "data.patch_size=32"),
        *("data.num_workers=1", f"clip.cache_dir={out / 'cache'}", "model.depths=[1,1,1,1,1]"),
        *(f"train.batch_size={BATCH}", f"train.epochs={EPOCHS}", "train.extra_epoch=false"),
        *("train.checkpoint_every_steps=1", "--resume", "auto"),
    ]


def standalone(max_restarts: int) -> list[str]:
    return ["--standalone", "--nproc_per_node=2", f"--max-restarts={max_restarts}"]


def node(port: int) -> list[str]:
    """One of two nodes (one process each) meeting at 127.0.0.1:`port`."""
    rendezvous = ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=faults"]
    return ["--nnodes=2", "--nproc-per-node=1", *rendezvous, "--max-restarts=3"]


def launch(cmd: list[str], log: Path, own_group: bool = False) -> subprocess.Popen:
    """`cmd` with its output in `log`; `own_group`: in a process group of its own (a node)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    if own_group:  # a node; its agent's rendezvous, restarts and exit barrier in `log`
        env |= {**NODE_ENV, "LOGLEVEL": "INFO"}
    with open(log, "a") as f:
        return subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=own_group,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_listener(port: int, proc: subprocess.Popen) -> None:
    """Until `proc` (the first node's agent) serves the rendezvous store on `port`."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"nothing listens on port {port} (see the launch log)")
        time.sleep(0.05)


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


def children(parent: int) -> dict[int, list[bytes]]:
    """The processes whose parent is `parent`: pid -> environment."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if ppid == parent:
            found[int(proc.name)] = environ
    return found


def worker_pid(agent: int, rank: int) -> int:
    """The pid of the worker of `rank` that the torchrun agent `agent` started."""
    for pid, environ in children(agent).items():
        if f"RANK={rank}".encode() in environ:
            return pid
    raise RuntimeError(f"no worker of rank {rank} under torchrun {agent}")


def kill_node(agent: subprocess.Popen) -> None:
    """SIGKILL a node: the agent's process group, then each worker's (torchrun starts every
    worker in a session of its own, with its loader workers)."""
    workers = children(agent.pid)
    os.killpg(agent.pid, signal.SIGKILL)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):  # it had ended
            os.killpg(pid, signal.SIGKILL)


def finish(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        if os.getpgid(proc.pid) == proc.pid:  # a node: its workers too
            os.killpg(proc.pid, signal.SIGKILL)
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


def wait_for_line(log: Path, text: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while text not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{log} never said {text!r}")
        time.sleep(0.05)


def start_nodes(cmd: list[str], port: int, logs: list[Path]) -> list[subprocess.Popen]:
    """Both nodes of the run; the first hosts the rendezvous store."""
    first = launch(cmd, logs[0], own_group=True)
    wait_for_listener(port, first)
    return [first, launch(cmd, logs[1], own_group=True)]


def lose_a_node(cmd: list[str], port: int, last: Path, log: Path) -> list[int]:
    """Start both nodes, SIGKILL the second (agent and workers) inside an epoch and, once the
    first has seen its workers fail, start the second again; the exit codes of the first
    node, the killed one and the restarted one. Each node logs to a file of its own."""
    logs = [log.with_name(f"{log.stem}-node{i}.log") for i in (1, 2)]
    first, second = start_nodes(cmd, port, logs)
    wait_for_step(last, INJECT_AT, first)
    kill_node(second)
    killed = finish(second)
    wait_for_line(logs[0], "will restart worker group", first)
    again = launch(cmd, logs[1], own_group=True)
    codes = [finish(first), killed, finish(again)]
    log.write_text("".join(path.read_text() for path in logs))
    return codes


def lose_the_host(cmd: list[str], port: int, last: Path, log: Path) -> list[int]:
    """Start both nodes, SIGKILL the first (the rendezvous host) inside an epoch, wait for
    the second to end, then start both again as a requeued job does; the exit codes of the
    killed node, the other one, and the two of the relaunch."""
    logs = [log.with_name(f"{log.stem}-node{i}.log") for i in (1, 2)]
    first, second = start_nodes(cmd, port, logs)
    wait_for_step(last, INJECT_AT, first)
    kill_node(first)
    codes = [finish(first), finish(second)]
    codes += [finish(node) for node in start_nodes(cmd, port, logs)]
    log.write_text("".join(path.read_text() for path in logs))
    return codes


def run_scenario(scenario: str, data: Path, out: Path) -> dict[str, Any]:
    """Train with `scenario`'s fault injected; what was lost and whether the result is exact."""
    run, log = out / scenario, out / f"{scenario}.log"
    start = time.monotonic()
    if scenario in ("node_lost", "host_lost"):
        port = free_port()
        cmd = train_command(data, out, scenario, node(port))
        lose = lose_a_node if scenario == "node_lost" else lose_the_host
        codes = lose(cmd, port, run / "last.pth", log)
    else:
        launcher = standalone(max_restarts=0 if scenario == "corrupt" else 1)
        cmd = train_command(data, out, scenario, launcher)
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
        "seconds": round(time.monotonic() - start, 1),
        "fell_back": "does not match its digest" in text,
        "steps_trained_again": steps_logged(run) - STEPS,
        "finished": newest_step(run / "last.pth") == STEPS,
    }


def reference(data: Path, out: Path) -> dict[str, torch.Tensor]:
    log = out / "reference.log"
    code = finish(launch(train_command(data, out, "reference", standalone(0)), log))
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
        "| fault | exit codes | seconds | steps trained again | finished | final weights = "
        "uninterrupted |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {', '.join(map(str, r['exit_codes']))} | {r['seconds']} | "
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

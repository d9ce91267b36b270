"""Load a run's checkpoints in a tight loop while train.py writes them: every load must succeed.

What a researcher does while a run goes on (`test.py --ckpt runs/X/best.pth`, a copy of
last.pth, a watching script), as fast as one process can: a tiny run (tiny MixCL network, tiny
random CLIP, synthetic data, one process on the CPU) writes last.pth after every optimiser step
(`train.checkpoint_every_steps=1`, keeping last.1.pth) and best.pth after every epoch whose PSNR
improved; meanwhile this process loads last.pth and best.pth in turn through
utils.checkpoint.load_checkpoint (digest checked) until the run ends. Reported: the loads of
each file, the failures (with their messages) and the distinct global steps seen.

Usage: python -m bench.read_while_training [--epochs 80] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import machine_info, write_json
from datasets.synthetic import make_synthetic_dataset
from utils.checkpoint import CheckpointError, load_checkpoint
from utils.cli import positive_int

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 600  # for the run to write its first checkpoint, and then to finish


def train_command(data: Path, out: Path, epochs: int) -> list[str]:
    return [
        *(sys.executable, "train.py", str(REPO / "configs" / "quickstart.yaml")),
        *("exp_name=run", f"output_dir={out}", f"data.root={data}", "data.patch_size=32"),
        *("data.num_workers=0", f"clip.cache_dir={out / 'cache'}", "model.depths=[1,1,1,1,1]"),
        *("train.batch_size=4", f"train.epochs={epochs}", "train.extra_epoch=false"),
        *("train.eval_freq=1", "train.checkpoint_every_steps=1"),
    ]


def read_while_training(out: Path, epochs: int) -> dict[str, Any]:
    data = make_synthetic_dataset(out / "data", n_train=8, n_test=2, size=(40, 48))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    log = out / "train.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            train_command(data, out, epochs), cwd=REPO, env=env, stdout=f, stderr=f
        )
    run = out / "run"
    loads, failures, steps = Counter(), [], set()
    deadline = time.monotonic() + TIMEOUT
    while not (run / "last.pth").exists():  # the run's first checkpoint
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the run wrote no checkpoint: {log.read_text()[-3000:]}")
        time.sleep(0.01)
    while proc.poll() is None and time.monotonic() < deadline:
        for name in ("last.pth", "best.pth"):
            if name == "best.pth" and not (run / name).exists():  # after the first epoch
                continue
            loads[name] += 1
            try:
                steps.add(load_checkpoint(run / name)["global_step"])
            except (CheckpointError, OSError) as e:
                failures.append(f"{name}: {e}")
    if proc.poll() is None:
        proc.kill()
        raise RuntimeError(f"the run did not end in {TIMEOUT} s")
    if proc.returncode != 0:
        raise RuntimeError(f"the run failed: {log.read_text()[-3000:]}")
    return {
        "epochs": epochs,
        "steps": load_checkpoint(run / "last.pth")["global_step"],
        "loads": dict(loads),
        "failures": len(failures),
        "failure_messages": failures[:20],
        "distinct_steps_seen": len(steps),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=positive_int, default=80, help="of 2 steps each")
    p.add_argument("--json", type=Path, help="write the result here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = read_while_training(Path(tmp), args.epochs)
    result["machine"] = machine_info(1)
    print(
        f"{sum(result['loads'].values())} loads ({result['loads']}) during {result['steps']} "
        f"steps, each checkpointed; {result['failures']} failed"
    )
    for message in result["failure_messages"]:
        print(f"  {message}")
    if args.json:
        write_json(args.json, result)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

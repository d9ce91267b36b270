"""The run machinery beside train.py's loop: random streams, the run folder and resuming, what
a checkpoint holds and when it is written, stop signals, and what the ranks agree on after each
step. train.py reads as the training loop; everything a long run needs not to lose anything is
here.
"""

import json
import math
import os
import random
import shlex
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from datasets import PairedDataset
from datasets.resumable import (
    LoaderWorkers,
    ResumableSampler,
    StopSafeLoader,
    collate_with_rng,
)
from networks import tune_speed
from utils.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    digest_path,
    has_digest,
    load_checkpoint,
    save_atomic,
    versions,
)
from utils.cli import Resume
from utils.config import (
    RESUME_KEYS,
    Config,
    config_from_checkpoint,
    config_to_dict,
    dump_config,
    refuse_changes,
)
from utils.distributed import DistInfo, all_reduce_max, barrier, convert_sync_batchnorm
from utils.errors import CheckpointError, ConfigError, OutputError, OutputExistsError, UserError
from utils.losses import Criterion
from utils.protocol import protocol_report
from utils.signals import StopRequest, exit_code, requeue_slurm_job
from utils.speed import SpeedSettings, with_speed

STREAMS_PER_SEED = 1_000_000  # more than any run's epochs or processes


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN/inf; the run stopped before applying the step."""


class Stopped(Exception):
    """A stop signal reached the run; its checkpoint is written."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def stream_seed(seed: int, index: int) -> int:
    """Seed of a run's random stream `index` (an epoch's shuffling, a process's RNGs).

    `seed + index` would make seed 1 replay seed 0's stream of epoch (or rank) 1, so runs
    repeated with other seeds would not be independent; seed 0 keeps seeds equal to `index`.
    """
    return seed * STREAMS_PER_SEED + index


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # numpy takes 32-bit seeds only (stream_seed may be larger)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """All RNG states, as plain types and tensors so checkpoints load with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def total_epochs(cfg: Config) -> int:
    """Epochs trained: the cosine schedule's, then (train.extra_epoch) one more at its final lr,
    as the authors' `range(start_epoch, epochs + 1)` runs."""
    return cfg.train.epochs + int(cfg.train.extra_epoch)


def checkpoint_to_test(cfg: Config) -> Path | None:
    """best.pth once the run has trained all its epochs; None while some remain."""
    last = cfg.run_dir / "last.pth"
    if last.is_file() and load_checkpoint(last)["epoch"] >= total_epochs(cfg):
        return cfg.run_dir / "best.pth"
    return None


def newest_valid_checkpoint(cfg: Config, info: DistInfo) -> tuple[dict[str, Any], Path] | None:
    """The newest of last.pth, last.1.pth, ... that loads and matches its digest (each one that
    does not is reported by name); None when there is none at all."""
    problems = []
    for path in versions(cfg.run_dir / "last.pth"):
        try:
            return load_checkpoint(path), path
        except CheckpointError as e:
            problems.append(str(e))
            if info.is_main:
                print(f"skipping {path.name}: {e}", file=sys.stderr)
    if problems:
        raise CheckpointError(
            f"--resume: no checkpoint of {cfg.run_dir} is intact ({'; '.join(problems)})"
        )
    return None


def prepare_run_folder(
    cfg: Config, resume: Resume, info: DistInfo
) -> tuple[dict[str, Any], Path] | None:
    """When resuming, the run's newest valid checkpoint and its path, after refusing settings
    that a resumed run cannot honour; for a new run None, after refusing a folder that already
    holds checkpoints (--resume auto starts a new run only when there is no last.pth)."""
    last = cfg.run_dir / "last.pth"
    if resume is False:
        if any(versions(last)) or (cfg.run_dir / "best.pth").exists():
            raise OutputExistsError(
                f"{cfg.run_dir} already holds checkpoints: pass --resume (or --resume auto) to "
                "continue that run, or choose another exp_name=... / output_dir=..."
            )
        return None
    found = newest_valid_checkpoint(cfg, info)
    if found is None:
        if resume == "auto":
            return None
        raise CheckpointError(
            f"--resume: no checkpoint at {last} to continue from (`--resume auto` starts the "
            "run when there is none)"
        )
    ckpt, path = found
    saved = config_from_checkpoint(ckpt["config"])
    hint = "; to train with other settings, start a new run (another exp_name=...)"
    refuse_changes(saved, cfg, RESUME_KEYS, f"--resume: {path}", hint)
    if total_epochs(cfg) < ckpt["epoch"]:
        raise ConfigError(
            f"--resume: {path} has trained {ckpt['epoch']} epochs already, more than the "
            f"{total_epochs(cfg)} that train.epochs={cfg.train.epochs} and "
            f"train.extra_epoch={cfg.train.extra_epoch} plan"
        )
    return ckpt, path


def check_checkpointing(cfg: Config) -> None:
    t = cfg.train
    if t.keep_checkpoints < 1:
        raise ConfigError(f"train.keep_checkpoints={t.keep_checkpoints}: keep at least 1")
    if t.checkpoint_every_steps < 0 or t.checkpoint_every_minutes < 0:
        raise ConfigError(
            "train.checkpoint_every_steps and train.checkpoint_every_minutes must be at least 0 "
            "(0: not on that count)"
        )


def set_aside_damaged(cfg: Config, resumed: Path) -> None:
    """Rename the checkpoints newer than `resumed` (those that did not verify) to *.corrupt,
    so that keeping the previous checkpoints never keeps them in place of good ones."""
    for path in versions(cfg.run_dir / "last.pth"):
        if path == resumed:
            return
        for part in (path, digest_path(path)):
            if part.exists():
                part.replace(part.with_name(part.name + ".corrupt"))
        print(f"{path} set aside as {path.name}.corrupt", file=sys.stderr)


def training_speed(
    cfg: Config, info: DistInfo, device: torch.device, text_dim: int | None
) -> tuple[SpeedSettings, dict[str, Any] | None]:
    """The speed settings this run trains with, measured on one process's batch where `auto`
    (rank 0 measures, the other ranks read its choice), and the measurement's record."""
    batch = cfg.train.batch_size // info.world_size
    if info.is_main:
        speed, tuning = tune_speed(cfg, text_dim, device, "train", batch, cfg.data.patch_size)
    barrier(info)
    if not info.is_main:
        speed, tuning = tune_speed(cfg, text_dim, device, "train", batch, cfg.data.patch_size)
    return speed, tuning.record() if tuning is not None else None


def record_run(
    cfg: Config,
    argv: list[str] | None,
    resumed: Path | None,
    speed: SpeedSettings,
    tuning: dict[str, Any] | None,
) -> None:
    """config.yaml: the settings the run trains with from now on, speed resolved; speed.json:
    how they were measured; command.txt: every command; protocol_differences.txt (also
    printed): how this run's config departs from the paper's. Left-overs of a killed save and
    damaged checkpoints (when `resumed` is an older one) go."""
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob(".*.pth*.tmp"):  # left by a process killed while saving
        stale.unlink()
    if resumed is not None:
        set_aside_damaged(cfg, resumed)
    (run_dir / "config.yaml").write_text(dump_config(with_speed(cfg, speed, predict=False)))
    (run_dir / "speed.json").unlink(missing_ok=True)  # an earlier call's measurement
    if tuning is not None:
        (run_dir / "speed.json").write_text(json.dumps(tuning, indent=1) + "\n")
    cmd = shlex.join(["python", "train.py", *(argv if argv is not None else sys.argv[1:])])
    with open(run_dir / "command.txt", "a") as f:
        f.write(cmd + "\n")
    report = protocol_report(cfg)
    (run_dir / "protocol_differences.txt").write_text(report)
    print(report, end="")


class Loaders(NamedTuple):
    """This process's loaders, and the training loader's sampler and workers, which a resumed
    epoch starts inside (datasets.resumable)."""

    train: DataLoader
    val: DataLoader
    sampler: ResumableSampler
    workers: LoaderWorkers


def make_loaders(
    cfg: Config,
    info: DistInfo,
    train_set: PairedDataset,
    val_set: PairedDataset,
    generator: torch.Generator,
) -> Loaders:
    """This process's share of the training batches (shuffled by `generator` or, under DDP,
    the DistributedSampler) and of the validation images."""
    d = cfg.data
    per_rank = cfg.train.batch_size // info.world_size
    if per_rank < 1 or per_rank * info.world_size != cfg.train.batch_size:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} must be a multiple of the "
            f"{info.world_size} processes"
        )
    data_seed = stream_seed(cfg.train.seed, 0)  # the sampler adds the epoch
    base = (
        DistributedSampler(train_set, seed=data_seed)
        if info.enabled
        else RandomSampler(train_set, generator=generator)  # as DataLoader(shuffle=True) makes
    )
    sampler, workers = ResumableSampler(base), LoaderWorkers(d.num_workers)
    common = {"num_workers": d.num_workers, "pin_memory": torch.cuda.is_available()}
    train_loader = StopSafeLoader(
        train_set,
        batch_size=per_rank,
        sampler=sampler,
        drop_last=len(train_set) >= cfg.train.batch_size,
        generator=generator,
        persistent_workers=False,
        worker_init_fn=workers.init_worker,
        collate_fn=collate_with_rng,
        **common,
    )
    # Every image exactly once over the ranks (DistributedSampler would pad with repeats);
    # whole images ("test") go one at a time, as in test.py.
    val_shard = Subset(val_set, range(info.rank, len(val_set), info.world_size))
    val_batch = per_rank if d.valid_mode == "valid" else 1
    val_loader = StopSafeLoader(val_shard, batch_size=val_batch, **common)
    return Loaders(train_loader, val_loader, sampler, workers)


@dataclass
class TrainState:
    """What a checkpoint holds: the network, its optimiser, schedule and gradient scaler, and
    how far the run has come."""

    cfg: Config
    net: nn.Module
    text_dim: int | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.CosineAnnealingLR
    scaler: torch.amp.GradScaler
    epoch: int = 0  # epochs completed before the current one
    step: int = 0  # batches of the current epoch done
    global_step: int = 0  # optimiser steps taken
    best_psnr: float = -math.inf
    loader: Mapping[str, Any] | None = None  # LoaderWorkers.state() at `step`, when resumed

    def checkpoint(self, epochs_done: int, rng: list[Any], epoch_step: int = 0) -> dict[str, Any]:
        """The checkpoint of the run after `epochs_done` epochs and `epoch_step` batches of the
        next; `rng`: every rank's RNG state."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.net.state_dict(),
            "model_name": self.cfg.model.name,
            "text_dim": self.text_dim,
            "config": config_to_dict(self.cfg),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epochs_done,
            "epoch_step": epoch_step,
            "global_step": self.global_step,
            "best_psnr": self.best_psnr,
            "rng": rng,
        }

    def resume(self, ckpt: Mapping[str, Any], path: Path, info: DistInfo) -> None:
        """Continue from `ckpt` (a `checkpoint()` read from `path`); a changed train.epochs
        re-plans the schedule."""
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.best_psnr = ckpt["epoch"], ckpt["best_psnr"]
        self.step = ckpt.get("epoch_step", 0)  # checkpoints before mid-epoch ones: 0
        self.global_step = ckpt["global_step"]
        rng = ckpt["rng"][min(info.rank, len(ckpt["rng"]) - 1)]
        set_rng_state(rng)
        self.loader = rng.get("loader")  # checkpoints before mid-epoch ones: none
        say = print if info.is_main else lambda *_: None
        within = f", step {self.step} of epoch {self.epoch + 1}" if self.step else ""
        unverified = "" if has_digest(path) else "; written before digests, not verified"
        say(
            f"resuming {path} after epoch {self.epoch}{within} (global step "
            f"{self.global_step}, best PSNR {self.best_psnr:.2f}{unverified})"
        )
        planned, epochs = ckpt["config"]["train"]["epochs"], self.cfg.train.epochs
        if planned != epochs:
            before = self.optimizer.param_groups[0]["lr"]
            replan_schedule(self.optimizer, self.scheduler, epochs, self.epoch)
            say(
                f"train.epochs {planned} -> {epochs}: the cosine schedule is re-planned for "
                f"{epochs} epochs, so the learning rate goes from {before:.3g} to "
                f"{self.optimizer.param_groups[0]['lr']:.3g}"
            )


def replan_schedule(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.CosineAnnealingLR,
    epochs: int,
    done: int,
) -> None:
    """Continue the cosine decay as a run planned for `epochs` epochs does after `done` epochs."""
    scheduler.T_max = epochs
    progress = (1 + math.cos(math.pi * done / epochs)) / 2
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = scheduler.eta_min + (base - scheduler.eta_min) * progress


def sync_batchnorm(
    net: nn.Module, criterion: Criterion, cfg: Config, info: DistInfo, device: torch.device
) -> tuple[nn.Module, Criterion]:
    """The network and the criterion (whose CR backbone's training-mode statistics are part of
    the loss) with SyncBatchNorm under DDP on GPUs (train.sync_batchnorm)."""
    parts = convert_sync_batchnorm(
        nn.ModuleList([net, criterion]), info, device, cfg.train.sync_batchnorm
    )
    return parts[0], parts[1]


def parallel_model(
    net: nn.Module, speed: SpeedSettings, info: DistInfo, device: torch.device
) -> nn.Module:
    """`net` as it trains: compiled (speed.compile) and, under torchrun, wrapped in DDP."""
    model = torch.compile(net) if speed.compile else net
    if info.enabled:
        ids = [info.local_rank] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model


class BufferSnapshot:
    """A copy of a network's floating-point buffers (BatchNorm's running statistics), which a
    non-finite forward pass poisons along with the loss."""

    def __init__(self, net: nn.Module) -> None:
        self.live = [b for b in net.buffers() if b.is_floating_point()]
        self.saved = [b.clone() for b in self.live]

    def take(self) -> None:
        for saved, live in zip(self.saved, self.live, strict=True):
            saved.copy_(live)

    def restore(self) -> None:
        for saved, live in zip(self.saved, self.live, strict=True):
            live.copy_(saved)


class CheckpointClock:
    """When last.pth is next written within an epoch: every train.checkpoint_every_steps
    optimiser steps and/or every train.checkpoint_every_minutes by rank 0's clock."""

    def __init__(self, cfg: Config) -> None:
        self.every_steps = cfg.train.checkpoint_every_steps
        self.every_seconds = cfg.train.checkpoint_every_minutes * 60
        self.saved = time.monotonic()

    def due(self, global_step: int, is_main: bool) -> bool:
        """Whether to write last.pth after optimiser step `global_step`."""
        if self.every_steps and global_step % self.every_steps == 0:
            return True
        waited = time.monotonic() - self.saved
        return bool(is_main and self.every_seconds) and waited >= self.every_seconds

    def reset(self) -> None:
        self.saved = time.monotonic()


class Agreed(NamedTuple):
    """What every rank does after a step, decided together (any rank's reason counts)."""

    nonfinite: bool  # some rank's loss is NaN/inf
    stop_signal: int  # a stop signal some rank received (0: none)
    checkpoint_due: bool


@dataclass
class RunSetup:
    """What stays the same while one process trains."""

    cfg: Config
    info: DistInfo
    device: torch.device
    model: nn.Module  # the network as it trains (see parallel_model)
    criterion: Criterion
    loaders: Loaders
    generator: torch.Generator  # shuffles the training split without DDP
    buffers: BufferSnapshot
    writer: SummaryWriter | None  # TensorBoard, rank 0 only
    stop: StopRequest
    clock: CheckpointClock


def save_checkpoint(
    setup: RunSetup,
    state: TrainState,
    path: Path,
    epochs_done: int,
    epoch_step: int = 0,
    keep: int = 1,
) -> None:
    """Rank 0 writes the checkpoint of `epochs_done` epochs and `epoch_step` batches of the
    next to `path`, atomically, keeping `keep` versions (utils.checkpoint.save_atomic).

    Every rank's RNG states, its loader workers' included, are gathered first (a collective:
    all ranks call this together).
    """
    own = {**rng_state(), "loader": setup.loaders.workers.state()}
    rng: list[Any] = [own]
    if setup.info.enabled:
        rng = [None] * setup.info.world_size
        torch.distributed.all_gather_object(rng, own)
    if not setup.info.is_main:
        return
    try:
        save_atomic(state.checkpoint(epochs_done, rng, epoch_step), path, keep)
    except OSError as e:
        raise OutputError(
            f"could not write checkpoint {path} ({e}); the previous {path.name}, if any, is "
            "intact. Free disk space, then continue with --resume"
        ) from e


def save_last(setup: RunSetup, state: TrainState, epochs_done: int, epoch_step: int = 0) -> None:
    """last.pth, from which a resumed run continues exactly; the older ones shift back."""
    path = setup.cfg.run_dir / "last.pth"
    save_checkpoint(setup, state, path, epochs_done, epoch_step, setup.cfg.train.keep_checkpoints)
    setup.clock.reset()


def nonfinite_step(setup: RunSetup, state: TrainState, loss: torch.Tensor) -> None:
    """After a NaN/inf loss on any rank: skip the step (train.nonfinite=skip), or save the
    weights from before it to last_good.pth and stop."""
    setup.buffers.restore()
    where = f"epoch {state.epoch + 1}, step {state.step + 1} (global step {state.global_step + 1})"
    if setup.cfg.train.nonfinite == "skip":
        if setup.info.is_main:
            tqdm.write(f"non-finite loss at {where}: step skipped")
        state.optimizer.zero_grad(set_to_none=True)
        return
    good = setup.cfg.run_dir / "last_good.pth"
    save_checkpoint(setup, state, good, state.epoch, state.step)
    raise NonFiniteLossError(
        f"loss is {loss.item()} at {where}; the weights before this step are in {good} and "
        f"the last completed epoch in {setup.cfg.run_dir / 'last.pth'}. Lower train.lr, "
        "or set train.nonfinite=skip to skip such steps"
    )


def agree(setup: RunSetup, state: TrainState, loss: torch.Tensor) -> Agreed:
    """What all ranks do after this step, in the step's one collective (a maximum over ranks):
    so a signal seen by any rank stops every rank after the same step."""
    bad = (~torch.isfinite(loss)).float().reshape(1)
    due = setup.clock.due(state.global_step + 1, setup.info.is_main)
    wants = torch.tensor([setup.stop.signum, float(due)], device=bad.device)
    flags = all_reduce_max(torch.cat([bad, wants]), setup.info).tolist()
    return Agreed(flags[0] > 0, int(flags[1]), flags[2] > 0)


def end_stopped(setup: RunSetup, state: TrainState, signum: int) -> SystemExit:
    """After a stop signal (its step's last.pth written): requeue the SLURM job if asked (rank
    0), say so in one line and exit with 128 + the signal's number."""
    if setup.info.is_main:
        requeued = ""
        if setup.cfg.train.requeue and "SLURM_JOB_ID" in os.environ:
            requeued = "; " + requeue_slurm_job()
        print(
            f"\n{signal.Signals(signum).name}: stopped in epoch {state.epoch + 1} after step "
            f"{state.step} (global step {state.global_step}); {setup.cfg.run_dir / 'last.pth'} "
            f"holds it and the same command with --resume auto continues exactly{requeued}",
            file=sys.stderr,
        )
    return SystemExit(exit_code(signum))

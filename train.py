"""Train MixCLDehazeNet (or the MixDehazeNet baseline) from a YAML config.

python train.py configs/reside6k/mixcl-s.yaml train.lr=2e-4 ...
torchrun --nproc_per_node=4 train.py configs/reside6k/mixcl-s.yaml

A run, step by step (`train`): prepare the run folder, the data and the CLIP text features,
build the training state (what each checkpoint holds), then train epoch by epoch. The run
machinery (random streams, the run folder and resuming, checkpoints, stop signals, what the
ranks agree on after each step) is in training_run.py.
"""

import argparse
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from utils.cli import (
    add_overrides,
    entry_parser,
    parse_before_imports,
    parse_with_overrides,
    positive_int,
    resume_mode,
    run,
    setup_logging,
    spell_resume,
)

DEFAULT_CONFIG = "configs/reside6k/mixcl-s.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = entry_parser(__doc__)
    p.add_argument("config", nargs="?", help=f"YAML config file (default: {DEFAULT_CONFIG})")
    add_overrides(p)
    p.add_argument(
        "--resume",
        type=resume_mode,
        default=None,
        metavar="auto|true|false",
        help="continue from the newest valid <run>/last.pth (or last.1.pth, ...); a bare --resume"
        "\nis `true`; `auto` starts the run when there is none (one command for every launch);"
        "\ndefault: train.resume",
    )
    p.add_argument(
        "--stop-after-epochs",
        type=positive_int,
        default=None,
        help="train at most this many epochs in this invocation, then exit (time-limited queues)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    p.add_argument(
        "--print-test-ckpt",
        action="store_true",
        help="print the run's best.pth if it has trained all its epochs (else nothing), exit",
    )
    p.add_argument(
        "--prepare-domains",
        action="store_true",
        help="check the data and build the CLIP domain caches of both splits, then exit",
    )
    args = parse_with_overrides(p, spell_resume(sys.argv[1:] if argv is None else argv), "config")
    if len(args.config) > 1:
        p.error(f"one config file, got {len(args.config)}: {' '.join(args.config)}")
    args.config = args.config[0] if args.config else DEFAULT_CONFIG
    return args


# The arguments are read first (utils.cli.parse_before_imports), then the machinery.
parse_before_imports(__name__, parse_args)

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid
from tqdm import tqdm

from datasets import PairedDataset
from datasets.synthetic import DEFAULT_ROOT, generate_if_configured
from networks import build_network, check_names, load_weights
from training_run import (
    Agreed,
    BufferSnapshot,
    CheckpointClock,
    RunSetup,
    Stopped,
    TrainState,
    agree,
    check_checkpointing,
    checkpoint_to_test,
    end_stopped,
    make_loaders,
    nonfinite_step,
    parallel_model,
    prepare_run_folder,
    record_run,
    save_checkpoint,
    save_last,
    seed_everything,
    stream_seed,
    sync_batchnorm,
    total_epochs,
    training_speed,
)
from utils.checkpoint import read_file
from utils.clip_domains import embedding_width, split_text_features
from utils.config import Config, dump_config, load_config
from utils.devices import autocast
from utils.distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from utils.errors import ConfigError, DataError
from utils.image import from_model_range, write_rgb
from utils.losses import Criterion, build_criterion, loss_weights
from utils.metrics import psnr, ssim
from utils.signals import catch_stop_signals
from utils.speed import SpeedSettings


def check_config(cfg: Config) -> None:
    """Every problem the config shows by itself, before the run folder or the data are read."""
    check_names(cfg)
    check_checkpointing(cfg)
    loss_weights(cfg.loss)


def open_splits(cfg: Config) -> tuple[PairedDataset, PairedDataset]:
    """The training and validation splits (headers only), every problem of both reported at once."""
    d = cfg.data
    splits, problems = [], []
    for split, mode, augment in (
        (d.train_split, "train", (d.edge_decay, d.only_h_flip)),
        (d.test_split, d.valid_mode, ()),
    ):
        try:
            splits.append(PairedDataset(d.root, split, mode, d.patch_size, *augment))
        except DataError as e:
            problems.append(str(e))
    if not Path(d.root).is_dir():
        problems.append(
            f"data.root={d.root} is not a folder (relative paths are relative to the folder "
            f"you run from, {Path.cwd()}); set data.root=/path/to/dataset"
        )
        if d.synthetic.enabled:
            problems.append(
                f"data.synthetic.enabled generates data only in {DEFAULT_ROOT}; "
                f"`python -m datasets.synthetic --out {d.root}` writes it elsewhere"
            )
    if problems:
        raise DataError("\n".join(problems))
    return splits[0], splits[1]


def prepare_data(cfg: Config, info: DistInfo) -> tuple[PairedDataset, PairedDataset]:
    """Both splits, opened once, every problem found before anything slow (CLIP, training)
    starts. The synthetic dataset a config asks for (the quickstart's) is written first."""
    if info.is_main:
        generate_if_configured(cfg.data)
    barrier(info)
    d = cfg.data
    train_set, val_set = open_splits(cfg)
    if not any(h >= d.patch_size and w >= d.patch_size for h, w in train_set.sizes.values()):
        largest = max(min(hw) for hw in train_set.sizes.values())
        raise ConfigError(
            f"data.patch_size={d.patch_size} is larger than every image in "
            f"{train_set.split_dir} (the largest square crop is {largest}x{largest}); "
            "lower data.patch_size"
        )
    if d.verify_images and info.is_main:
        for dataset in (train_set, val_set):
            dataset.verify_pixels(workers=max(2, d.num_workers))
    return train_set, val_set


def attach_text_features(
    cfg: Config, info: DistInfo, device: torch.device, splits: tuple[PairedDataset, ...]
) -> int | None:
    """Give every sample of `splits` its image's CLIP text feature, if the network takes one;
    returns the feature width (None without text). Rank 0 builds each split's CLIP cache (on
    `device`, a GPU when there is one), then the others read it."""
    if not cfg.model.needs_text:
        return None
    for dataset in splits:
        args = (cfg.clip, dataset.split_dir, dataset.names, str(device))
        if info.is_main:
            features, _ = split_text_features(*args)
        barrier(info)
        if not info.is_main:
            features, _ = split_text_features(*args)
        dataset.set_text_features(features)
    return embedding_width(cfg.clip.arch)


def build_state(
    cfg: Config,
    info: DistInfo,
    device: torch.device,
    text_dim: int | None,
    resume: tuple[Mapping[str, Any], Path] | None,
    speed: SpeedSettings,
) -> tuple[TrainState, Criterion]:
    """The training state, new or continued from `resume`, and the criterion; the network
    runs with `speed`."""
    net = build_network(cfg, text_dim, speed).to(device)
    if cfg.model.init_from and resume is None:
        load_weights(net, read_file(cfg.model.init_from), cfg.model.init_from, cfg.model.name)
    t = cfg.train
    optimizer = torch.optim.AdamW(net.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=t.epochs, eta_min=t.lr * t.lr_min_ratio
    )
    use_scaler = device.type == "cuda" and cfg.precision.train == "fp16"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    net, criterion = sync_batchnorm(net, build_criterion(cfg.loss, device), cfg, info, device)
    state = TrainState(cfg, net, text_dim, optimizer, scheduler, scaler)
    if resume is not None:
        state.resume(*resume, info)
    return state, criterion


def training_step(
    setup: RunSetup, state: TrainState, batch: dict
) -> tuple[dict[str, torch.Tensor] | None, Agreed]:
    """One optimiser step on `batch`; returns its loss and each term of it ({"loss": total,
    name: value}, None if the loss was not finite) and what the ranks agreed to do after it."""
    device = setup.device
    hazy = batch["hazy"].to(device, non_blocking=True)
    gt = batch["gt"].to(device, non_blocking=True)
    text = batch["text"].to(device, non_blocking=True) if "text" in batch else None
    setup.buffers.take()
    amp = setup.cfg.precision.train if device.type == "cuda" else "none"  # CPU trains in fp32
    with autocast(device, amp):
        terms = setup.criterion.values(setup.model(hazy, text), gt, hazy)
        loss = setup.criterion.total(terms)
    agreed = agree(setup, state, loss)
    if agreed.nonfinite:
        nonfinite_step(setup, state, loss)
        return None, agreed
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.global_step += 1
    return {"loss": loss, **terms}, agreed


def train_epoch(setup: RunSetup, state: TrainState) -> None:
    """The rest of an epoch (all of it, or what follows the state.step batches a mid-epoch
    checkpoint holds), then one step of the learning-rate schedule."""
    cfg, writer = setup.cfg, setup.writer
    setup.generator.manual_seed(stream_seed(cfg.train.seed, state.epoch))
    setup.loaders.sampler.set_epoch(state.epoch)
    setup.loaders.sampler.skip = state.step * (setup.loaders.train.batch_size or 1)
    warning = setup.loaders.workers.start_epoch(state.step, state.loader)
    state.loader = None
    if warning and setup.info.is_main:
        print(warning, file=sys.stderr)
    setup.model.train()
    bar = tqdm(
        setup.loaders.train,
        desc=f"epoch {state.epoch + 1}/{total_epochs(cfg)}",
        disable=None if setup.info.is_main else True,  # no bar on other ranks or in logs
        leave=False,
        dynamic_ncols=True,
    )
    for batch in bar:
        setup.loaders.workers.took(state.step, batch)
        losses, agreed = training_step(setup, state, batch)
        state.step += 1
        if losses is not None and writer is not None:
            lr, value = state.optimizer.param_groups[0]["lr"], losses["loss"].item()
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
            for name, term in losses.items():  # train/loss, then train/loss_<term>
                tag = "train/loss" if name == "loss" else f"train/loss_{name}"
                writer.add_scalar(tag, term.item(), state.global_step)
            writer.add_scalar("train/lr", lr, state.global_step)
        if agreed.stop_signal or agreed.checkpoint_due:
            save_last(setup, state, state.epoch, state.step)
        if agreed.stop_signal:
            raise Stopped(agreed.stop_signal)
    state.scheduler.step()
    state.step = 0


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    cfg: Config,
    info: DistInfo,
) -> tuple[float, float, torch.Tensor | None]:
    """Mean PSNR/SSIM over the loader (reduced over ranks), and a few hazy|output|GT triplets.

    Runs in `precision.eval` (the protocol's fp32 by default), not the training autocast.
    """
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    triplets: list[torch.Tensor] = []
    for batch in loader:
        hazy, gt = batch["hazy"].to(device), batch["gt"].to(device)
        text = batch["text"].to(device) if "text" in batch else None
        with autocast(device, cfg.precision.eval):
            out = model(hazy, text)
        out01, gt01 = from_model_range(out.float()), from_model_range(gt)
        count = torch.tensor(len(hazy), device=device)
        totals += torch.stack([psnr(out01, gt01).sum(), ssim(out01, gt01).sum(), count]).to(totals)
        if len(triplets) < cfg.train.log_images:
            for h, o, g in zip(from_model_range(hazy), out01, gt01, strict=True):
                triplets.append(torch.cat([h, o, g], dim=-1).cpu())
    all_reduce_sum(totals, info)
    grid = torch.stack(triplets[: cfg.train.log_images]) if triplets else None
    n = max(totals[2].item(), 1.0)
    return totals[0].item() / n, totals[1].item() / n, grid


def validate_and_log(setup: RunSetup, state: TrainState, result: dict[str, Any]) -> None:
    """Validate after the current epoch, log it (rank 0: TensorBoard, image sheets in
    samples/, one line) and write best.pth when the PSNR improved."""
    epoch = state.epoch + 1
    val_psnr, val_ssim, grid = validate(
        setup.model, setup.loaders.val, setup.device, setup.cfg, setup.info
    )
    improved = val_psnr > state.best_psnr
    state.best_psnr = max(state.best_psnr, val_psnr)
    result.update(best_psnr=state.best_psnr, last_psnr=val_psnr, last_ssim=val_ssim)
    if setup.writer is not None:
        setup.writer.add_scalar("val/psnr", val_psnr, epoch)
        setup.writer.add_scalar("val/ssim", val_ssim, epoch)
        if grid is not None:
            setup.writer.add_images("val/hazy|output|gt", grid, epoch)
            sheet = make_grid(grid, nrow=1, padding=4, pad_value=1.0)
            samples = setup.cfg.run_dir / "samples"
            write_rgb(samples / "val_latest.png", sheet)
            if improved:
                write_rgb(samples / "val_best.png", sheet)
        tqdm.write(
            f"epoch {epoch}: val PSNR {val_psnr:.2f} SSIM {val_ssim:.4f} "
            f"(best {state.best_psnr:.2f})"
        )
    if improved:
        save_checkpoint(setup, state, setup.cfg.run_dir / "best.pth", epoch)


def fit(setup: RunSetup, state: TrainState, end_epoch: int) -> dict[str, Any]:
    """Train the epochs from state.epoch to `end_epoch`, validating every train.eval_freq
    epochs and after the last; last.pth is written after every epoch."""
    cfg = setup.cfg
    result: dict[str, Any] = {"best_psnr": state.best_psnr, "run_dir": str(cfg.run_dir)}
    try:
        for epoch in range(state.epoch, end_epoch):
            state.epoch = epoch
            train_epoch(setup, state)
            if (epoch + 1) % cfg.train.eval_freq == 0 or epoch + 1 == total_epochs(cfg):
                validate_and_log(setup, state, result)
            save_last(setup, state, epoch + 1)
    except Stopped as e:
        raise end_stopped(setup, state, e.signum) from None
    finally:
        if setup.writer is not None:
            setup.writer.close()
    return result


def train(cfg: Config, args: argparse.Namespace, info: DistInfo, argv: list[str] | None) -> dict:
    """One run, step by step; returns the best validation PSNR/SSIM and the run folder."""
    device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    mode = cfg.train.resume if args.resume is None else args.resume
    resume = prepare_run_folder(cfg, mode, info)
    if resume is not None and resume[0]["epoch"] == total_epochs(cfg):
        if info.is_main and not args.prepare_domains:
            print(
                f"nothing to do: {resume[1]} has finished all "
                f"{total_epochs(cfg)} epochs (train.epochs=N with --resume trains it longer)"
            )
        return {"best_psnr": resume[0]["best_psnr"], "run_dir": str(cfg.run_dir)}
    splits = prepare_data(cfg, info)
    seed_everything(stream_seed(cfg.train.seed, info.rank))
    text_dim = attach_text_features(cfg, info, device, splits)
    if args.prepare_domains:
        return {}
    speed, tuning = training_speed(cfg, info, device, text_dim)
    if info.is_main:
        record_run(cfg, argv, resume[1] if resume else None, speed, tuning)

    generator = torch.Generator()
    loaders = make_loaders(cfg, info, *splits, generator)
    state, criterion = build_state(cfg, info, device, text_dim, resume, speed)
    model = parallel_model(state.net, speed, info, device)
    writer = SummaryWriter(str(cfg.run_dir / "tensorboard")) if info.is_main else None
    end_epoch = total_epochs(cfg)
    if args.stop_after_epochs is not None:
        end_epoch = min(end_epoch, state.epoch + args.stop_after_epochs)
    with catch_stop_signals() as stop:
        setup = RunSetup(
            cfg,
            info,
            device,
            model,
            criterion,
            loaders,
            generator,
            BufferSnapshot(state.net),
            writer,
            stop,
            CheckpointClock(cfg),
        )
        result = fit(setup, state, end_epoch)
    if info.is_main and end_epoch < total_epochs(cfg):
        validated = state.best_psnr > -math.inf
        best = f"best validation PSNR so far {state.best_psnr:.2f} dB, " if validated else ""
        print(
            f"stopped after epoch {end_epoch} of {total_epochs(cfg)}; continue with --resume "
            f"({best}checkpoints in {cfg.run_dir})"
        )
    elif info.is_main:
        print(f"done: best validation PSNR {state.best_psnr:.2f} dB, checkpoints in {cfg.run_dir}")
    return result


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train; returns the best validation PSNR/SSIM and the run folder's checkpoints."""
    args = parse_args(argv)
    setup_logging(args.quiet)
    cfg = load_config(args.config, args.overrides)
    check_config(cfg)
    if args.print_config:
        print(dump_config(cfg), end="")
        return {}
    if args.print_test_ckpt:
        print(checkpoint_to_test(cfg) or "")
        return {}
    info = init_distributed()
    try:
        return train(cfg, args, info, argv)
    finally:
        cleanup(info)


if __name__ == "__main__":
    run(main)

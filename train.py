"""Train MixCLDehazeNet (or the MixDehazeNet baseline) from a YAML config.

python train.py configs/reside6k/mixcl-s.yaml train.lr=2e-4 ...
torchrun --nproc_per_node=4 train.py configs/reside6k/mixcl-s.yaml
"""

from __future__ import annotations

import argparse
import math
import random
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid
from tqdm import tqdm

from datasets import PairedDataset
from datasets.synthetic import DEFAULT_ROOT, generate_if_configured
from networks import build_network, check_names, load_weights
from utils.checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint, read_file, save_atomic
from utils.cli import positive_int, run
from utils.clip_domains import embedding_width, split_text_features
from utils.config import (
    RESUME_KEYS,
    Config,
    ConfigError,
    config_from_checkpoint,
    config_to_dict,
    dump_config,
    load_config,
    refuse_changes,
)
from utils.devices import autocast, speed_on
from utils.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup,
    convert_sync_batchnorm,
    init_distributed,
)
from utils.image import from_model_range, list_images, write_rgb
from utils.losses import ContrastiveLoss, build_contrastive_loss, training_loss
from utils.metrics import psnr, ssim
from utils.protocol import protocol_report

DEFAULT_CONFIG = "configs/reside6k/mixcl-s.yaml"
STREAMS_PER_SEED = 1_000_000  # more than any run's epochs or processes


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stopped before applying the step."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help="YAML config file")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.lr=2e-4")
    p.add_argument("--resume", action="store_true", help="continue from <run>/last.pth")
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
    args = p.parse_intermixed_args(argv)
    if args.config and "=" in args.config:  # only overrides given: keep the default config
        args.overrides.insert(0, args.config)
        args.config = DEFAULT_CONFIG
    return args


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


def checkpoint_to_resume(cfg: Config, path: Path) -> dict[str, Any]:
    """The run's last checkpoint, after refusing settings that a resumed run cannot honour."""
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path} to continue from")
    ckpt = load_checkpoint(path)
    saved = config_from_checkpoint(ckpt["config"])
    hint = "; to train with other settings, start a new run (another exp_name=...)"
    refuse_changes(saved, cfg, RESUME_KEYS, f"--resume: {path}", hint)
    if total_epochs(cfg) < ckpt["epoch"]:
        raise ConfigError(
            f"--resume: {path} has trained {ckpt['epoch']} epochs already, more than the "
            f"{total_epochs(cfg)} that train.epochs={cfg.train.epochs} and "
            f"train.extra_epoch={cfg.train.extra_epoch} plan"
        )
    return ckpt


def checkpoint_to_test(cfg: Config) -> Path | None:
    """best.pth once the run has trained all its epochs; None while some remain."""
    last = cfg.run_dir / "last.pth"
    if last.is_file() and load_checkpoint(last)["epoch"] >= total_epochs(cfg):
        return cfg.run_dir / "best.pth"
    return None


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


def record_run(cfg: Config, run_dir: Path, argv: list[str] | None) -> None:
    """config.yaml: the settings the run trains with from now on; command.txt: every command."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob(".*.pth.*.tmp"):  # left by a process killed while saving
        stale.unlink()
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    cmd = shlex.join(["python", "train.py", *(argv if argv is not None else sys.argv[1:])])
    with open(run_dir / "command.txt", "a") as f:
        f.write(cmd + "\n")
    write_protocol_report(cfg, run_dir)


def text_features(
    cfg: Config, split: str, info: DistInfo, device: torch.device
) -> dict[str, torch.Tensor]:
    """Per-image text features of a split: rank 0 builds the CLIP cache (on `device`, a GPU
    when there is one), the others read it."""
    split_dir = Path(cfg.data.root) / split
    names = [p.name for p in list_images(split_dir / "hazy")]
    if info.is_main:
        features, _ = split_text_features(cfg.clip, split_dir, names, str(device))
    barrier(info)
    if not info.is_main:
        features, _ = split_text_features(cfg.clip, split_dir, names, str(device))
    return features


def total_epochs(cfg: Config) -> int:
    """Epochs trained: the cosine schedule's, then (train.extra_epoch) one more at its final lr,
    as the authors' `range(start_epoch, epochs + 1)` runs."""
    return cfg.train.epochs + int(cfg.train.extra_epoch)


def train_amp(cfg: Config, device: torch.device) -> str:
    """Training autocast: the configured precision on CUDA; CPU always trains in fp32."""
    return cfg.precision.train if device.type == "cuda" else "none"


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
        totals += torch.stack(
            [
                psnr(out01, gt01).sum(),
                ssim(out01, gt01).sum(),
                torch.tensor(len(hazy), device=device),
            ]
        ).to(totals)
        if len(triplets) < cfg.train.log_images:
            for h, o, g in zip(from_model_range(hazy), out01, gt01, strict=True):
                triplets.append(torch.cat([h, o, g], dim=-1).cpu())
    all_reduce_sum(totals, info)
    grid = torch.stack(triplets[: cfg.train.log_images]) if triplets else None
    n = max(totals[2].item(), 1.0)
    return totals[0].item() / n, totals[1].item() / n, grid


def open_splits(cfg: Config) -> tuple[PairedDataset, PairedDataset]:
    """The training and validation splits (headers only), every problem of both reported at once."""
    d = cfg.data
    splits, problems = [], []
    for split, mode in ((d.train_split, "train"), (d.test_split, "valid")):
        try:
            splits.append(PairedDataset(d.root, split, mode, d.patch_size))
        except ValueError as e:
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
        raise ValueError("\n".join(problems))
    return splits[0], splits[1]


def check_data(cfg: Config, info: DistInfo) -> None:
    """Find every problem with the data before anything slow (CLIP, training) starts."""
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


def make_loaders(
    cfg: Config,
    info: DistInfo,
    train_text: dict[str, torch.Tensor] | None,
    test_text: dict[str, torch.Tensor] | None,
    generator: torch.Generator,
) -> tuple[DataLoader, DataLoader, DistributedSampler | None]:
    d = cfg.data
    train_set = PairedDataset(
        d.root, d.train_split, "train", d.patch_size, d.edge_decay, d.only_h_flip, train_text
    )
    val_set = PairedDataset(
        d.root, d.test_split, d.valid_mode, d.patch_size, text_features=test_text
    )
    per_rank = cfg.train.batch_size // info.world_size
    if per_rank < 1 or per_rank * info.world_size != cfg.train.batch_size:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} must be a multiple of the "
            f"{info.world_size} processes"
        )
    data_seed = stream_seed(cfg.train.seed, 0)  # the sampler adds the epoch
    sampler = DistributedSampler(train_set, seed=data_seed) if info.enabled else None
    common = {"num_workers": d.num_workers, "pin_memory": torch.cuda.is_available()}
    train_loader = DataLoader(
        train_set,
        batch_size=per_rank,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(train_set) >= cfg.train.batch_size,
        generator=generator,
        persistent_workers=False,
        **common,
    )
    # Every image exactly once over the ranks (DistributedSampler would pad with repeats);
    # whole images ("test") go one at a time, as in test.py.
    val_shard = Subset(val_set, range(info.rank, len(val_set), info.world_size))
    val_batch = per_rank if d.valid_mode == "valid" else 1
    val_loader = DataLoader(val_shard, batch_size=val_batch, **common)
    return train_loader, val_loader, sampler


def sync_batchnorm(
    net: nn.Module,
    cr_loss: ContrastiveLoss | None,
    cfg: Config,
    info: DistInfo,
    device: torch.device,
) -> tuple[nn.Module, ContrastiveLoss | None]:
    """The network and the CR backbone (whose training-mode statistics are part of the loss)
    with SyncBatchNorm under DDP on GPUs (train.sync_batchnorm)."""
    parts = nn.ModuleList([net] if cr_loss is None else [net, cr_loss])
    parts = convert_sync_batchnorm(parts, info, device, cfg.train.sync_batchnorm)
    return parts[0], (None if cr_loss is None else parts[1])


def write_protocol_report(cfg: Config, run_dir: Path) -> None:
    """Print, and save in the run folder, how this run's config departs from the paper's."""
    report = protocol_report(cfg)
    (run_dir / "protocol_differences.txt").write_text(report)
    print(report, end="")


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train; returns the best validation PSNR/SSIM and the run folder's checkpoints."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    check_names(cfg)
    if args.print_config:
        print(dump_config(cfg), end="")
        return {}
    if args.print_test_ckpt:
        print(checkpoint_to_test(cfg) or "")
        return {}
    info = init_distributed()
    try:
        return _train(cfg, args, info, argv)
    finally:
        cleanup(info)


def _train(cfg: Config, args: argparse.Namespace, info: DistInfo, argv: list[str] | None) -> dict:
    device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    run_dir = cfg.run_dir
    last_path, best_path = run_dir / "last.pth", run_dir / "best.pth"

    resume_ckpt = None
    if args.resume:
        resume_ckpt = checkpoint_to_resume(cfg, last_path)
        if resume_ckpt["epoch"] == total_epochs(cfg):
            if info.is_main and not args.prepare_domains:
                print(
                    f"nothing to do: {last_path} has finished all {total_epochs(cfg)} epochs "
                    "(train.epochs=N with --resume trains it longer)"
                )
            return {"best_psnr": resume_ckpt["best_psnr"], "run_dir": str(run_dir)}
    elif last_path.exists() or best_path.exists():
        raise FileExistsError(
            f"{run_dir} already holds checkpoints: pass --resume to continue that run, "
            "or choose another exp_name=... / output_dir=..."
        )

    if info.is_main:
        generate_if_configured(cfg.data)
    barrier(info)

    check_data(cfg, info)
    seed_everything(stream_seed(cfg.train.seed, info.rank))
    train_text = test_text = None
    text_dim = None
    if cfg.model.needs_text:
        train_text = text_features(cfg, cfg.data.train_split, info, device)
        test_text = text_features(cfg, cfg.data.test_split, info, device)
        text_dim = embedding_width(cfg.clip.arch)
    if args.prepare_domains:
        return {}
    if info.is_main:
        record_run(cfg, run_dir, argv)

    generator = torch.Generator()
    train_loader, val_loader, sampler = make_loaders(cfg, info, train_text, test_text, generator)

    speed = speed_on(cfg, device)
    net = build_network(cfg, text_dim, speed).to(device)
    if cfg.model.init_from and resume_ckpt is None:
        load_weights(net, read_file(cfg.model.init_from), cfg.model.init_from, cfg.model.name)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=cfg.train.epochs, eta_min=cfg.train.lr * cfg.train.lr_min_ratio
    )
    use_scaler = device.type == "cuda" and cfg.precision.train == "fp16"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    cr_loss = None
    if cfg.loss.cr_weight > 0:
        loss_cfg = cfg.loss
        cr_loss = build_contrastive_loss(
            loss_cfg.resnet_weights, loss_cfg.resnet_imagenet_norm, loss_cfg.resnet_batchnorm
        ).to(device)
    net, cr_loss = sync_batchnorm(net, cr_loss, cfg, info, device)

    start_epoch, best_psnr, global_step = 0, -math.inf, 0
    if resume_ckpt is not None:
        net.load_state_dict(resume_ckpt["model"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        scaler.load_state_dict(resume_ckpt["scaler"])
        start_epoch, best_psnr = resume_ckpt["epoch"], resume_ckpt["best_psnr"]
        global_step = resume_ckpt["global_step"]
        set_rng_state(resume_ckpt["rng"][min(info.rank, len(resume_ckpt["rng"]) - 1)])
        if info.is_main:
            print(f"resuming {last_path} after epoch {start_epoch} (best PSNR {best_psnr:.2f})")
        planned = resume_ckpt["config"]["train"]["epochs"]
        if planned != cfg.train.epochs:
            before = optimizer.param_groups[0]["lr"]
            replan_schedule(optimizer, scheduler, cfg.train.epochs, start_epoch)
            if info.is_main:
                print(
                    f"train.epochs {planned} -> {cfg.train.epochs}: the cosine schedule is "
                    f"re-planned for {cfg.train.epochs} epochs, so the learning rate goes from "
                    f"{before:.3g} to {optimizer.param_groups[0]['lr']:.3g}"
                )

    model: nn.Module = net
    if speed.compile:
        model = torch.compile(model)
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if device.type == "cuda" else None
        )

    stats = [b for b in net.buffers() if b.is_floating_point()]
    stats_before = [b.clone() for b in stats]
    writer = SummaryWriter(str(run_dir / "tensorboard")) if info.is_main else None

    def payload(epoch: int, gather: bool = True) -> dict[str, Any]:
        """Everything needed to continue or evaluate the run, `epoch` = epochs completed.

        Every rank's RNG state is gathered (a collective: all ranks call this together), except
        when interrupted, where ranks may not meet again.
        """
        rng: list[Any] = [rng_state()]
        if info.enabled and gather:
            rng = [None] * info.world_size
            torch.distributed.all_gather_object(rng, rng_state())
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": net.state_dict(),
            "model_name": cfg.model.name,
            "text_dim": text_dim,
            "config": config_to_dict(cfg),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "global_step": global_step,
            "best_psnr": best_psnr,
            "rng": rng,
        }

    def save(obj: dict[str, Any], path: Path) -> None:
        if not info.is_main:
            return
        try:
            save_atomic(obj, path)
        except OSError as e:
            raise OSError(
                f"could not write checkpoint {path} ({e}); the previous {path.name}, if any, is "
                "intact. Free disk space, then continue with --resume"
            ) from e

    end_epoch = total_epochs(cfg)
    if args.stop_after_epochs is not None:
        end_epoch = min(end_epoch, start_epoch + args.stop_after_epochs)
    result: dict[str, Any] = {"best_psnr": best_psnr, "run_dir": str(run_dir)}
    epoch, step = start_epoch, 0
    try:
        for epoch in range(start_epoch, end_epoch):
            generator.manual_seed(stream_seed(cfg.train.seed, epoch))
            if sampler is not None:
                sampler.set_epoch(epoch)
            model.train()
            bar = tqdm(
                train_loader,
                desc=f"epoch {epoch + 1}/{total_epochs(cfg)}",
                disable=None if info.is_main else True,  # no bar on other ranks or in logs
                leave=False,
                dynamic_ncols=True,
            )
            for step, batch in enumerate(bar):
                hazy = batch["hazy"].to(device, non_blocking=True)
                gt = batch["gt"].to(device, non_blocking=True)
                text = batch["text"].to(device, non_blocking=True) if "text" in batch else None
                # A non-finite forward pass also poisons BatchNorm's running statistics.
                for saved, live in zip(stats_before, stats, strict=True):
                    saved.copy_(live)
                with autocast(device, train_amp(cfg, device)):
                    out = model(hazy, text)
                    loss = training_loss(out, gt, hazy, cr_loss, cfg.loss.cr_weight)
                bad = (~torch.isfinite(loss)).float().reshape(1)
                if all_reduce_sum(bad, info).item() > 0:
                    for saved, live in zip(stats_before, stats, strict=True):
                        live.copy_(saved)
                    where = f"epoch {epoch + 1}, step {step + 1} (global step {global_step + 1})"
                    if cfg.train.nonfinite == "skip":
                        if info.is_main:
                            tqdm.write(f"non-finite loss at {where}: step skipped")
                        optimizer.zero_grad(set_to_none=True)
                        continue
                    good = run_dir / "last_good.pth"
                    save(payload(epoch), good)
                    raise NonFiniteLossError(
                        f"loss is {loss.item()} at {where}; the weights before this step are in "
                        f"{good} and the last completed epoch in {last_path}. Lower train.lr, "
                        "or set train.nonfinite=skip to skip such steps"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                global_step += 1
                if writer is not None:
                    lr = optimizer.param_groups[0]["lr"]
                    value = loss.item()
                    bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
                    writer.add_scalar("train/loss", value, global_step)
                    writer.add_scalar("train/lr", lr, global_step)
            scheduler.step()

            if (epoch + 1) % cfg.train.eval_freq == 0 or epoch + 1 == total_epochs(cfg):
                val_psnr, val_ssim, grid = validate(model, val_loader, device, cfg, info)
                improved = val_psnr > best_psnr
                best_psnr = max(best_psnr, val_psnr)
                result.update(best_psnr=best_psnr, last_psnr=val_psnr, last_ssim=val_ssim)
                if writer is not None:
                    writer.add_scalar("val/psnr", val_psnr, epoch + 1)
                    writer.add_scalar("val/ssim", val_ssim, epoch + 1)
                    if grid is not None:
                        writer.add_images("val/hazy|output|gt", grid, epoch + 1)
                        sheet = make_grid(grid, nrow=1, padding=4, pad_value=1.0)
                        write_rgb(run_dir / "samples" / "val_latest.png", sheet)
                        if improved:
                            write_rgb(run_dir / "samples" / "val_best.png", sheet)
                    tqdm.write(
                        f"epoch {epoch + 1}: val PSNR {val_psnr:.2f} SSIM {val_ssim:.4f} "
                        f"(best {best_psnr:.2f})"
                    )
                if improved:
                    save(payload(epoch + 1), best_path)
            save(payload(epoch + 1), last_path)
    except KeyboardInterrupt:
        interrupted = run_dir / "interrupted.pth"
        save(payload(epoch, gather=False), interrupted)
        if info.is_main:
            print(
                f"\ninterrupted in epoch {epoch + 1}, step {step + 1}: current weights saved to "
                f"{interrupted}; `--resume` continues from {last_path} (last completed epoch)",
                file=sys.stderr,
            )
        raise SystemExit(130) from None
    finally:
        if writer is not None:
            writer.close()
    if info.is_main and end_epoch < total_epochs(cfg):
        best = f"best validation PSNR so far {best_psnr:.2f} dB, " if best_psnr > -math.inf else ""
        print(
            f"stopped after epoch {end_epoch} of {total_epochs(cfg)}; continue with --resume "
            f"({best}checkpoints in {run_dir})"
        )
    elif info.is_main:
        print(f"done: best validation PSNR {best_psnr:.2f} dB, checkpoints in {run_dir}")
    return result


if __name__ == "__main__":
    run(main)

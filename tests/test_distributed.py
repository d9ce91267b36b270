"""Many processes train like one GPU: every validation image once, SyncBatchNorm where CUDA
allows it, and the DDP equality check's CPU mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision
from torch import nn

import training_run
from datasets.synthetic import make_synthetic_dataset
from networks import build_network
from utils.config import load_config
from utils.distributed import DistInfo
from utils.losses import ContrastiveLoss, resnet_slices
from utils.speed import speed_for

from .helpers import REPO, load_entry

train = load_entry("train")
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def _validation(root: Path, info: DistInfo) -> tuple[float, float, list[str]]:
    """train.py's validation of a tiny seeded network, and the image names this rank saw."""
    cfg = load_config(
        QUICKSTART,
        [
            f"data.root={root}",
            "data.patch_size=32",
            "data.num_workers=0",
            "model.name=mixdehazenet-t",
            "model.depths=[1,1,1,1,1]",
            "train.batch_size=3",  # one image a batch: rank 0 runs 4 batches, the others 3
        ],
    )
    loader = training_run.make_loaders(cfg, info, *train.open_splits(cfg), torch.Generator()).val
    names = [name for batch in loader for name in batch["name"]]
    torch.manual_seed(0)
    net = build_network(cfg, None, speed_for(cfg, torch.device("cpu"), "train")[0])
    model = nn.parallel.DistributedDataParallel(net) if info.enabled else net
    psnr, ssim, _ = train.validate(model, loader, torch.device("cpu"), cfg, info)
    return psnr, ssim, names


def _validation_worker(rank: int, world: int, tmp: Path, root: Path) -> None:
    torch.set_num_threads(1)
    init = f"file://{tmp / 'init'}"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        psnr, ssim, names = _validation(root, DistInfo(rank=rank, world_size=world))
        (tmp / f"rank{rank}.json").write_text(json.dumps([psnr, ssim, names]))
    finally:
        dist.destroy_process_group()


def test_validation_over_three_processes_sees_every_image_once(tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", n_train=2, n_test=10, size=(40, 56), seed=0)
    psnr, ssim, names = _validation(root, DistInfo())
    assert len(names) == 10
    mp.start_processes(
        _validation_worker, args=(3, tmp_path, root), nprocs=3, join=True, start_method="fork"
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(3)]
    seen = [name for _, _, rank_names in ranks for name in rank_names]
    assert sorted(seen) == sorted(names)  # 4 + 3 + 3, no image repeated to even the ranks out
    for rank_psnr, rank_ssim, _ in ranks:
        assert rank_psnr == pytest.approx(psnr, rel=1e-9)
        assert rank_ssim == pytest.approx(ssim, rel=1e-6)  # float32 SSIM


def _batchnorm_kinds(module: nn.Module) -> set[type]:
    return {type(m) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def _net_and_cr(cfg):
    return build_network(cfg, 32, speed_for(cfg, torch.device("cpu"), "train")[0]), ContrastiveLoss(
        resnet_slices(torchvision.models.resnet18())
    )


def test_ddp_on_gpus_syncs_the_batchnorm_of_network_and_cr_backbone(capsys):
    cfg = load_config(QUICKSTART, ["model.depths=[1,1,1,1,1]"])
    two = DistInfo(rank=0, world_size=2)
    net, cr = _net_and_cr(cfg)
    keys = set(net.state_dict())
    net, cr = training_run.sync_batchnorm(net, cr, cfg, two, torch.device("cuda", 0))
    assert _batchnorm_kinds(net) == _batchnorm_kinds(cr) == {nn.SyncBatchNorm}
    assert all(m.training for m in cr.slices.modules())  # the authors' training-mode CR
    assert set(net.state_dict()) == keys  # checkpoints load into a one-GPU network
    assert "per process" not in capsys.readouterr().out

    for info, device, overrides in (
        (two, torch.device("cpu"), []),  # torch's SyncBatchNorm refuses CPU tensors
        (two, torch.device("cuda", 0), ["train.sync_batchnorm=false"]),
        (DistInfo(), torch.device("cuda", 0), []),
    ):
        cfg = load_config(QUICKSTART, ["model.depths=[1,1,1,1,1]", *overrides])
        net, cr = training_run.sync_batchnorm(*_net_and_cr(cfg), cfg, info, device)
        assert _batchnorm_kinds(net) == _batchnorm_kinds(cr) == {nn.BatchNorm2d}
    assert capsys.readouterr().out.count("normalises BatchNorm over its own share") == 1


def test_ddp_equality_check_runs_on_cpu(tmp_path):
    from bench import ddp_equality

    out = tmp_path / "ddp.json"
    assert ddp_equality.main(["--device", "cpu", "--steps", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [(c["check"], c["ok"]) for c in report["checks"]] == [
        ("frozen-bn", True),
        ("per-process", True),
    ]

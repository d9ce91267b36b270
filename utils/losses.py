"""Training loss: named, weighted terms; by default L1 plus 0.1 x contrastive regularisation (CR)
over frozen ResNet-152 features."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from utils.config import CRBatchNorm, LossConfig
from utils.distributed import all_reduce_sum_with_grad
from utils.errors import ConfigError, WeightsError
from utils.image import from_model_range
from utils.weights import RESNET152_WEIGHTS

CR_LAYER_WEIGHTS = (1 / 16, 1 / 8, 1 / 4, 1.0)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def resnet_slices(resnet: torchvision.models.ResNet) -> nn.ModuleList:
    """Cut a torchvision ResNet into the four feature stages the CR loss compares."""
    stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1)
    return nn.ModuleList([stem, resnet.layer2, resnet.layer3, resnet.layer4])


class ContrastiveLoss(nn.Module):
    """Pulls the output's features towards the clean image's and away from the hazy input's.

    The backbone's parameters are frozen. With batchnorm="batch" (the authors' loss) its
    BatchNorm layers stay in training mode: each of the three calls (output, GT, hazy) is
    normalised with its own batch statistics, the output's gradient flows through them, and
    the running statistics drift unused. "frozen" keeps them in eval mode (ImageNet
    statistics). Either way the mode is fixed here, whatever `train()` / `eval()` ask.

    Under torch.distributed the L1 distances are means over the whole global batch, as on one
    GPU: their sums are added over the processes (gradients too) before the ratio is taken.
    """

    def __init__(
        self,
        slices: nn.ModuleList,
        imagenet_norm: bool = False,
        batchnorm: CRBatchNorm = "batch",
    ) -> None:
        super().__init__()
        if batchnorm not in get_args(CRBatchNorm):
            raise ValueError(f"batchnorm must be 'batch' or 'frozen', got {batchnorm!r}")
        self.slices = slices.train(batchnorm == "batch").requires_grad_(False)
        self.imagenet_norm = imagenet_norm
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> ContrastiveLoss:
        return self  # the BatchNorm mode is `batchnorm`'s, not the caller's

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.imagenet_norm:
            x = (from_model_range(x) - self.mean) / self.std
        feats = []
        for s in self.slices:
            x = s(x)
            feats.append(x)
        return feats

    def forward(self, output: torch.Tensor, gt: torch.Tensor, hazy: torch.Tensor) -> torch.Tensor:
        out_f = self._features(output)
        with torch.no_grad():
            gt_f = self._features(gt)
            hazy_f = self._features(hazy)
        # Per stage: sum |a - p|, sum |a - n| and the element count, summed over processes.
        per_stage = []
        for a, p, n in zip(out_f, gt_f, hazy_f, strict=True):
            a, p, n = a.float(), p.float(), n.float()  # fp16 features: sums would overflow
            count = torch.tensor(float(a.numel()), device=a.device)
            per_stage.append(torch.stack([(a - p).abs().sum(), (a - n).abs().sum(), count]))
        d_ap, d_an, count = all_reduce_sum_with_grad(torch.stack(per_stage)).unbind(dim=1)
        weights = torch.tensor(CR_LAYER_WEIGHTS, device=count.device)
        return (weights * (d_ap / count) / (d_an / count + 1e-7)).sum()


def build_contrastive_loss(
    weights: str | None, imagenet_norm: bool = False, batchnorm: CRBatchNorm = "batch"
) -> ContrastiveLoss:
    """ResNet-152 with ImageNet weights from a local file, or torchvision's cache/download."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(
                f"loss.resnet_weights: {path} does not exist; point it at torchvision's "
                "resnet152-394f9c45.pth (or set loss.cr_weight=0 to train without CR)"
            )
        resnet = torchvision.models.resnet152(weights=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        resnet.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    else:
        try:
            resnet = torchvision.models.resnet152(
                weights=torchvision.models.ResNet152_Weights[RESNET152_WEIGHTS]
            )
        except Exception as e:
            raise WeightsError(
                "could not load ImageNet ResNet-152 weights for the contrastive loss "
                f"({type(e).__name__}: {e}). Without internet, download "
                "https://download.pytorch.org/models/resnet152-394f9c45.pth elsewhere and set "
                "loss.resnet_weights=/path/to/resnet152-394f9c45.pth, or copy it into "
                f"{torch.hub.get_dir()}/checkpoints/; or set loss.cr_weight=0 to train without CR"
            ) from e
    return ContrastiveLoss(resnet_slices(resnet), imagenet_norm, batchnorm)


class L1Loss(nn.Module):
    """Mean absolute error between the output and the clean image."""

    def forward(self, output: torch.Tensor, gt: torch.Tensor, hazy: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(output, gt)


@dataclass(frozen=True)
class LossTerm:
    """A term of the training loss: its weight's key in the `loss` section (a term of weight
    0 is never built) and how to build its module, called as term(output, gt, hazy)."""

    weight_key: str
    build: Callable[[LossConfig], nn.Module]


def _contrastive(cfg: LossConfig) -> ContrastiveLoss:
    return build_contrastive_loss(
        cfg.resnet_weights, cfg.resnet_imagenet_norm, cfg.resnet_batchnorm
    )


# The terms, summed in this order. A new term: a weight key in LossConfig (default 0 keeps the
# published loss) with its role in utils/config.KEY_ROLES, its value in utils/protocol.py and an
# entry here (docs/EXTENDING.md).
LOSS_TERMS: dict[str, LossTerm] = {
    "l1": LossTerm("l1_weight", lambda cfg: L1Loss()),
    "cr": LossTerm("cr_weight", _contrastive),
}


class Criterion(nn.Module):
    """The training loss, the weighted sum of named terms. It runs inside the training
    autocast, as the authors' loss does: under fp16 the CR ResNet's convolutions compute in fp16
    (its distances are summed in fp32) and L1 in fp32, as autocast runs it."""

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float]) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.weights = dict(weights)

    def values(
        self, output: torch.Tensor, gt: torch.Tensor, hazy: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Each term's value, unweighted (what train.py logs as train/loss_<name>)."""
        output, hazy = output.float(), hazy.float()
        return {name: term(output, gt, hazy) for name, term in self.terms.items()}

    def total(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of `values`, in term order."""
        weighted = [self.weights[name] * value for name, value in values.items()]
        return sum(weighted[1:], weighted[0])

    def forward(self, output: torch.Tensor, gt: torch.Tensor, hazy: torch.Tensor) -> torch.Tensor:
        return self.total(self.values(output, gt, hazy))


def loss_weights(cfg: LossConfig) -> dict[str, float]:
    """The weight of each term the `loss` section asks for (those not 0), checked before
    anything is built: no term at all is an error."""
    weights = {name: getattr(cfg, term.weight_key) for name, term in LOSS_TERMS.items()}
    weights = {name: w for name, w in weights.items() if w != 0}
    if not weights:
        keys = ", ".join(f"loss.{term.weight_key}" for term in LOSS_TERMS.values())
        raise ConfigError(f"loss: every term's weight is 0 ({keys}); give at least one a weight")
    return weights


def build_criterion(cfg: LossConfig, device: torch.device) -> Criterion:
    """The loss the `loss` section asks for: each term whose weight is not 0 (so the ResNet is
    built only when cr_weight > 0)."""
    weights = loss_weights(cfg)
    terms = {name: LOSS_TERMS[name].build(cfg) for name in weights}
    return Criterion(terms, weights).to(device)

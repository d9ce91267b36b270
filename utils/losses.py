"""Training loss: L1 plus contrastive regularisation (CR) over frozen ResNet-152 features."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from utils.image import from_model_range

CR_LAYER_WEIGHTS = (1 / 16, 1 / 8, 1 / 4, 1.0)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def resnet_slices(resnet: torchvision.models.ResNet) -> nn.ModuleList:
    """Cut a torchvision ResNet into the four feature stages the CR loss compares."""
    stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1)
    return nn.ModuleList([stem, resnet.layer2, resnet.layer3, resnet.layer4])


class ContrastiveLoss(nn.Module):
    """Pulls the output's features towards the clean image's and away from the hazy input's.

    The backbone is frozen and kept in eval mode, so its BatchNorm statistics never change.
    """

    def __init__(self, slices: nn.ModuleList, imagenet_norm: bool = False) -> None:
        super().__init__()
        self.slices = slices.eval().requires_grad_(False)
        self.imagenet_norm = imagenet_norm
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> ContrastiveLoss:
        return self  # the backbone stays in eval mode whatever the caller asks

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
        loss = output.new_zeros(())
        for w, a, p, n in zip(CR_LAYER_WEIGHTS, out_f, gt_f, hazy_f, strict=True):
            loss = loss + w * F.l1_loss(a, p) / (F.l1_loss(a, n) + 1e-7)
        return loss


def build_contrastive_loss(weights: str | None, imagenet_norm: bool = False) -> ContrastiveLoss:
    """ResNet-152 with ImageNet weights from a local file, or torchvision's cache/download."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"loss.resnet_weights: {path} does not exist; point it at torchvision's "
                "resnet152-394f9c45.pth (or set loss.cr_weight=0 to train without CR)"
            )
        resnet = torchvision.models.resnet152(weights=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        resnet.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    else:
        try:
            resnet = torchvision.models.resnet152(
                weights=torchvision.models.ResNet152_Weights.IMAGENET1K_V1
            )
        except Exception as e:
            raise RuntimeError(
                "could not load ImageNet ResNet-152 weights for the contrastive loss "
                f"({type(e).__name__}: {e}). Without internet, download "
                "https://download.pytorch.org/models/resnet152-394f9c45.pth elsewhere and set "
                "loss.resnet_weights=/path/to/resnet152-394f9c45.pth, or copy it into "
                f"{torch.hub.get_dir()}/checkpoints/; or set loss.cr_weight=0 to train without CR"
            ) from e
    return ContrastiveLoss(resnet_slices(resnet), imagenet_norm=imagenet_norm)

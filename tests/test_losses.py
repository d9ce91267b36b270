"""Contrastive regularisation: the authors' loss (ResNet-152 BatchNorm in training mode) by
default, the frozen-statistics variant, the weights file, ImageNet normalisation, clear errors."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from utils.config import ConfigError, LossConfig
from utils.losses import (
    CR_LAYER_WEIGHTS,
    LOSS_TERMS,
    ContrastiveLoss,
    build_contrastive_loss,
    build_criterion,
    resnet_slices,
)


@pytest.fixture(scope="module")
def resnet152_file(tmp_path_factory) -> tuple[torchvision.models.ResNet, Path]:
    """A random ResNet-152 (parameters frozen, as the authors' are) and a file of its weights."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet152(weights=None).requires_grad_(False)
    path = tmp_path_factory.mktemp("resnet") / "resnet152.pth"
    torch.save(resnet.state_dict(), path)
    return resnet, path


def _images(seed: int, side: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output, GT and hazy batches of two images in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    out, gt, hazy = torch.rand(3, 2, 3, side, side, generator=gen) * 2 - 1
    return out, gt, hazy


def _authors_cr(resnet: nn.Module, out: torch.Tensor, gt: torch.Tensor, hazy: torch.Tensor):
    """The CR as the authors' code computes it: the ResNet's children cut at the same places
    (stem to layer1, layer2, layer3, layer4), three separate calls, weights 1/16 ... 1."""
    children = list(resnet.children())
    stages = [nn.Sequential(*children[:-5]), *(nn.Sequential(c) for c in children[-5:-2])]

    def features(x):
        feats = []
        for stage in stages:
            x = stage(x)
            feats.append(x)
        return feats

    a_f, p_f, n_f = features(out), features(gt), features(hazy)
    loss = 0
    for w, a, p, n in zip((1 / 16, 1 / 8, 1 / 4, 1.0), a_f, p_f, n_f, strict=True):
        loss = loss + w * F.l1_loss(a, p.detach()) / (F.l1_loss(a, n.detach()) + 1e-7)
    return loss


def _loss_and_grad(cr, out, gt, hazy) -> tuple[float, torch.Tensor]:
    x = out.clone().requires_grad_()
    loss = cr(x, gt, hazy)
    loss.backward()
    return loss.item(), x.grad


def test_layer_weights_are_the_authors():
    assert CR_LAYER_WEIGHTS == (1 / 16, 1 / 8, 1 / 4, 1)


def test_default_cr_is_the_authors_loss_over_the_given_weights(resnet152_file):
    resnet, path = resnet152_file
    cr = build_contrastive_loss(str(path))  # its own random init is replaced by the file's
    loaded, saved = cr.slices.state_dict(), resnet.state_dict()
    assert torch.equal(loaded["0.0.weight"], saved["conv1.weight"])
    assert torch.equal(loaded["3.2.conv3.weight"], saved["layer4.2.conv3.weight"])

    out, gt, hazy = _images(1)
    value, grad = _loss_and_grad(cr, out, gt, hazy)
    ref_value, ref_grad = _loss_and_grad(
        lambda x, p, n: _authors_cr(resnet.train(), x, p, n), out, gt, hazy
    )
    assert value == pytest.approx(ref_value, rel=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-9)
    assert all(p.grad is None for p in cr.parameters())

    with torch.no_grad():
        frozen = ContrastiveLoss(resnet_slices(resnet), batchnorm="frozen")(out, gt, hazy)
    assert abs(frozen.item() - value) > 1e-3 * value


def test_batchnorm_mode_is_fixed_whatever_train_or_eval_asks():
    resnet = torchvision.models.resnet18()
    batch = ContrastiveLoss(resnet_slices(torchvision.models.resnet18()))
    frozen = ContrastiveLoss(resnet_slices(resnet), batchnorm="frozen")
    batch.eval()
    frozen.train()
    assert all(m.training for m in batch.slices.modules())
    assert not any(m.training for m in frozen.slices.modules())
    assert not any(p.requires_grad for p in [*batch.parameters(), *frozen.parameters()])

    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    out, gt, hazy = _images(2)
    value = frozen(out, gt, hazy).item()
    assert all(torch.equal(before[k], v) for k, v in frozen.state_dict().items())
    with torch.no_grad():
        expected = _authors_cr(resnet.eval(), out, gt, hazy)
    assert value == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="batchnorm"):
        ContrastiveLoss(resnet_slices(torchvision.models.resnet18()), batchnorm="eval")


def test_cr_of_the_target_is_zero():
    cr = ContrastiveLoss(resnet_slices(torchvision.models.resnet18()))
    _, gt, hazy = _images(3)
    assert cr(gt, gt, hazy).item() == pytest.approx(0.0, abs=1e-6)


def test_imagenet_normalisation_feeds_the_resnet_normalised_images():
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18().requires_grad_(False)
    out, gt, hazy = _images(4)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def imagenet(x):
        return ((x + 1) / 2 - mean) / std

    normed = ContrastiveLoss(resnet_slices(resnet), imagenet_norm=True)(out, gt, hazy)
    expected = _authors_cr(resnet.train(), imagenet(out), imagenet(gt), imagenet(hazy))
    assert normed.item() == pytest.approx(expected.item(), rel=1e-5)
    plain = ContrastiveLoss(resnet_slices(resnet))(out, gt, hazy)
    assert abs(plain.item() - normed.item()) > 1e-3 * plain.item()


def test_missing_weights_file_says_what_to_do(tmp_path):
    path = tmp_path / "resnet152.pth"
    with pytest.raises(FileNotFoundError) as info:
        build_contrastive_loss(str(path))
    assert str(info.value) == (
        f"loss.resnet_weights: {path} does not exist; point it at torchvision's "
        "resnet152-394f9c45.pth (or set loss.cr_weight=0 to train without CR)"
    )


def test_criterion_is_l1_plus_the_weighted_cr_of_the_loss_section(resnet152_file):
    """MODEL_SPEC's loss, L1(out, GT) + 0.1 * CR, built from the `loss` config section."""
    resnet, path = resnet152_file
    out, gt, hazy = _images(2)
    cfg = LossConfig(resnet_weights=str(path))
    criterion = build_criterion(cfg, torch.device("cpu"))
    cr = _authors_cr(resnet.train(), out, gt, hazy)
    expected = (out - gt).abs().mean() + 0.1 * cr
    assert criterion(out, gt, hazy).item() == pytest.approx(expected.item(), rel=1e-5)
    l1_only = build_criterion(
        replace(cfg, cr_weight=0.0, resnet_weights="/nowhere.pth"), torch.device("cpu")
    )
    assert list(l1_only.terms) == ["l1"]  # the ResNet is not even built
    assert l1_only(out, gt, hazy).item() == pytest.approx((out - gt).abs().mean().item())


def test_without_a_weights_file_torchvisions_imagenet_weights_are_asked_for(monkeypatch):
    asked = []

    def offline(weights):
        asked.append(weights)
        raise RuntimeError("no internet")

    monkeypatch.setattr(torchvision.models, "resnet152", offline)
    with pytest.raises(FileNotFoundError) as info:
        build_contrastive_loss(None)
    assert asked == [torchvision.models.ResNet152_Weights.IMAGENET1K_V1]
    assert str(info.value) == (
        "could not load ImageNet ResNet-152 weights for the contrastive loss (RuntimeError: no "
        "internet). Without internet, download "
        "https://download.pytorch.org/models/resnet152-394f9c45.pth elsewhere and set "
        "loss.resnet_weights=/path/to/resnet152-394f9c45.pth, or copy it into "
        f"{torch.hub.get_dir()}/checkpoints/; or set loss.cr_weight=0 to train without CR"
    )


def test_loss_section_settings_reach_the_cr_and_nested_weight_files_load(resnet152_file, tmp_path):
    resnet, _ = resnet152_file
    path = tmp_path / "nested.pth"  # a training checkpoint's layout: {"state_dict": ...}
    torch.save({"state_dict": resnet.state_dict()}, path)
    cfg = LossConfig(resnet_weights=str(path), resnet_imagenet_norm=True, resnet_batchnorm="frozen")
    cr = build_criterion(cfg, torch.device("cpu")).terms["cr"]
    assert cr.imagenet_norm is True
    assert not any(m.training for m in cr.slices.modules() if isinstance(m, nn.BatchNorm2d))
    assert torch.equal(cr.slices.state_dict()["0.0.weight"], resnet.state_dict()["conv1.weight"])


def test_the_default_terms_give_the_loss_bit_for_bit_as_l1_plus_weighted_cr(resnet152_file):
    """The named terms sum to exactly the number the loss was before it had terms."""
    _, path = resnet152_file
    out, gt, hazy = _images(3)
    criterion = build_criterion(LossConfig(resnet_weights=str(path)), torch.device("cpu"))
    assert list(criterion.terms) == list(LOSS_TERMS) == ["l1", "cr"]
    values = criterion.values(out, gt, hazy)
    assert torch.equal(values["l1"], F.l1_loss(out, gt))
    assert torch.equal(values["cr"], criterion.terms["cr"](out, gt, hazy))
    assert torch.equal(criterion(out, gt, hazy), F.l1_loss(out, gt) + 0.1 * values["cr"])


def test_each_term_takes_its_weight_and_a_loss_without_terms_is_refused(resnet152_file):
    _, path = resnet152_file
    out, gt, hazy = _images(4)
    cfg = LossConfig(l1_weight=0.5, cr_weight=0.25, resnet_weights=str(path))
    criterion = build_criterion(cfg, torch.device("cpu"))
    values = criterion.values(out, gt, hazy)
    assert torch.equal(criterion.total(values), 0.5 * values["l1"] + 0.25 * values["cr"])
    cr_only = build_criterion(replace(cfg, l1_weight=0.0), torch.device("cpu"))
    assert list(cr_only.terms) == ["cr"]
    with pytest.raises(ConfigError, match=r"loss\.l1_weight, loss\.cr_weight"):
        build_criterion(replace(cfg, l1_weight=0.0, cr_weight=0.0), torch.device("cpu"))

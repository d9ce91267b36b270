"""Contrastive regularisation: frozen backbone, the published formula, clear weight errors."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

from utils.losses import CR_LAYER_WEIGHTS, ContrastiveLoss, build_contrastive_loss, resnet_slices


@pytest.fixture(scope="module")
def cr() -> ContrastiveLoss:
    torch.manual_seed(0)
    return ContrastiveLoss(resnet_slices(torchvision.models.resnet18(weights=None)))


def test_cr_matches_the_formula_and_only_the_output_gets_gradients(cr):
    gen = torch.Generator().manual_seed(1)
    out = (torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1).requires_grad_()
    gt, hazy = torch.rand(2, 2, 3, 64, 64, generator=gen) * 2 - 1
    loss = cr(out, gt, hazy)
    loss.backward()
    assert out.grad is not None and out.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in cr.parameters())

    expected = torch.zeros(())
    a, p, n = out.detach(), gt, hazy
    with torch.no_grad():
        for w, stage in zip(CR_LAYER_WEIGHTS, cr.slices, strict=True):
            a, p, n = stage(a), stage(p), stage(n)
            expected += w * F.l1_loss(a, p) / (F.l1_loss(a, n) + 1e-7)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert cr(gt, gt, hazy).item() == pytest.approx(0.0, abs=1e-6)


def test_backbone_statistics_never_change(cr):
    before = {k: v.clone() for k, v in cr.state_dict().items()}
    cr.train()
    cr(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in cr.state_dict().items())


def test_missing_weights_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"loss\.resnet_weights.*loss\.cr_weight=0"):
        build_contrastive_loss(str(tmp_path / "resnet152.pth"))

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_msssim import ssim as msssim_ssim

from utils.metrics import psnr, ssim, ssim_downsample_factor


def _pair(h: int, w: int, b: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth target and a noisy output, so that pooling changes SSIM noticeably."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, h // 16 + 1, w // 16 + 1, generator=g)
    target = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    output = (target + 0.1 * torch.randn(b, 3, h, w, generator=g)).clamp(0, 1)
    return output, target


def _protocol_psnr(output: torch.Tensor, target: torch.Tensor) -> float:
    """The DehazeFormer test-script formula, float32, one image."""
    return (10 * torch.log10(1 / F.mse_loss(output, target))).item()


def _protocol_ssim(output: torch.Tensor, target: torch.Tensor, down: int) -> float:
    _, _, h, w = output.shape
    size = (int(h / down), int(w / down))
    return msssim_ssim(
        F.adaptive_avg_pool2d(output, size),
        F.adaptive_avg_pool2d(target, size),
        data_range=1,
        size_average=False,
    ).item()


def test_psnr_known_value():
    target = torch.full((2, 3, 8, 8), 0.5)
    output = target + 0.1
    assert torch.allclose(psnr(output, target), torch.tensor([20.0, 20.0], dtype=torch.float64))


def test_psnr_identical_images_is_inf():
    x = torch.rand(2, 3, 16, 16)
    assert torch.isinf(psnr(x, x)).all()
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)


@pytest.mark.parametrize(
    ("side", "down"),
    [(100, 1), (383, 1), (384, 2), (500, 2), (640, 2), (641, 3), (700, 3), (896, 4)],
)
def test_ssim_downsample_factor_rounds_half_to_even(side, down):
    assert ssim_downsample_factor(side, side + 37) == down
    assert ssim_downsample_factor(side + 37, side) == down


@pytest.mark.parametrize(("h", "w", "down"), [(300, 420, 1), (413, 550, 2), (641, 700, 3)])
def test_metrics_match_protocol_at_real_sizes(h, w, down):
    output, target = _pair(h, w)
    assert abs(psnr(output, target).item() - _protocol_psnr(output, target)) < 1e-4
    assert abs(ssim(output, target).item() - _protocol_ssim(output, target, down)) < 1e-6
    # The factor matters: pooling by another factor gives a visibly different SSIM.
    assert abs(ssim(output, target).item() - _protocol_ssim(output, target, down + 1)) > 1e-3


def test_batch_gives_per_image_values():
    output, target = _pair(48, 40, b=3, seed=1)
    batch_psnr, batch_ssim = psnr(output, target), ssim(output, target)
    assert batch_psnr.shape == batch_ssim.shape == (3,)
    for i in range(3):
        o, t = output[i : i + 1], target[i : i + 1]
        assert math.isclose(batch_psnr[i].item(), _protocol_psnr(o, t), abs_tol=1e-4)
        assert math.isclose(batch_ssim[i].item(), _protocol_ssim(o, t, 1), abs_tol=1e-6)


def test_psnr_averages_over_pixels_and_channels_per_image():
    target = torch.zeros(2, 3, 4, 4)
    output = target.clone()
    output[0, 1] = 0.25  # one channel of three off by 1/4: MSE 1/48
    output[1, :, :2] = 0.5  # half the pixels off by 1/2: MSE 1/8
    expected = [10 * math.log10(48), 10 * math.log10(8)]
    assert psnr(output, target).tolist() == pytest.approx(expected, abs=1e-9)


def test_ssim_of_flat_images_is_the_luminance_term():
    """For constant images a, b SSIM is (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 1)^2."""
    output, target = torch.full((1, 3, 16, 16), 0.5), torch.full((1, 3, 16, 16), 0.4)
    expected = (2 * 0.5 * 0.4 + 1e-4) / (0.5**2 + 0.4**2 + 1e-4)
    assert ssim(output, target).item() == pytest.approx(expected, abs=1e-6)


def test_values_within_float_noise_of_the_range_are_accepted():
    x = torch.full((1, 3, 16, 16), 0.5, dtype=torch.float64)
    for edge in (-1e-4, 1 + 1e-4):
        noisy = x.clone()
        noisy[0, 0, 0, 0] = edge
        for metric in (psnr, ssim):
            assert torch.isfinite(metric(noisy, x)).all()
            assert torch.isfinite(metric(x, noisy)).all()


@pytest.mark.parametrize("metric", [psnr, ssim])
@pytest.mark.parametrize("value", [-1e-3, 1.001, 1.5, 255.0])
def test_values_outside_the_range_are_refused_naming_the_argument(metric, value):
    x = torch.full((1, 3, 16, 16), 0.5)
    bad = x.clone()
    bad[0, 2, 3, 4] = value
    hint = r"\(map network outputs with utils\.image\.from_model_range first\)"
    with pytest.raises(ValueError, match=rf"^output values must lie in \[0, 1\].*{hint}$"):
        metric(bad, x)
    with pytest.raises(ValueError, match=r"^target values must lie in \[0, 1\]"):
        metric(x, bad)


@pytest.mark.parametrize("metric", [psnr, ssim])
@pytest.mark.parametrize("shape", [(1, 1, 16, 16), (1, 4, 16, 16), (3, 16, 16), (1, 1, 3, 16, 16)])
def test_only_rgb_batches_are_accepted(metric, shape):
    bad, good = torch.rand(shape), torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"^output must have shape \(B, 3, H, W\)"):
        metric(bad, good)
    with pytest.raises(ValueError, match=r"^target must have shape \(B, 3, H, W\)"):
        metric(good, bad)


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_non_tensors_are_refused_naming_their_type(metric):
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"^output must be a torch\.Tensor, got ndarray"):
        metric(x.numpy(), x)
    with pytest.raises(ValueError, match=r"^target must be a torch\.Tensor, got list"):
        metric(x, x.tolist())


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_bad_arguments_raise_clear_errors(metric):
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="shape"):
        metric(x[0], x[0])
    with pytest.raises(ValueError, match="shapes differ"):
        metric(x, torch.rand(1, 3, 16, 17))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metric(x * 2 - 1, x)
    with pytest.raises(ValueError, match="float"):
        metric((x * 255).to(torch.uint8), (x * 255).to(torch.uint8))

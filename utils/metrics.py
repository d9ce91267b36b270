"""PSNR and SSIM exactly as the DehazeFormer test protocol computes them (docs/PROTOCOL.md).

Both take (B, 3, H, W) float tensors in [0, 1] (use `utils.image.from_model_range` on network
outputs first) and return one value per image, shape (B,); the reported figure is the mean.
"""

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim as _msssim_ssim

# Values this far outside [0, 1] are accepted as float rounding noise.
_RANGE_TOLERANCE = 1e-4


def _check_pair(output: torch.Tensor, target: torch.Tensor) -> None:
    for name, t in (("output", output), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a float tensor in [0, 1], got dtype {t.dtype}")
        if t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"{name} must have shape (B, 3, H, W), got {tuple(t.shape)}")
    if output.shape != target.shape:
        raise ValueError(
            f"output and target shapes differ: {tuple(output.shape)} vs {tuple(target.shape)}"
        )
    for name, t in (("output", output), ("target", target)):
        lo, hi = t.min().item(), t.max().item()
        if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
            raise ValueError(
                f"{name} values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}] "
                "(map network outputs with utils.image.from_model_range first)"
            )


def psnr(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, 10 * log10(1 / MSE) over all pixels and channels, shape (B,).

    Computed in float64 (it agrees with the protocol's float32 to far below 1e-4 dB).
    Identical images give +inf, the exact value; no cap is applied.
    """
    _check_pair(output, target)
    diff = output.detach().double() - target.detach().double()
    mse = diff.pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1 / mse)


def ssim_downsample_factor(height: int, width: int) -> int:
    """The protocol's pooling factor: max(1, round(min(H, W) / 256)).

    Python's round() (half to even) as in the DehazeFormer test script: 384 px -> 2,
    640 px -> 2, 896 px -> 4.
    """
    return max(1, round(min(height, width) / 256))


def ssim(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM, shape (B,), after the protocol's adaptive average pooling.

    Both images are pooled to (int(H / down), int(W / down)), then pytorch_msssim.ssim with
    its defaults (11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03), data range 1, in
    float32, averaged over channels.
    """
    _check_pair(output, target)
    _, _, h, w = output.shape
    down = ssim_downsample_factor(h, w)
    size = (int(h / down), int(w / down))
    out = F.adaptive_avg_pool2d(output.detach().float(), size)
    tgt = F.adaptive_avg_pool2d(target.detach().float(), size)
    return _msssim_ssim(out, tgt, data_range=1, size_average=False)

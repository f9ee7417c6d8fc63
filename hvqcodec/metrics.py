"""Image quality metrics: RGB PSNR and the standard 5-scale MS-SSIM (Wang et al., 2003)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# The 11x11 window must fit the coarsest of five scales, each halved (rounding down): 11 * 16 = 176 pixels.
MS_SSIM_MIN_SIDE = 176


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> float:
    """PSNR in dB between two images on the same scale (peak 1.0 for [0, 1], 255 for uint8 values)."""
    mse = F.mse_loss(a.double(), b.double()).item()
    return float("inf") if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor, data_range: float):
    """Mean SSIM and mean contrast-structure term, per image, with a valid (unpadded) Gaussian filter."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    channels = x.shape[1]
    k = window.to(x)
    kh = k.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    kw = k.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kh, groups=channels), kw, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    sigma_xx = blur(x * x) - mu_x ** 2
    sigma_yy = blur(y * y) - mu_y ** 2
    sigma_xy = blur(x * y) - mu_x * mu_y
    cs = (2 * sigma_xy + c2) / (sigma_xx + sigma_yy + c2)
    ssim = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1) * cs
    return ssim.flatten(1).mean(1), cs.flatten(1).mean(1)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """MS-SSIM per image of (N, C, H, W) tensors, computed in float64.

    Five scales with 2x2 average pooling between them, an 11x11 Gaussian window (sigma 1.5), the weights of
    Wang et al.; images need at least MS_SSIM_MIN_SIDE pixels on their short side.
    Negative contrast-structure values are clamped to 0, as common implementations do.
    """
    if min(x.shape[-2:]) < MS_SSIM_MIN_SIDE:
        raise ValueError(f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIDE}x{MS_SSIM_MIN_SIDE} pixels")
    x, y = x.double(), y.double()
    window = _gaussian_window()
    weights = torch.tensor(MS_SSIM_WEIGHTS, dtype=torch.float64)
    values = []
    for scale in range(len(MS_SSIM_WEIGHTS)):
        ssim, cs = _ssim_terms(x, y, window, data_range)
        values.append((ssim if scale == len(MS_SSIM_WEIGHTS) - 1 else cs).clamp(min=0))
        if scale < len(MS_SSIM_WEIGHTS) - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return torch.prod(torch.stack(values, 0) ** weights[:, None], dim=0)

import math

import numpy as np
import pytest
import torch

from hvqcodec.metrics import ms_ssim, psnr


def test_psnr_of_known_arrays():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.full((1, 3, 4, 4), 0.1)
    assert psnr(a, b) == pytest.approx(20.0)  # mse 0.01 -> 20 dB
    assert psnr(a, a) == math.inf
    assert psnr(torch.zeros(2, 2), torch.full((2, 2), 255.0), peak=255.0) == pytest.approx(0.0)


def test_ms_ssim_identical_is_one():
    x = torch.rand(2, 3, 192, 192)
    assert torch.allclose(ms_ssim(x, x), torch.ones(2, dtype=torch.float64))


def test_ms_ssim_decreases_with_noise_and_rejects_small_images():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 200, 200)
    small = ms_ssim(x, (x + 0.02 * torch.randn_like(x)).clamp(0, 1))
    large = ms_ssim(x, (x + 0.2 * torch.randn_like(x)).clamp(0, 1))
    assert 1 > small > large > 0
    with pytest.raises(ValueError):
        ms_ssim(torch.rand(1, 3, 170, 300), torch.rand(1, 3, 170, 300))
    assert 0 < float(ms_ssim(x[..., :176, :176], x[..., :176, :176].flip(-1))[0]) < 1  # the smallest valid size


def _ssim_numpy(x, y, data_range=1.0):
    """An independent single-scale SSIM (valid Gaussian filtering via explicit sums) for cross-checking."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
    g /= g.sum()
    window = np.outer(g, g)

    def filt(img):
        h, w = img.shape
        out = np.empty((h - 10, w - 10))
        for i in range(h - 10):
            for j in range(w - 10):
                out[i, j] = (img[i:i + 11, j:j + 11] * window).sum()
        return out

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx ** 2, filt(y * y) - my ** 2, filt(x * y) - mx * my
    return (((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))).mean()


def test_single_scale_matches_independent_ssim():
    # MS-SSIM's per-scale machinery against an independent loop implementation of SSIM.
    from hvqcodec.metrics import _gaussian_window, _ssim_terms

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(24, 24))
    y = np.clip(x + rng.normal(scale=0.1, size=x.shape), 0, 1)
    ssim, _ = _ssim_terms(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None], _gaussian_window(), 1.0)
    assert float(ssim[0]) == pytest.approx(_ssim_numpy(x, y), rel=1e-9)

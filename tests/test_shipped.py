"""End-to-end checks of the shipped model (slow: real weights, a real photo)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hvqcodec.codec import load_codec
from hvqcodec.metrics import psnr
from hvqcodec.zoo import available_models, default_model, load_bundle

KODAK = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak" / "kodim23.png"

pytestmark = pytest.mark.slow


def photo() -> np.ndarray:
    """A 256x384 crop of a real photo when the Kodak set is beside the checkout, else a smooth synthetic one."""
    if KODAK.is_file():
        return np.asarray(Image.open(KODAK).convert("RGB"))[128:384, 192:576].copy()
    y, x = np.mgrid[0:256, 0:384] / 384
    return (np.stack([x, y, 1 - x * y], -1) * 255).astype(np.uint8)


def test_shipped_model_is_listed_and_verified():
    models = available_models()
    assert default_model() in models
    bundle = load_bundle()  # checks the sha256 of the weights against the manifest
    assert bundle.sha256 == models[default_model()]["sha256"]


def test_shipped_codec_round_trip():
    codec = load_codec(None, "cpu")
    rgb = photo()
    compressed = codec.compress(Image.fromarray(rgb))
    decoded = codec.decompress(compressed.data)
    codes = codec.encode_codes(rgb)
    assert all(torch.equal(a, b) for a, b in zip(decoded.codes[0], codes))
    raw = codec.autoencoder.config.raw_index_bpp()
    assert compressed.bpp < raw  # the priors must beat fixed-width indices
    reference = torch.from_numpy(rgb).permute(2, 0, 1).double() / 255
    quality = [psnr(torch.tensor(np.asarray(codec.decompress(compressed.data, levels).image)).permute(2, 0, 1)
                    .double() / 255, reference) for levels in (1, 2, 3)]
    assert quality[0] < quality[1] < quality[2] and quality[2] > 22

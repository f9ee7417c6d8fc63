"""End-to-end checks of the shipped model (slow: real weights, a real photo)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hvqcodec.codec import OperatingPoint, load_codec
from hvqcodec.metrics import psnr
from hvqcodec.zoo import available_models, default_model, load_bundle

KODAK = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak" / "kodim23.png"

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def float32_decoder(monkeypatch):
    """Files decode to the very pixels they gave when they were made in float32 (the references here); the
    bfloat16 decoder (`device.decoder_low_precision`) has its own test below."""
    monkeypatch.setenv("HVQCODEC_DECODER_PRECISION", "float32")
    load_codec.cache_clear()
    yield
    load_codec.cache_clear()


def photo() -> np.ndarray:
    """A 128x192 crop of a real photo when the Kodak set is beside the checkout, else a smooth synthetic one."""
    if KODAK.is_file():
        return np.asarray(Image.open(KODAK).convert("RGB"))[192:320, 256:448].copy()
    y, x = np.mgrid[0:128, 0:192] / 192
    return (np.stack([x, y, 1 - x * y], -1) * 255).astype(np.uint8)


def test_shipped_model_is_listed_and_verified():
    models = available_models()
    assert default_model() in models
    bundle = load_bundle()  # checks the sha256 of the weights against the manifest
    assert bundle.sha256 == models[default_model()]["sha256"]


DATA = Path(__file__).resolve().parent / "data"


def _psnr(image: Image.Image, rgb: np.ndarray) -> float:
    return psnr(torch.tensor(np.asarray(image.convert("RGB"))).permute(2, 0, 1).double() / 255,
                torch.from_numpy(rgb).permute(2, 0, 1).double() / 255)


def test_shipped_codec_round_trip():
    codec = load_codec(None, "cpu")
    rgb = photo()
    every_stream = OperatingPoint(codec.num_streams)
    compressed = codec.compress(Image.fromarray(rgb), point=every_stream)
    decoded = codec.decompress(compressed.data)
    codes = codec.encode_codes(rgb, every_stream)
    assert len(codes) == codec.num_streams
    assert all(torch.equal(a, b) for a, b in zip(decoded.codes[0], codes))
    raw = codec.autoencoder.config.raw_index_bpp()
    assert compressed.bpp < raw  # the priors must beat fixed-width indices
    quality = [_psnr(codec.decompress(compressed.data, n).image, rgb) for n in range(1, codec.num_streams + 1)]
    assert quality == sorted(quality) and quality[2] > 22


def test_shipped_top_qualities_add_the_residual_layer():
    """The default model's qualities from 76 up carry a tilted residual stream (format version 4) and reach far
    above what its codes alone do; quality 75 (the default) is codes alone, a version 2 file."""
    from hvqcodec import container

    codec = load_codec(None, "cpu")
    rgb = photo()
    default = codec.compress(Image.fromarray(rgb))
    top = codec.compress(Image.fromarray(rgb), 100)
    assert not container.read_header(default.data).residual
    assert container.read_header(top.data).tilted and container.read_header(top.data).version == 4
    assert _psnr(codec.decompress(top.data).image, rgb) > _psnr(codec.decompress(default.data).image, rgb) + 8


def test_shipped_quality_ladder_is_monotone():
    codec = load_codec(None, "cpu")
    assert codec.calibrated
    rgb = photo()
    # Monotone on average over the calibration images; on one photo, neighbouring points may swap by a hair.
    assert [e["calibration_bpp"] for e in codec.ladder] == sorted(e["calibration_bpp"] for e in codec.ladder)
    assert [e["calibration_psnr"] for e in codec.ladder] == sorted(e["calibration_psnr"] for e in codec.ladder)
    sizes, quality = [], []
    for entry in codec.ladder[2::3] + codec.ladder[-1:]:
        compressed = codec.compress(Image.fromarray(rgb), entry["quality"])
        sizes.append(compressed.bpp)
        quality.append(_psnr(codec.decompress(compressed.data).image, rgb))
    assert all(b >= 0.98 * a for a, b in zip(sizes, sizes[1:])) and sizes[0] < sizes[-1]
    assert quality[-1] > quality[0]


def test_files_of_hvqcodec_0_1_still_decode():
    """A file written by hvqcodec 0.1.0 (format version 1, model hvq-small) decodes as it did then."""
    import hvqcodec
    from hvqcodec import container

    data = (DATA / "v1-hvq-small.hvq").read_bytes()
    assert container.read_header(data).version == 1
    image = np.asarray(hvqcodec.decompress(data, device="cpu"), dtype=np.int16)
    then = np.asarray(Image.open(DATA / "v1-hvq-small-decoded.png"), dtype=np.int16)
    assert image.shape == then.shape and np.abs(image - then).max() <= 1


def test_files_of_hvqcodec_0_2_still_decode():
    """A file written by hvqcodec 0.2.0 (format version 2, model hvq-ladder, quality 100: all six streams)
    decodes as it did then, and so do its prefixes."""
    import hvqcodec
    from hvqcodec import container

    data = (DATA / "v2-hvq-ladder.hvq").read_bytes()
    header = container.read_header(data)
    assert (header.version, header.model_name, header.levels) == (2, "hvq-ladder", 6)
    image = np.asarray(hvqcodec.decompress(data, device="cpu"), dtype=np.int16)
    then = np.asarray(Image.open(DATA / "v2-hvq-ladder-decoded.png"), dtype=np.int16)
    assert image.shape == then.shape and np.abs(image - then).max() <= 1
    preview = np.asarray(hvqcodec.decompress(data, levels=3, device="cpu"), dtype=np.int16)
    assert np.abs(preview - then).mean() > np.abs(image - then).mean()


@pytest.mark.parametrize("release,model", [("0.4", "hvq-vr"), ("0.6", "hvq-vr2"), ("0.7", "hvq-vr3"), ("0.8", "hvq-vr4"),
                                           ("0.9", "hvq-vr5"), ("0.11", "hvq-vr6"),
                                           ("0.12", "hvq-vr7"), ("0.13", "hvq-vr8")])
def test_files_of_earlier_releases_still_decode_and_encode_the_same(release, model):
    """A file written by an earlier release's default model (quality 75) decodes to the same pixels, and encoding
    the same source with that model still gives exactly its bytes (the exact probability path is unchanged)."""
    import hvqcodec
    from hvqcodec import container

    data = (DATA / f"release-{release}-{model}.hvq").read_bytes()
    header = container.read_header(data)
    assert (header.version, header.model_name, header.levels) == (2, model, 4)
    image = np.asarray(hvqcodec.decompress(data, device="cpu"))
    assert np.array_equal(image, np.asarray(Image.open(DATA / f"release-{release}-{model}-decoded.png")))
    assert hvqcodec.compress(DATA / "v1-source.png", model=model, device="cpu", quality=75) == data


@pytest.mark.parametrize("release,model,version", [("0.15", "hvq-vr10", 3), ("0.16", "hvq-vr11", 4),
                                                   ("0.17", "hvq-vr12", 4)])
def test_residual_files_of_earlier_releases_still_decode_and_encode_the_same(release, model, version):
    """A file with a residual stream (format version 3: flat steps, hvqcodec 0.15; version 4: tilted, 0.16 and 0.17), made
    with that release's default model at quality 86, decodes to the same pixels and its source re-encodes to
    the same bytes: the residual layer's tables, steps and coding order are part of the format."""
    import hvqcodec
    from hvqcodec import container

    data = (DATA / f"release-{release}-{model}-q86.hvq").read_bytes()
    header = container.read_header(data)
    assert (header.version, header.model_name, header.levels, header.residual) == (version, model, 4, True)
    assert header.tilted == (version == 4)
    image = np.asarray(hvqcodec.decompress(data, device="cpu"))
    assert np.array_equal(image, np.asarray(Image.open(DATA / f"release-{release}-{model}-q86-decoded.png")))
    assert hvqcodec.compress(DATA / "v1-source.png", model=model, device="cpu", quality=86) == data


def test_bfloat16_decoder_gives_the_same_codes_and_nearly_the_same_pixels():
    """The decoder's bulk in bfloat16 (what `auto` picks on CPUs with native bf16): the codes are the file's, the
    pixels within a few levels of float32's and the PSNR within 0.05 dB (Kodak: -0.002 dB on average)."""
    rgb = photo()
    exact, fast = load_codec(None, "cpu", "float32"), load_codec(None, "cpu", "bfloat16")
    assert fast.low_precision_decoder and not exact.low_precision_decoder
    data = exact.compress(Image.fromarray(rgb)).data
    ours, theirs = fast.decompress(data), exact.decompress(data)
    assert all(torch.equal(a, b) for a, b in zip(ours.codes[0], theirs.codes[0]))
    difference = np.abs(np.asarray(ours.image, dtype=np.int16) - np.asarray(theirs.image, dtype=np.int16))
    assert 0 < difference.max() <= 6
    assert abs(_psnr(ours.image, rgb) - _psnr(theirs.image, rgb)) < 0.05

"""The residual layer: lossless coding of its quantised coefficients, its tables, its place in files."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from hvqcodec import container, residual
from hvqcodec.codec import OperatingPoint
from hvqcodec.errors import HvqError

from conftest import synthetic_image


def pair(seed: int, height: int, width: int, noise: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """An image and a 'picture' of it: blurred and noisy, as a decoder's would be."""
    image = synthetic_image(seed, height, width)
    rng = np.random.default_rng(seed)
    picture = np.clip(image.astype(np.float64) + rng.normal(0, noise, image.shape), 0, 255).astype(np.uint8)
    return image, picture


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b) ** 2))


@pytest.mark.parametrize("height,width,step", [(64, 64, 16), (37, 53, 6), (1, 1, 2), (9, 130, 40)])
def test_decoding_gives_exactly_the_quantised_residual(height, width, step):
    image, picture = pair(height + width, height, width)
    encoded = residual.encode_residual(image, picture, step)
    expected = residual.add_residual(picture, residual.quantise(image, picture, step), step)
    assert np.array_equal(residual.decode_residual(encoded.data, picture), expected)
    assert encoded.bits == 8 * len(encoded.data)


@pytest.mark.parametrize("tilt", [(32, 64), (0, 200), (255, 1)])
def test_a_tilted_stream_decodes_exactly_and_names_its_tilt(tilt):
    image, picture = pair(21, 40, 56)
    encoded = residual.encode_residual(image, picture, 12, tilt)
    assert encoded.data[:3] == bytes([12, *tilt])
    expected = residual.add_residual(picture, residual.quantise(image, picture, 12, tilt), 12, tilt)
    assert np.array_equal(residual.decode_residual(encoded.data, picture, tilted=True), expected)
    # Read as flat, the tilt bytes would be pass headers: a wrong length or a different picture, never this one.
    try:
        wrong = residual.decode_residual(encoded.data, picture)
    except residual.ResidualError:
        wrong = None
    assert wrong is None or not np.array_equal(wrong, expected)


def test_the_tilt_grows_the_step_over_bands_and_colour():
    table = residual.steps(16, (32, 64))[:, 0, 0]
    assert table[0, 0, 0] == table[1, 0, 0] == 16.0  # the block's mean keeps the step
    assert table[0, 7, 7] == 16 * (256 + 32 * 14) / 256 and table[2, 7, 7] == 16 * (256 + 64 * 14) / 256
    assert np.array_equal(residual.steps(16)[:, 0, 0], np.full((3, 8, 8), 16.0))
    # Coarser high bands: fewer bits, a lower PSNR, for the same step.
    image, picture = pair(22, 64, 64)
    flat, tilted = (residual.encode_residual(image, picture, 8, t) for t in ((0, 0), (48, 96)))
    assert len(tilted.data) < len(flat.data)
    with pytest.raises(ValueError, match="tilt"):
        residual.steps(8, (0, 256))


def test_large_magnitudes_take_the_escape_and_small_steps_are_near_lossless():
    """Black against white at step 1: magnitudes in the thousands (escape codes); the result is within a
    level or two of the image everywhere."""
    image = synthetic_image(3, 40, 48)
    picture = 255 - image
    encoded = residual.encode_residual(image, picture, 1)
    assert np.abs(residual.quantise(image, picture, 1)).max() > 1000
    decoded = residual.decode_residual(encoded.data, picture)
    assert np.array_equal(decoded, residual.add_residual(picture, residual.quantise(image, picture, 1), 1))
    assert np.abs(decoded.astype(int) - image).max() <= 2


def test_smaller_steps_give_better_pictures_for_more_bits():
    image, picture = pair(5, 64, 80)
    sizes, qualities = [], []
    for step in (48, 24, 12, 6):
        encoded = residual.encode_residual(image, picture, step)
        sizes.append(len(encoded.data))
        qualities.append(psnr(residual.decode_residual(encoded.data, picture), image))
    assert sizes == sorted(sizes) and qualities == sorted(qualities)
    assert qualities[0] > psnr(picture, image)


def test_nothing_to_add_costs_only_the_pass_headers():
    image = synthetic_image(1, 32, 32)
    encoded = residual.encode_residual(image, image, 8)
    assert len(encoded.data) == 1 + 2 * residual.PASSES
    assert np.array_equal(residual.decode_residual(encoded.data, image), image)


def test_tables_are_exact_integers_and_fixed():
    """The tables are part of the format: every row sums to 2^16 with no zero, and their values are pinned
    (a platform or a change that computed them differently would make files undecodable)."""
    tables = residual.frequency_tables()
    assert tables.shape == (residual.SCALES, residual.SYMBOLS)
    assert (tables.sum(axis=1) == 1 << residual.FREQ_BITS).all() and tables.min() >= 1
    assert hashlib.sha256(tables.astype("<i8").tobytes()).hexdigest()[:16] == "370bf744bfa972ad"


def test_damaged_streams_are_refused_or_decode_without_crashing():
    image, picture = pair(7, 24, 24)
    data = residual.encode_residual(image, picture, 8).data
    with pytest.raises(residual.ResidualError, match="wrong length"):
        residual.decode_residual(data[:-1], picture)
    with pytest.raises(residual.ResidualError, match="step 0"):
        residual.decode_residual(b"\0" + data[1:], picture)
    with pytest.raises(residual.ResidualError, match="bad pass header"):
        residual.decode_residual(data[:1] + bytes([residual.SCALES, 0]) + data[3:], picture)
    rng = np.random.default_rng(0)
    for _ in range(20):
        damaged = bytearray(data)
        damaged[rng.integers(1 + 2 * residual.PASSES, len(data))] ^= 1 << int(rng.integers(8))
        try:
            out = residual.decode_residual(bytes(damaged), picture)
        except (ValueError, RuntimeError, AssertionError):
            continue
        assert out.shape == picture.shape and out.dtype == np.uint8


def test_codec_residual_point_round_trip_previews_and_info(tiny_codec, tmp_path):
    """A point with a residual step: a version 3 file whose last stream is the residual; decoding it gives the
    codes' picture plus exactly the quantised residual; --levels (or a cut) stops before it."""
    image = synthetic_image(11, 48, 64)
    point = OperatingPoint(3, residual_step=10)
    result = tiny_codec.compress(Image.fromarray(image), point=point)
    header = container.read_header(result.data)
    assert (header.version, header.residual, header.levels, header.code_streams) == (3, True, 4, 3)
    assert len(result.level_bytes) == 4 and result.level_bytes[-1] == sum(header.stream_lengths[-1])
    codes = tiny_codec.encode_codes(image, OperatingPoint(3))
    picture = tiny_codec.decode_codes(codes, 48, 64)  # what a preview shows (bfloat16 where the CPU has AMX)
    under = tiny_codec.decode_codes(codes, 48, 64, float32=True)  # what the residual is added to
    expected = residual.add_residual(under, residual.quantise(image, under, 10), 10)
    decoded = tiny_codec.decompress(result.data)
    assert decoded.levels == 4 and np.array_equal(np.asarray(decoded.image), expected)
    assert psnr(expected, image) > psnr(picture, image) + 3
    assert np.array_equal(np.asarray(tiny_codec.decompress(result.data, levels=3).image), picture)
    cut = tiny_codec.decompress(result.data[:len(result.data) - 8])
    assert cut.levels == 3 and "truncated" in cut.warnings[0]
    assert np.array_equal(np.asarray(cut.image), picture)
    # Without a residual the file is what it always was: version 2.
    plain = tiny_codec.compress(Image.fromarray(image), point=OperatingPoint(3))
    assert container.read_header(plain.data).version == 2
    assert len(plain.data) < len(result.data)


def test_codec_tilted_residual_point_makes_a_version_4_file(tiny_codec):
    image = synthetic_image(15, 48, 64)
    point = OperatingPoint(3, residual_step=10, residual_tilt=(32, 64))
    result = tiny_codec.compress(Image.fromarray(image), point=point)
    header = container.read_header(result.data)
    assert (header.version, header.residual, header.tilted) == (4, True, True)
    picture = tiny_codec.decode_codes(tiny_codec.encode_codes(image, OperatingPoint(3)), 48, 64, float32=True)
    expected = residual.add_residual(picture, residual.quantise(image, picture, 10, (32, 64)), 10, (32, 64))
    assert np.array_equal(np.asarray(tiny_codec.decompress(result.data).image), expected)
    flat = tiny_codec.compress(Image.fromarray(image), point=OperatingPoint(3, residual_step=10))
    assert container.read_header(flat.data).version == 3
    assert not np.array_equal(np.asarray(tiny_codec.decompress(flat.data).image), expected)


def test_codec_refuses_a_damaged_residual_stream_with_one_line(tiny_codec):
    image = synthetic_image(12, 32, 32)
    result = tiny_codec.compress(Image.fromarray(image), point=OperatingPoint(3, residual_step=8))
    header = container.read_header(result.data)
    streams = container.unpack(result.data).streams
    damaged = container.pack(header.model_name, header.model_hash, 32, 32, header.mode, header.tile_size,
                             streams[:-1] + [[streams[-1][0][:-3]]], residual=True)
    with pytest.raises(HvqError, match="^corrupt hvq residual stream \\(residual stream has a wrong length\\)$"):
        tiny_codec.decompress(damaged)
    # Without the flag the same streams claim four streams of codes, more than the model has.
    unflagged = container.pack(header.model_name, header.model_hash, 32, 32, header.mode, header.tile_size, streams)
    with pytest.raises(HvqError, match="^corrupt hvq file \\(4 streams of codes, but model tiny codes at most 3\\)$"):
        tiny_codec.decompress(unflagged, levels=1)
    with pytest.raises(ValueError, match="residual step 300"):
        tiny_codec.compress(Image.fromarray(image), point=OperatingPoint(3, residual_step=300))


def test_operating_point_entries_carry_the_residual_step():
    point = OperatingPoint(4, 0.0, 0.0, 0.0, 24)
    assert point.to_entry() == {"streams": 4, "lambda": 0.0, "stage_lambda": 0.0, "residual_step": 24}
    assert OperatingPoint.from_entry(point.to_entry()) == point
    assert "residual_step" not in OperatingPoint(4).to_entry()
    tilted = OperatingPoint(3, residual_step=8, residual_tilt=(32, 64))
    assert tilted.to_entry()["residual_tilt"] == [32, 64]
    assert OperatingPoint.from_entry(tilted.to_entry()) == tilted


def test_info_shows_the_residual_stream(tiny_codec, tmp_path):
    from click.testing import CliRunner

    from hvqcodec.cli import main

    image = synthetic_image(13, 40, 56)
    result = tiny_codec.compress(Image.fromarray(image), point=OperatingPoint(3, residual_step=12))
    path = tmp_path / "r.hvq"
    path.write_bytes(result.data)
    output = CliRunner().invoke(main, ["info", str(path)]).output
    assert "hvq format 3," in " ".join(output.split()) and "4 stream(s)" in " ".join(output.split())
    names = [line.split(":")[0].strip() for line in output.splitlines() if ":" in line and "bytes" in line]
    assert names == ["top", "mid", "bottom", "residual", "header", "total"]
    residual_line = next(line for line in output.splitlines() if line.strip().startswith("residual:"))
    assert f"{result.level_bytes[-1]:,} bytes" in residual_line


def test_the_picture_under_a_residual_is_float32_whatever_the_decoder(tiny_models_dir):
    """A bfloat16 decoder (CPUs with AMX) decodes a residual file's picture in float32, as the encoder made
    it, so the top qualities come out as the encoder measured them; files without a residual keep its speed."""
    from hvqcodec.codec import load_codec

    image = synthetic_image(14, 48, 64)
    exact, fast = load_codec("tiny", "cpu", "float32"), load_codec("tiny", "cpu", "bfloat16")
    for encoder in (exact, fast):
        data = encoder.compress(Image.fromarray(image), point=OperatingPoint(3, residual_step=8)).data
        assert np.array_equal(np.asarray(fast.decompress(data).image), np.asarray(exact.decompress(data).image))
    plain = exact.compress(Image.fromarray(image), point=OperatingPoint(3)).data
    assert not np.array_equal(np.asarray(fast.decompress(plain).image), np.asarray(exact.decompress(plain).image))

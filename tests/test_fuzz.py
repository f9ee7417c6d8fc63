"""Fuzzing: mutated .hvq files and truncated images end in an image or a one-line HvqError, quickly and in
bounded memory; never a traceback, a hang or a memory blow-up. Seeded, so every CI run tries the same cases."""
import dataclasses
import io
import random
import resource
import time
import zlib

import numpy as np
import pytest
from PIL import Image

import hvqcodec
from hvqcodec import container
from hvqcodec.errors import HvqError

from conftest import LADDER_CONFIG, LADDER_PRIOR, TINY_LADDER, export_tiny, synthetic_image

CASES = 2000
SECONDS_PER_CASE = 5.0
PEAK_RSS_MB = 1500


@pytest.fixture(scope="module")
def fuzz_codec(tmp_path_factory):
    from hvqcodec import codec

    folder = tmp_path_factory.mktemp("fuzz-models")
    export_tiny(folder, "tiny-ladder", LADDER_CONFIG, LADDER_PRIOR, TINY_LADDER)
    patch = pytest.MonkeyPatch()
    patch.setenv("HVQCODEC_MODELS", str(folder))
    codec.load_codec.cache_clear()
    yield codec.load_codec("tiny-ladder", "cpu")
    codec.load_codec.cache_clear()
    patch.undo()


def seed_files(codec) -> list[bytes]:
    """Valid files of several shapes: one tile, many tiles, alpha, grayscale, every stream count."""
    files = []
    rgb = synthetic_image(1, 16, 32)
    for quality in (1, 30, 90):
        files.append(codec.compress(Image.fromarray(rgb), quality).data)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    files.append(codec.compress(Image.fromarray(rgba, "RGBA"), 90).data)
    files.append(codec.compress(Image.fromarray(rgb[..., 0], "L"), 50).data)
    from hvqcodec.codec import OperatingPoint  # a residual layer on top (format version 3)

    files.append(codec.compress(Image.fromarray(rgb), point=OperatingPoint(4, residual_step=6)).data)
    # and a tilted one (format version 4)
    files.append(codec.compress(Image.fromarray(rgb), point=OperatingPoint(3, residual_step=9,
                                                                          residual_tilt=(40, 80))).data)
    return files


def rewrite(data: bytes, **fields) -> bytes:
    """The file with header fields replaced and both checksums recomputed (the body kept as it is)."""
    header = container.read_header(data)
    body = data[header.header_size:len(data) - container.TRAILER_BYTES]
    new = container._encode_header(dataclasses.replace(header, **fields))
    return new + body + zlib.crc32(new + body).to_bytes(4, "little")


def mutate(rng: random.Random, files: list[bytes]) -> bytes:
    data = bytearray(rng.choice(files))
    kind = rng.randrange(6)
    if kind == 0:  # bit flips
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 1:  # truncation
        return bytes(data[:rng.randrange(len(data))])
    if kind == 2:  # splice of two files
        other = rng.choice(files)
        return bytes(data[:rng.randrange(len(data))] + other[rng.randrange(len(other)):])
    header = container.read_header(bytes(data))
    if kind == 3:  # sizes and tiling
        field = rng.choice(["width", "height", "tile_size"])
        value = rng.choice([1, 2, 17, 31, 32, 33, 1000, 1024, 1025, 30000, 2 ** 24])
        return rewrite(bytes(data), **{field: value})
    if kind == 4:  # stream count and lengths
        lengths = [list(level) for level in header.stream_lengths]
        level = rng.randrange(len(lengths))
        lengths[level][0] = max(0, lengths[level][0] + rng.choice([-8, -4, -1, 1, 4, 8, 1000]))
        streams = rng.randint(1, header.levels)
        residual = rng.choice([header.residual, not header.residual]) if header.version >= 3 else False
        return rewrite(bytes(data), levels=streams, stream_lengths=tuple(map(tuple, lengths[:streams])),
                       residual=residual and streams >= 2)
    mode = rng.choice(container.MODES)  # mode and model name
    name = rng.choice([header.model_name, "hvq-small", "x" * 64, "tiny"])
    return rewrite(bytes(data), mode=mode, model_name=name,
                   alpha_length=header.alpha_length if (mode in container.ALPHA_MODES) == bool(header.alpha_length)
                   else header.alpha_length)


def outcome(data: bytes) -> str:
    try:
        image = hvqcodec.decompress(data, device="cpu")
    except HvqError as exc:
        message = str(exc)
        assert message and "\n" not in message, repr(message)
        return "error"
    except UserWarning:
        return "image"
    assert image.width >= 1 and image.height >= 1
    return "image"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_mutated_files_end_in_an_image_or_one_line_error(fuzz_codec):
    rng = random.Random(20261129)
    files = seed_files(fuzz_codec)
    counts = {"image": 0, "error": 0}
    slowest = 0.0
    for case in range(CASES):
        try:
            data = mutate(rng, files)
        except (container.ContainerError, ValueError):
            continue  # the mutation itself made an unwritable header: nothing to test
        start = time.perf_counter()
        counts[outcome(data)] += 1
        slowest = max(slowest, time.perf_counter() - start)
        assert slowest < SECONDS_PER_CASE, f"case {case} took {slowest:.1f} s"
    assert counts["image"] > 100 and counts["error"] > 100, counts
    assert sum(counts.values()) >= 0.95 * CASES
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 < PEAK_RSS_MB


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_truncated_images_end_in_a_file_or_one_line_error(fuzz_codec):
    rng = random.Random(7)
    sources = []
    for fmt in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        Image.fromarray(synthetic_image(2, 40, 56)).save(buffer, fmt)
        sources.append(buffer.getvalue())
    for _ in range(100):
        source = rng.choice(sources)
        data = bytearray(source[:rng.randrange(1, len(source))])
        if rng.random() < 0.3 and data:
            data[rng.randrange(len(data))] ^= 0xFF
        try:
            result = hvqcodec.compress(bytes(data), device="cpu")
        except HvqError as exc:
            assert "\n" not in str(exc)
            continue
        assert hvqcodec.decompress(result, device="cpu").size == (56, 40)


def bomb(width: int, height: int, tile_size: int, stream_bytes: int, codec) -> bytes:
    tiles = len(container.tile_grid(width, height, tile_size))
    streams = [[bytes(stream_bytes)] * tiles for _ in range(3)]
    return container.pack(codec.name, codec.sha256, width, height, "RGB", tile_size, streams)


@pytest.mark.parametrize("tile_size,stream_bytes", [(0, 4), (1024, 4)])
def test_decompression_bombs_are_refused_at_once(fuzz_codec, tile_size, stream_bytes):
    data = bomb(30000, 30000, tile_size, stream_bytes, fuzz_codec)
    start = time.perf_counter()
    with pytest.raises(HvqError) as info:
        hvqcodec.decompress(data, device="cpu")
    assert time.perf_counter() - start < 1.0
    assert "over the limit" in str(info.value) and "\n" not in str(info.value)


def test_a_stream_read_past_its_end_fails_at_once(fuzz_codec):
    """Within the pixel limit, a file whose streams are far too short is refused as soon as a decoder runs
    dry, long before the level is decoded."""
    data = bomb(1024, 1024, 0, 4, fuzz_codec)
    start = time.perf_counter()
    with pytest.raises(container.ContainerError, match="stream ends before its codes do"):
        hvqcodec.decompress(data, device="cpu")
    assert time.perf_counter() - start < 5.0


def test_images_over_the_pixel_limit_are_refused_and_the_limit_can_be_raised(fuzz_codec):
    image = Image.fromarray(synthetic_image(3, 40, 56))
    with pytest.raises(HvqError, match="over the limit of 1,000"):
        hvqcodec.compress(image, device="cpu", max_pixels=1000)
    data = hvqcodec.compress(image, device="cpu")
    with pytest.raises(HvqError, match="over the limit"):
        hvqcodec.decompress(data, device="cpu", max_pixels=1000)
    assert hvqcodec.decompress(data, device="cpu", max_pixels=40 * 56).size == (56, 40)


def test_cli_refuses_a_bomb_before_importing_torch(fuzz_codec, tmp_path):
    import subprocess
    import sys

    path = tmp_path / "bomb.hvq"
    path.write_bytes(bomb(30000, 30000, 1024, 4, fuzz_codec))
    code = ("import sys, runpy; sys.argv = ['hvqcodec', 'decompress', sys.argv[1], '-o', sys.argv[2]]\n"
            "try:\n    runpy.run_module('hvqcodec.cli', run_name='__main__')\n"
            "except SystemExit as exit:\n    print('torch' in sys.modules, file=sys.stderr); raise\n")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "out.png")],
                          capture_output=True, text=True, timeout=60)
    assert time.perf_counter() - start < 5
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and lines[0].startswith("Error: ") and "over the limit" in lines[0]
    assert lines[-1] == "False"  # refused from the header alone: torch never imported
    assert not (tmp_path / "out.png").exists()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_mutated_files_through_the_runtime_without_torch(monkeypatch):
    """The same mutations through the runtime without torch (runtime.py; the C modules take the codes and
    tables it gives them unchecked, so a damaged file must never get that far), with the shipped default model
    (the tiny test models' widths are not the C kernels'): an image or a one-line HvqError."""
    from hvqcodec import codec, runtime, stepkernel

    if not (stepkernel.available() and stepkernel.int8_available()):
        pytest.skip("the runtime without torch runs on the C module's int8 path only")
    monkeypatch.delenv("HVQCODEC_MODELS", raising=False)  # the shipped models, whatever the fixture above set
    shipped = codec.Codec(codec.load_bundle(None), "cpu")
    decoder = runtime.load_runtime(shipped.name)
    rng = random.Random(20261201)
    files = seed_files(shipped)
    counts = {"image": 0, "error": 0}
    for _ in range(CASES // 8):
        try:
            data = mutate(rng, files)
        except (container.ContainerError, ValueError):
            continue
        try:
            image = decoder.decompress(data).image
            assert image.width >= 1 and image.height >= 1
            counts["image"] += 1
        except HvqError as exc:
            assert str(exc) and "\n" not in str(exc), repr(str(exc))
            counts["error"] += 1
    assert counts["image"] > 25 and counts["error"] > 25, counts

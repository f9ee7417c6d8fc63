"""Compressing without torch (hvqcodec/npcoding.py, runtime.Runtime.compress): the runtime's files decode, with
either runtime, to the codes it chose; its choices are the torch codec's but for near-ties that float rounding
flips; and the command line compresses without importing torch where the runtime runs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import LADDER_CONFIG, LADDER_PRIOR, TINY_LADDER, export_tiny, synthetic_image
from hvqcodec import api, runtime, stepkernel
from hvqcodec.codec import OperatingPoint
from hvqcodec.filecoding import compress_to_bpp

DATA = Path(__file__).parent / "data"

pytestmark = [pytest.mark.skipif(not (stepkernel.available() and stepkernel.int8_available()),
                                 reason="the runtime without torch runs on the C module's int8 path only"),
              pytest.mark.usefixtures("torch_on_one_thread")]


# conftest's ladder model with the shapes the C module's int8 path takes (16 channels, 16 codes a codebook).
RUNTIME_CONFIG = dict(LADDER_CONFIG, refine_codebook_size=16)
RUNTIME_PRIOR = dict(LADDER_PRIOR, channels=16, stage_channels=16)


@pytest.fixture(scope="module")
def ladder_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runtime-models")
    export_tiny(folder, "tiny-ladder", RUNTIME_CONFIG, RUNTIME_PRIOR, TINY_LADDER)
    return folder


@pytest.fixture
def ladder_codec(ladder_folder, monkeypatch):
    """A tiny random model with two refinement stages of two groups and a quality ladder, as the torch codec."""
    from hvqcodec import codec

    monkeypatch.setenv("HVQCODEC_MODELS", str(ladder_folder))
    codec.load_codec.cache_clear()
    runtime.load_runtime.cache_clear()
    yield codec.load_codec("tiny-ladder", "cpu")
    codec.load_codec.cache_clear()
    runtime.load_runtime.cache_clear()


@pytest.fixture
def ladder_runtime(ladder_codec):
    """The same model in the runtime without torch."""
    return runtime.load_runtime("tiny-ladder")


def _codes(grids) -> list[np.ndarray]:
    return [np.asarray(grid) for grid in grids]


def _agreement(ours: list[np.ndarray], theirs: list) -> float:
    """The share of positions where two tiles' code grids agree."""
    same = sum(int((a == np.asarray(b)).sum()) for a, b in zip(ours, theirs))
    return same / sum(a.size for a in ours)


POINTS = [OperatingPoint(1), OperatingPoint(2), OperatingPoint(3, 0.05), OperatingPoint(3, 0.0, bottom_lam=0.02),
          OperatingPoint(4, 0.02), OperatingPoint(5, 0.01, stage_lam=0.05), OperatingPoint(5),
          OperatingPoint(4, residual_step=24, residual_tilt=(80, 112))]


@pytest.mark.parametrize("point", POINTS, ids=lambda p: str(p.to_entry()))
def test_files_decode_to_the_chosen_codes_with_either_runtime(ladder_runtime, ladder_codec, point):
    """Every kind of operating point (previews, entropy-constrained bottom and stage codes over two groups, nearest
    codes, a residual layer): the runtime's file holds exactly the codes it chose, which the torch codec's own
    selection matches but for near-ties, and both runtimes decode it to those codes."""
    rgb = synthetic_image(7, 70, 90)
    ours = ladder_runtime.compress(rgb, point=point)
    theirs = ladder_codec.compress(rgb, point=point)
    assert len(ours.codes[0]) == point.streams
    assert _agreement(_codes(ours.codes[0]), theirs.codes[0]) > 0.98
    assert abs(len(ours.data) - len(theirs.data)) <= 0.03 * len(theirs.data) + 8
    by_torch = ladder_codec.decompress(ours.data)
    by_runtime = ladder_runtime.decompress(ours.data)
    for chosen, a, b in zip(ours.codes[0], by_runtime.codes[0], by_torch.codes[0]):
        assert np.array_equal(chosen, a) and np.array_equal(chosen, b.numpy())
    assert by_runtime.image.size == (90, 70)
    if point.residual_step:  # coded against the runtime's own float32 picture
        assert ours.picture is not None and ours.picture.shape == (70, 90, 3)


def test_the_ladder_streams_agree_with_their_information(ladder_runtime):
    """Each stream's size is its information under the integer prior plus the range coder's few words."""
    result = ladder_runtime.compress(synthetic_image(3, 64, 80), point=OperatingPoint(5, 0.01))
    for size, bits in zip(result.level_bytes, result.cross_entropy_bits):
        assert bits / 8 <= size + 1 and size <= bits / 8 + 12


def test_threads_and_tiles_change_no_byte(ladder_codec, monkeypatch):
    """One thread or two, the same file; an image over the tile size is coded tile by tile (two tiles side by side
    on two threads, one after the other on one: the same bytes), and decoded exactly."""
    runtime.load_runtime.cache_clear()
    rgb = synthetic_image(5, 40, 150)
    point = OperatingPoint(5, 0.01)
    one, two = runtime.load_runtime("tiny-ladder", threads=1), runtime.load_runtime("tiny-ladder", threads=2)
    assert one.compress(rgb, point=point).data == two.compress(rgb, point=point).data
    for coder in (one, two, ladder_codec):
        monkeypatch.setattr(coder, "tile_size", 64)
    tiled = two.compress(rgb, point=point)
    assert len(tiled.codes) == 3 and tiled.tile_size == 64
    assert one.compress(rgb, point=point).data == tiled.data
    decoded = ladder_codec.decompress(tiled.data)
    for ours, theirs in zip(tiled.codes, decoded.codes):
        assert all(np.array_equal(a, b.numpy()) for a, b in zip(ours, theirs))
    # Decoding tiles two at a time (two threads) or in turn (one): the same picture; so too the picture a residual
    # layer is coded against.
    assert np.array_equal(np.asarray(one.decompress(tiled.data).image), np.asarray(two.decompress(tiled.data).image))
    with_residual = OperatingPoint(4, residual_step=24, residual_tilt=(80, 112))
    assert one.compress(rgb, point=with_residual).data == two.compress(rgb, point=with_residual).data
    runtime.load_runtime.cache_clear()


def test_quality_bpp_and_refusals(ladder_runtime):
    """A quality picks the ladder's point as the torch codec does; --bpp's search runs on the runtime; effort needs
    torch and says so."""
    rgb = synthetic_image(9, 48, 64)
    assert ladder_runtime.operating_point(55) == OperatingPoint(4, 0.02)
    result, quality = compress_to_bpp(ladder_runtime, rgb, 3.0)
    assert result.bpp <= 3.0 and quality in [entry["quality"] for entry in ladder_runtime.ladder]
    with pytest.raises(ValueError, match="effort"):
        ladder_runtime.compress(rgb, effort=3)


def test_the_default_model_compresses_as_the_torch_codec(tmp_path):
    """The shipped model at its default quality: the same size within 1%, nearly all codes the same."""
    from hvqcodec.codec import load_codec

    rgb = np.asarray(Image.open(DATA / "v1-source.png").convert("RGB"))
    ours = runtime.load_runtime().compress(rgb)
    theirs = load_codec(None, "cpu").compress(rgb)
    assert abs(len(ours.data) - len(theirs.data)) <= 0.01 * len(theirs.data)
    assert _agreement(_codes(ours.codes[0]), theirs.codes[0]) > 0.995


def test_the_coder_for_each_image(ladder_runtime, monkeypatch):
    """Compressing: the runtime on the CPU whatever the size; the torch codec for effort > 0 or with
    HVQ_RUNTIME=torch. Decoding: the runtime up to RUNTIME_MAX_PIXELS (any size with its bfloat16 decoder)."""
    from hvqcodec.codec import Codec

    monkeypatch.delenv("HVQ_RUNTIME", raising=False)
    assert isinstance(api.coder_for("tiny-ladder", "auto"), runtime.Runtime)
    assert isinstance(api.coder_for("tiny-ladder", "cpu", effort=2), Codec)
    assert runtime.runtime_preferred("cpu") and not runtime.runtime_preferred("cuda")
    monkeypatch.setattr(runtime, "decodes_any_size", lambda: False)
    assert not runtime.runtime_preferred("cpu", runtime.RUNTIME_MAX_PIXELS + 1)
    monkeypatch.setenv("HVQ_RUNTIME", "torch")
    assert isinstance(api.coder_for("tiny-ladder", "cpu"), Codec)


def test_compress_on_the_command_line_imports_no_torch(tmp_path):
    """`hvqcodec compress` with the default model never imports torch; --effort does. Both files decode."""
    source = tmp_path / "photo.png"
    Image.fromarray(synthetic_image(2, 48, 64)).save(source)
    script = ("import sys\nfrom hvqcodec.cli import main\n"
              "sys.argv = ['hvqcodec', 'compress', {source!r}, '-o', {target!r}, '--force'] + {extra!r}\n"
              "try:\n    main()\nexcept SystemExit as exit:\n    print('status', exit.code or 0, 'torch' in sys.modules)\n")
    for extra, torch_imported in (([], False), (["--effort", "1"], True)):
        target = tmp_path / f"photo{len(extra)}.hvq"
        code = script.format(source=str(source), target=str(target), extra=extra)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
        assert done.stdout.splitlines()[-1] == f"status 0 {torch_imported}", done.stdout + done.stderr
        decoded = runtime.runtime_for(target.read_bytes()).decompress(target.read_bytes())
        assert decoded.image.size == (64, 48)

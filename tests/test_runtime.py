"""Decoding without torch (hvqcodec/runtime.py): the files of the shipped models decode to the codes the torch
codec decodes and to its float32 pixels within rounding; what the runtime does not take goes to torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hvqcodec import container, decoderkernel, runtime, stepkernel

DATA = Path(__file__).parent / "data"

pytestmark = pytest.mark.skipif(not (stepkernel.available() and stepkernel.int8_available()),
                                reason="the runtime without torch runs on the C module's int8 path only")


@pytest.fixture
def float32_runtime(monkeypatch):
    """Runtimes loaded with HVQCODEC_DECODER_PRECISION=float32 (read when they load: the cache is emptied before
    and after)."""
    monkeypatch.setenv("HVQCODEC_DECODER_PRECISION", "float32")
    runtime.load_runtime.cache_clear()
    yield
    runtime.load_runtime.cache_clear()


@pytest.mark.parametrize("release,model", [("0.13", "hvq-vr8"), ("0.17", "hvq-vr12-q86")])
def test_release_files_decode_to_their_codes_and_pixels(release, model, float32_runtime):
    """The torch codec's float32 pictures of these files (committed with them), within one level nearly
    everywhere; the codes exactly the torch codec's."""
    from hvqcodec.codec import load_codec

    data = (DATA / f"release-{release}-{model}.hvq").read_bytes()
    decoded = runtime.runtime_for(data).decompress(data)
    then = np.asarray(Image.open(DATA / f"release-{release}-{model}-decoded.png"), dtype=np.int16)
    now = np.asarray(decoded.image, dtype=np.int16)
    assert now.shape == then.shape
    assert np.abs(now - then).max() <= 2 and (now != then).mean() < 1e-3
    torch_decoded = load_codec(container.read_header(data).model_name, "cpu").decompress(data)
    assert decoded.levels == torch_decoded.levels
    for ours, theirs in zip(decoded.codes, torch_decoded.codes):
        assert all(np.array_equal(a, b.numpy()) for a, b in zip(ours, theirs))


@pytest.mark.skipif(not decoderkernel.bf16_available(), reason="bfloat16 needs AMX tiles")
def test_bfloat16_decode_is_float32_within_rounding(monkeypatch):
    """Where the CPU has AMX tiles the runtime decodes in bfloat16 by default (as the torch codec's bfloat16
    decoder): pixels within a few levels of the float32 picture, as close to the source on average. A file with a
    residual layer, coded against float32 pixels, decodes in float32; HVQCODEC_DECODER_PRECISION=float32 asks for
    float32 throughout."""
    from hvqcodec.manifest import model_entry

    monkeypatch.delenv("HVQCODEC_DECODER_PRECISION", raising=False)
    decoder = runtime.Runtime(model_entry(None))
    assert decoder.low_precision
    source = np.asarray(Image.open(DATA / "v1-source.png").convert("RGB"))
    data = decoder.compress(source).data
    fast = np.asarray(decoder.decompress(data).image, dtype=np.float64)
    monkeypatch.setenv("HVQCODEC_DECODER_PRECISION", "float32")
    exact_decoder = runtime.Runtime(model_entry(None))
    assert not exact_decoder.low_precision
    exact = np.asarray(exact_decoder.decompress(data).image, dtype=np.float64)
    assert np.abs(fast - exact).max() <= 3 and 0 < (fast != exact).mean() < 0.1

    def psnr(picture):
        return 10 * np.log10(255 ** 2 / np.mean((picture - source) ** 2))

    assert abs(psnr(fast) - psnr(exact)) < 0.05
    residual = (DATA / "release-0.17-hvq-vr12-q86.hvq").read_bytes()
    with_residual = np.asarray(decoder.decompress(residual).image, dtype=np.int16)
    then = np.asarray(Image.open(DATA / "release-0.17-hvq-vr12-q86-decoded.png"), dtype=np.int16)
    assert np.abs(with_residual - then).max() <= 2 and (with_residual != then).mean() < 1e-3


def test_previews_truncation_and_damage_as_the_torch_codec():
    data = (DATA / "release-0.13-hvq-vr8.hvq").read_bytes()
    decoder = runtime.runtime_for(data)
    preview = decoder.decompress(data, levels=2)
    assert preview.levels == 2 and preview.image.size == decoder.decompress(data).image.size
    short = decoder.decompress(data[:len(data) // 2])  # the top levels complete, the rest cut off
    assert short.levels < 4 and any("truncated" in note for note in short.warnings)
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF
    with pytest.raises(container.ContainerError):
        decoder.decompress(bytes(damaged))


def test_alpha_and_grey_images_come_back_in_their_mode(tmp_path):
    from hvqcodec.codec import load_codec

    rgba = np.zeros((40, 56, 4), dtype=np.uint8)
    rgba[..., :3] = np.asarray(Image.open(DATA / "v1-source.png").convert("RGB").resize((56, 40)))
    rgba[..., 3] = np.arange(56, dtype=np.uint8)[None, :] * 4
    data = load_codec(None, "cpu").compress(Image.fromarray(rgba, "RGBA")).data
    image = runtime.runtime_for(data).decompress(data).image
    assert image.mode == "RGBA" and np.array_equal(np.asarray(image)[..., 3], rgba[..., 3])


def test_models_the_runtime_does_not_take_go_to_torch(tmp_path):
    """hvq-vr3's 16-bit tables: RuntimeUnavailable here, and the command line decodes the file with torch."""
    from click.testing import CliRunner

    from hvqcodec.cli import main

    data = (DATA / "release-0.7-hvq-vr3.hvq").read_bytes()
    with pytest.raises(runtime.RuntimeUnavailable):
        runtime.runtime_for(data)
    source = tmp_path / "old.hvq"
    source.write_bytes(data)
    result = CliRunner().invoke(main, ["decompress", str(source), "-o", str(tmp_path / "old.png")])
    assert result.exit_code == 0, result.output
    then = np.asarray(Image.open(DATA / "release-0.7-hvq-vr3-decoded.png"), dtype=np.int16)
    assert np.abs(np.asarray(Image.open(tmp_path / "old.png"), dtype=np.int16) - then).max() <= 3


def test_decompress_on_the_command_line_imports_no_torch(tmp_path):
    """`hvqcodec decompress` of a default-model file never imports torch (and HVQ_RUNTIME=torch does)."""
    source = tmp_path / "photo.hvq"
    source.write_bytes((DATA / "release-0.13-hvq-vr8.hvq").read_bytes())
    script = ("import sys\nfrom hvqcodec.cli import main\n"
              f"sys.argv = ['hvqcodec', 'decompress', {str(source)!r}, '-o', {str(tmp_path / 'out.png')!r}, '--force']\n"
              "try:\n    main()\nexcept SystemExit as exit:\n    print('status', exit.code or 0, 'torch' in sys.modules)\n")
    for runtime_setting, torch_imported in (("", False), ("torch", True)):
        env = {**__import__("os").environ, "HVQ_RUNTIME": runtime_setting}
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
        assert done.stdout.splitlines()[-1] == f"status 0 {torch_imported}", done.stdout + done.stderr


def test_the_command_line_keeps_torch_for_large_images_and_other_devices(monkeypatch):
    """Beyond RUNTIME_MAX_PIXELS where the runtime's decoder has no bfloat16 (torch's decoder wins back its
    import), on another device, or with HVQ_RUNTIME=torch, the torch codec decodes; HVQ_RUNTIME=numpy takes the
    runtime whatever the size, and so does a CPU with AMX tiles."""
    from hvqcodec.cli import coding
    from hvqcodec.codec import Codec

    data = (DATA / "release-0.13-hvq-vr8.hvq").read_bytes()
    monkeypatch.delenv("HVQ_RUNTIME", raising=False)
    assert isinstance(coding._file_decoder(data, "auto"), runtime.Runtime)
    assert isinstance(coding._file_decoder(data, "cpu"), runtime.Runtime)
    monkeypatch.setattr(runtime, "RUNTIME_MAX_PIXELS", 64 * 47)  # the file's image is 64 x 48
    monkeypatch.setattr(runtime, "decodes_any_size", lambda: True)
    assert isinstance(coding._file_decoder(data, "auto"), runtime.Runtime)
    monkeypatch.setattr(runtime, "decodes_any_size", lambda: False)
    assert isinstance(coding._file_decoder(data, "auto"), Codec)
    monkeypatch.setenv("HVQ_RUNTIME", "numpy")
    assert isinstance(coding._file_decoder(data, "auto"), runtime.Runtime)
    monkeypatch.setenv("HVQ_RUNTIME", "torch")
    monkeypatch.setattr(runtime, "RUNTIME_MAX_PIXELS", 1 << 40)
    assert isinstance(coding._file_decoder(data, "auto"), Codec)


def test_tiles_decoded_side_by_side_give_the_same_codes_and_pixels():
    """On two threads a file's tiles are range decoded in two groups at once, one thread each (levels and
    stages); on one, all together: the same codes and pixels, and the torch codec's codes."""
    from hvqcodec.codec import load_codec
    from hvqcodec.manifest import model_entry

    source = np.asarray(Image.open(DATA / "v1-source.png").convert("RGB").resize((1100, 72)))  # two tiles
    entry = model_entry(None)
    one, two = runtime.Runtime(entry, threads=1), runtime.Runtime(entry, threads=2)
    data = one.compress(source).data
    assert container.read_header(data).code_streams >= 4 and two._side_by_side(2) and not one._side_by_side(2)
    a, b = one.decompress(data), two.decompress(data)
    assert len(a.codes) == 2 and np.array_equal(np.asarray(a.image), np.asarray(b.image))
    theirs = load_codec(None, "cpu").decompress(data)
    for ours_a, ours_b, torch_codes in zip(a.codes, b.codes, theirs.codes):
        assert all(np.array_equal(x, y) and np.array_equal(x, z.numpy()) for x, y, z in zip(ours_a, ours_b,
                                                                                            torch_codes))


def test_the_context_computed_ahead_changes_no_pixel():
    """On two threads the decoder's context path runs on a side thread while the bottom level decodes; on one it
    runs in turn: the same picture, and nothing left pending after a file (or a preview of it)."""
    data = (DATA / "release-0.17-hvq-vr12-q86.hvq").read_bytes()
    entry = runtime.model_entry(container.read_header(data).model_name)
    one, two = runtime.Runtime(entry, threads=1), runtime.Runtime(entry, threads=2)
    assert np.array_equal(np.asarray(one.decompress(data).image), np.asarray(two.decompress(data).image))
    assert not two._contexts
    two.decompress(data, levels=2)
    assert not two._contexts

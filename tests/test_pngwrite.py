"""PNGs written on two cores (hvqcodec/pngwrite.py): every mode decodes to its pixels, with libpng's adaptive
row filters, one valid zlib stream from parts deflated apart, and about Pillow's size."""
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hvqcodec import imageio, pngwrite

pytestmark = pytest.mark.skipif(not pngwrite.available(), reason="hvqcodec._decoderkernel is not built here")


def reference_filters(pixels: np.ndarray) -> np.ndarray:
    """Each row's filter type by libpng's heuristic (least sum of |filtered byte as signed|, the first on ties),
    in numpy."""
    height, width, channels = pixels.shape
    x = pixels.reshape(height, width * channels).astype(np.int32)
    left, up, up_left = (np.zeros_like(x) for _ in range(3))
    left[:, channels:] = x[:, :-channels]
    up[1:] = x[:-1]
    up_left[1:, channels:] = x[:-1, :-channels]
    p = left + up - up_left
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
    candidates = [x, x - left, x - up, x - ((left + up) >> 1), x - paeth]
    scores = np.stack([np.abs(((c & 0xFF) ^ 0x80) - 0x80).sum(axis=1) for c in candidates])
    return scores.argmin(axis=0)


def idat(data: bytes) -> bytes:
    """The concatenated IDAT chunks' data, every chunk's CRC checked."""
    assert data[:8] == pngwrite.SIGNATURE
    position, found = 8, b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        assert struct.unpack(">I", data[position + 8 + length:position + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IDAT":
            found += body
        position += 12 + length
    return found


@pytest.mark.parametrize("shape", [(1, 1, 3), (5, 3, 1), (17, 29, 2), (40, 33, 3), (31, 64, 4)])
def test_every_mode_round_trips_with_the_adaptive_filters(shape):
    rng = np.random.default_rng(sum(shape))
    smooth = np.cumsum(rng.integers(-3, 4, shape), axis=1)  # photo-like rows, so the filters differ
    pixels = np.clip(smooth + 128, 0, 255).astype(np.uint8)
    pixels[::3] = rng.integers(0, 256, pixels[::3].shape)  # and noisy ones
    data = pngwrite.encode_png(pixels[:, :, 0] if shape[2] == 1 else pixels)
    decoded = np.asarray(Image.open(io.BytesIO(data)))
    assert np.array_equal(decoded.reshape(shape), pixels)
    filtered = np.frombuffer(zlib.decompress(idat(data)), np.uint8).reshape(shape[0], -1)
    assert np.array_equal(filtered[:, 0], reference_filters(pixels))


def test_parts_deflated_apart_make_one_stream(monkeypatch):
    """A picture deflated in two and in three parts (threads) gives the same pixels as in one, within a few bytes."""
    photo = np.asarray(Image.open(Path(__file__).parent / "data" / "v1-source.png").convert("RGB"))
    one = pngwrite.encode_png(photo, threads=1)
    monkeypatch.setattr(pngwrite, "PART_BYTES", 1000)
    for threads in (2, 3):
        several = pngwrite.encode_png(photo, threads=threads)
        assert several != one and abs(len(several) - len(one)) < 100
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(several))), photo)
        assert zlib.decompress(idat(several)) == zlib.decompress(idat(one))


def test_the_decoded_pictures_png_is_about_pillows_size():
    photo = np.asarray(Image.open(Path(__file__).parent / "data" / "v1-source.png").convert("RGB"))
    ours = imageio.encode_image(Image.fromarray(photo), "PNG")
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "PNG", compress_level=pngwrite.LEVEL)
    assert ours.startswith(pngwrite.SIGNATURE) and abs(len(ours) - len(buffer.getvalue())) < 0.01 * len(ours)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(ours))), photo)
    for bad in (np.zeros((4, 4), np.uint16), np.zeros((4, 4, 5), np.uint8), np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(ValueError):
            pngwrite.encode_png(bad)


def test_the_filter_kernel_checks_its_arguments():
    from hvqcodec import decoderkernel

    png_filter = decoderkernel._module().png_filter  # the C function itself, past the wrapper's checks
    rows, out = np.zeros((4, 12), np.uint8), np.zeros((4, 13), np.uint8)
    bad_calls = [(rows, 5, out, 0, 4),  # 5 does not divide 12
                 (rows, 3, out[:3], 0, 4), (rows, 3, out, 2, 5), (rows, 3, out, 3, 2),
                 (rows[:, ::2], 3, out, 0, 4), (rows, 3, rows, 0, 4)]
    for arguments in bad_calls:
        with pytest.raises((ValueError, BufferError)):
            png_filter(*arguments)
    png_filter(rows, 3, out, 0, 4)
    assert not out.any()

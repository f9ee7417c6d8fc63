"""PNG files of decoded pictures, written on two cores: what `hvqcodec decompress` writes by default.

Pillow filters and deflates a PNG on one thread; for the 4000x3000 photo of benchmarks/codec.py that took 1.8 s
of a 15.5 s `decompress` (zlib level 3). Here the rows are filtered by the C kernel (`decoderkernel.png_filter`:
libpng's adaptive heuristic, as Pillow's encoder) and the filtered bytes deflated in parts on threads (zlib
releases the GIL), each part a raw deflate stream ending on a byte boundary (a sync flush), so that their
concatenation is one zlib stream: the parts' windows do not reach back into the part before, which costs a few
bytes per part. `python benchmarks/png_write.py` measures both writers.

`encode_png(pixels)` takes an (H, W) or (H, W, 1-4) uint8 array (grey, grey + alpha, RGB, RGBA); `available()`
says whether the C kernel is here (else `imageio` keeps Pillow's writer). Imports numpy and the C module only.
"""
from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import decoderkernel

# zlib level, as imageio's Pillow options (docs there): 2 since hvqcodec 0.23 (the 4000x3000 photo's decoded
# picture in 0.58 s against 0.90-0.98 s at level 3, 2.9% more bytes; level 1 no sooner and 6.2% more).
LEVEL = 2
PART_BYTES = 1 << 22  # filtered bytes per deflate part at least: smaller pictures take one part, one thread
COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type: grey, grey + alpha, RGB, RGBA
SIGNATURE = b"\x89PNG\r\n\x1a\n"


def available() -> bool:
    return decoderkernel.available()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def filter_rows(pixels: np.ndarray, pool: ThreadPoolExecutor | None = None, parts: int = 1) -> np.ndarray:
    """(H, W, C) uint8 -> (H, 1 + W C): each row's filter type, then its filtered bytes; in `parts` bands of rows
    on `pool` (the kernel releases the GIL; a row's filters read the row above, not its filtered bytes)."""
    height = pixels.shape[0]
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    out = np.empty((height, rows.shape[1] + 1), np.uint8)
    cuts = [height * k // parts for k in range(parts + 1)]

    def band(k: int) -> None:
        decoderkernel.png_filter(rows, pixels.shape[2], out, cuts[k], cuts[k + 1])

    list(map(band, range(parts)) if pool is None else pool.map(band, range(parts)))
    return out


def deflate(data: memoryview, pool: ThreadPoolExecutor | None = None, parts: int = 1) -> bytes:
    """One zlib stream of `data`, compressed in `parts` pieces at once on `pool`."""
    cuts = [len(data) * k // parts for k in range(parts + 1)]

    def piece(k: int) -> bytes:
        compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)  # raw: one header and checksum for all
        body = compressor.compress(data[cuts[k]:cuts[k + 1]])
        return body + compressor.flush(zlib.Z_FINISH if k == parts - 1 else zlib.Z_SYNC_FLUSH)

    bodies = list(map(piece, range(parts)) if pool is None else pool.map(piece, range(parts)))
    header = b"\x78\x5e"  # deflate, 32 KiB window, level class 1 (zlib levels 2-5), no dictionary
    return header + b"".join(bodies) + struct.pack(">I", zlib.adler32(data))


def encode_png(pixels: np.ndarray, threads: int | None = None) -> bytes:
    """An 8-bit PNG of (H, W) or (H, W, C) uint8 pixels, C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA);
    threads: how many deflate at once (None: up to two, as the runtime codes)."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in COLOUR_TYPES or 0 in pixels.shape:
        raise ValueError(f"encode_png: (H, W[, 1-4]) uint8 pixels are needed, not {pixels.shape} {pixels.dtype}")
    height, width, channels = pixels.shape
    threads = threads or max(1, min(2, os.cpu_count() or 1))
    parts = max(1, min(threads, height, pixels.size // PART_BYTES))
    pool = ThreadPoolExecutor(parts, thread_name_prefix="hvqcodec-png") if parts > 1 else None
    try:
        filtered = filter_rows(pixels, pool, parts)
        data = deflate(memoryview(filtered).cast("B"), pool, parts)
    finally:
        if pool is not None:
            pool.shutdown()
    header = struct.pack(">IIBBBBB", width, height, 8, COLOUR_TYPES[channels], 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")

"""The Python API's compress and decompress, and the choice behind them and the command line: each image is coded
by the runtime without torch where it runs and is preferred (`runtime.runtime_preferred`: the CPU; for decoding,
any size with its bfloat16 decoder, else images up to 4 megapixels; no 1.5-2 s import of torch, files and codes
interchangeable with the torch codec's, DESIGN section 8), else by the torch codec (`codec.Codec`: other
devices, large images to decode on CPUs without AMX, encoder refinement, older models).

Imports no torch itself: the torch codec is imported only where it is chosen.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
from PIL import Image

from . import container
from .filecoding import Compressor, compress_to_bpp
from .imageio import load_image

Imports = Callable[[], ContextManager]  # wraps the torch codec's imports (the console script's `codec_imports`)


def coder_for(model: str | None, device: str, effort: int = 0, imports: Imports = contextlib.nullcontext,
              threads: int | None = None) -> Compressor:
    """What compresses: the runtime where it runs and is preferred (on the CPU, any size), else the torch codec,
    which alone refines (effort > 0). `imports` wraps the torch codec's imports; threads: each coder's threads
    (None: as they default)."""
    if effort == 0:
        from .runtime import RuntimeUnavailable, load_runtime, runtime_preferred

        if runtime_preferred(device):
            try:
                return load_runtime(model, threads=threads)
            except RuntimeUnavailable:
                pass
    with imports():
        from .codec import load_codec
    codec = load_codec(model, device)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return codec


def decoder_for(data: bytes, device: str = "auto", imports: Imports = contextlib.nullcontext):
    """What decodes a file: the runtime where it runs and is preferred (the same codes, float32 pixels), else the
    torch codec of the model the file names (ModelError if it is not installed)."""
    from .runtime import RuntimeUnavailable, runtime_for, runtime_preferred

    header = container.read_header(data)
    if runtime_preferred(device, header.width * header.height):
        try:
            return runtime_for(data)
        except RuntimeUnavailable:
            pass
    with imports():
        from .codec import codec_for
    return codec_for(data, device)


def compress(image: str | Path | bytes | Image.Image | np.ndarray, model: str | None = None, device: str = "auto",
             quality: int | None = None, max_pixels: int = container.DEFAULT_MAX_PIXELS, effort: int = 0,
             bpp: float | None = None) -> bytes:
    """Compress an image (path, encoded bytes, PIL image or uint8 array (H, W[, 3 or 4])) into the bytes of a .hvq file.

    quality: 1-100, higher gives a larger file and a better picture (default 75).
    bpp: instead of quality, a size: the highest quality whose file takes at most this many bits per pixel
    (`hvqcodec compress --bpp`); the smallest file, with a warning, when none does.
    effort: 0-100 encoder refinement steps (0: off; about 10 buys 0.2-0.4 dB at high qualities for a
    several times slower encode, with torch; the file format and decoding are unchanged)."""
    if bpp is not None and quality is not None:
        raise ValueError("give either quality or bpp, not both")
    if bpp is not None and not bpp > 0:
        raise ValueError(f"bpp must be above 0, not {bpp}")
    loaded = load_image(image)
    coder = coder_for(model, device, effort)
    if bpp is None:
        result = coder.compress(loaded, quality, max_pixels=max_pixels, effort=effort)
    else:
        result, _ = compress_to_bpp(coder, loaded, bpp, max_pixels, effort)
    for note in result.warnings:
        warnings.warn(note, stacklevel=2)
    return result.data


def decompress(data: bytes, levels: int | None = None, device: str = "auto",
               max_pixels: int = container.DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decompress .hvq bytes into a PIL image (levels=1 or 2 for a preview); files that would decode to more
    than max_pixels are refused before any work."""
    container.check_limits(container.read_header(data), container.TILE_SIZE, max_pixels)
    decoded = decoder_for(data, device).decompress(data, levels, max_pixels)
    for note in decoded.warnings:
        warnings.warn(note, stacklevel=2)
    return decoded.image

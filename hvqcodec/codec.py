"""The codec API: ties the autoencoder, the integer priors, the range coder and the .hvq container together.

    data = hvqcodec.compress("photo.png")            # bytes of a .hvq file
    image = hvqcodec.decompress(data)                # PIL.Image, in the original's mode and size

Images are cut into tiles of TILE_SIZE pixels (one tile for anything up to that size) so memory stays bounded
on large images; each tile's three levels are coded as separate streams, top first, so a truncated file or a
`levels` limit still gives the preview that the complete levels allow.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import container
from .autoencoder import LEVEL_STRIDES, PAD_MULTIPLE
from .entropy import decode_level, encode_level
from .errors import ModelError
from .imageio import decode_alpha, encode_alpha, load_image, to_pil
from .intprior import IntPrior
from .device import resolve_device
from .zoo import ModelBundle, default_model, load_bundle

TILE_SIZE = 1024
HASH_CHARS = 16  # the container stores the first 8 bytes of the weights' sha256


@dataclass
class CompressedImage:
    data: bytes
    width: int
    height: int
    level_bytes: list[int]  # per level, all tiles
    cross_entropy_bits: list[float]  # per level, under the integer prior
    header_bytes: int
    warnings: list[str] = field(default_factory=list)

    @property
    def bpp(self) -> float:
        return 8 * len(self.data) / (self.width * self.height)


@dataclass
class DecodedImage:
    image: Image.Image
    levels: int  # levels used for the reconstruction
    codes: list[list[torch.Tensor]]  # [tile][level] decoded code grids
    warnings: list[str] = field(default_factory=list)


def _tiles(width: int, height: int, tile_size: int) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of each tile, raster order; tile_size 0 means one tile."""
    step_x, step_y = (tile_size, tile_size) if tile_size else (width, height)
    return [(top, left, min(step_y, height - top), min(step_x, width - left))
            for top in range(0, height, step_y) for left in range(0, width, step_x)]


def _grid_sizes(height: int, width: int) -> list[tuple[int, int]]:
    padded_h, padded_w = (math.ceil(height / PAD_MULTIPLE) * PAD_MULTIPLE, math.ceil(width / PAD_MULTIPLE) * PAD_MULTIPLE)
    return [(padded_h // s, padded_w // s) for s in LEVEL_STRIDES]


class Codec:
    """A shipped model loaded on a device, ready to compress and decompress."""

    def __init__(self, bundle: ModelBundle, device: str | torch.device = "cpu") -> None:
        if bundle.prior_tables is None or bundle.prior_config is None:
            raise ModelError(f"model {bundle.name!r} has no trained priors, so it cannot compress "
                             "(export it with --priors)")
        self.name, self.sha256 = bundle.name, bundle.sha256
        self.device = torch.device(device)
        self.autoencoder = bundle.autoencoder.to(self.device).eval()
        self.prior = IntPrior(bundle.prior_config.causal_blocks, bundle.prior_config.cond_blocks,
                              bundle.prior_tables, self.device)

    @torch.no_grad()
    def encode_codes(self, rgb: np.ndarray) -> list[torch.Tensor]:
        """(H, W, 3) uint8 -> code grids [top, mid, bottom] of the padded image."""
        x = torch.tensor(rgb).permute(2, 0, 1)[None].float().div(255).to(self.device)  # a copy: rgb may be read-only
        return [c[0] for c in self.autoencoder.encode(x)]

    @torch.no_grad()
    def decode_codes(self, codes: list[torch.Tensor], height: int, width: int) -> np.ndarray:
        """Code grids (1 to 3 levels) -> (H, W, 3) uint8."""
        image = self.autoencoder.decode([c[None].to(self.device) for c in codes])[0, :, :height, :width]
        return image.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()

    def compress(self, source, tile_size: int = TILE_SIZE) -> CompressedImage:
        """Any image (path, bytes, PIL image) -> .hvq bytes and figures about them."""
        loaded = load_image(source)
        height, width = loaded.rgb.shape[:2]
        tile_size = 0 if width <= tile_size and height <= tile_size else tile_size
        streams: list[list[bytes]] = [[], [], []]
        bits = [0.0, 0.0, 0.0]
        for top, left, h, w in _tiles(width, height, tile_size):
            codes = self.encode_codes(loaded.rgb[top:top + h, left:left + w])
            for level, prior in enumerate(self.prior.levels):
                encoded = encode_level(prior, codes[level], codes[:level])
                streams[level].append(encoded.data)
                bits[level] += encoded.cross_entropy_bits
        alpha = encode_alpha(loaded.alpha) if loaded.alpha is not None else b""
        data = container.pack(self.name, self.sha256[:HASH_CHARS], width, height, loaded.mode, tile_size,
                              streams, alpha)
        header_bytes = len(data) - sum(len(s) for level in streams for s in level) - len(alpha)
        return CompressedImage(data, width, height, [sum(len(s) for s in level) for level in streams], bits,
                               header_bytes, list(loaded.warnings))

    def decompress(self, data: bytes, levels: int | None = None) -> DecodedImage:
        """.hvq bytes -> image; `levels` (1-3) limits the reconstruction to a preview."""
        parsed = container.unpack(data)
        header = parsed.header
        if header.model_name != self.name or header.model_hash != self.sha256[:HASH_CHARS]:
            raise ModelError(f"file was made with model {header.model_name} ({header.model_hash}) but this is "
                             f"{self.name}, which has hash {self.sha256[:HASH_CHARS]}: install the matching hvqcodec")
        notes = []
        if parsed.truncated_levels:
            notes.append(f"file is truncated: decoding {header.levels} of {header.levels + parsed.truncated_levels} "
                         "levels (a preview)")
        elif parsed.truncated:
            notes.append("file is truncated after its last level: decoded without checksum verification")
        use = min(levels or header.levels, header.levels)
        tiles = _tiles(header.width, header.height, header.tile_size)
        all_codes: list[list[torch.Tensor]] = [[] for _ in tiles]  # [tile][level]
        for level in range(use):
            sizes = [_grid_sizes(h, w)[level] for _, _, h, w in tiles]
            try:
                grids = decode_level(self.prior.levels[level], parsed.streams[level], sizes, all_codes)
            except ValueError as exc:
                raise container.ContainerError(f"corrupt hvq stream ({exc})") from None
            for codes, grid in zip(all_codes, grids):
                codes.append(grid)
        rgb = np.zeros((header.height, header.width, 3), dtype=np.uint8)
        for (top, left, h, w), codes in zip(tiles, all_codes):
            rgb[top:top + h, left:left + w] = self.decode_codes(codes, h, w)
        alpha = None
        mode = header.mode
        if mode in container.ALPHA_MODES:
            if parsed.alpha:
                alpha = decode_alpha(parsed.alpha, header.width, header.height)
            else:
                notes.append("file is truncated: its alpha channel is lost, the image is returned without it")
                mode = "RGB" if mode == "RGBA" else "L"
        return DecodedImage(to_pil(rgb, mode, alpha), use, all_codes, notes)


@functools.lru_cache(maxsize=4)
def load_codec(model: str | None = None, device: str = "auto") -> Codec:
    """A Codec for a shipped model, cached: loading and hashing the weights happens once per process."""
    return Codec(load_bundle(model or default_model()), resolve_device(device))


def codec_for(data: bytes, device: str = "auto") -> Codec:
    """The Codec of the model that a .hvq file names (ModelError if it is not installed or differs)."""
    header = container.read_header(data)
    try:
        codec = load_codec(header.model_name, device)
    except ModelError as exc:
        raise ModelError(f"file needs model {header.model_name} ({header.model_hash}): {exc}") from None
    return codec  # Codec.decompress checks the weights hash


def compress(image: str | Path | bytes | Image.Image, model: str | None = None, device: str = "auto") -> bytes:
    """Compress an image (path, encoded bytes or PIL image) into the bytes of a .hvq file."""
    result = load_codec(model, device).compress(image)
    for note in result.warnings:
        warnings.warn(note, stacklevel=2)
    return result.data


def decompress(data: bytes, levels: int | None = None, device: str = "auto") -> Image.Image:
    """Decompress .hvq bytes into a PIL image (levels=1 or 2 for a preview)."""
    decoded = codec_for(data, device).decompress(data, levels)
    for note in decoded.warnings:
        warnings.warn(note, stacklevel=2)
    return decoded.image

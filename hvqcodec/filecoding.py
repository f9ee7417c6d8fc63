"""A .hvq file's structure, both ways, without torch: what the encoder codes (`OperatingPoint`, the quality
ladder's lookup), `encode_file` (tiles, streams of codes, the residual layer, alpha, the container) and
`decode_file`, each written once and run by both coders: the torch codec (`codec.Codec`) and the runtime without
torch (`runtime.Runtime`, docs/DESIGN.md section 8), which differ only in how a tile's codes are chosen and
coded and how its picture is computed.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
from PIL import Image

from . import container
from .errors import HvqError, ModelError
from .imageio import ImageError, LoadedImage, decode_alpha, encode_alpha, load_image, to_pil
from .names import LEVEL_STRIDES, PAD_MULTIPLE
from .residual import FLAT, MAX_STEP as MAX_RESIDUAL_STEP, add_residual_tiles, encode_residual, is_tilted

DEFAULT_QUALITY = 75
MAX_EFFORT = 100  # refinement steps per tile (each about one decoder pass forwards and backwards)
ECVQ_CANDIDATES = 8  # nearest bottom codewords considered by entropy-constrained selection

Progress = Callable[[int, int], None]  # (done, total) units of work


# The decoder's precision, asked for by the caller or the environment (both coders read it when they load).
DECODER_PRECISIONS = ("auto", "float32", "bfloat16")
PRECISION_VARIABLE = "HVQCODEC_DECODER_PRECISION"


def decoder_precision(precision: str | None = None) -> str:
    """`precision`, else $HVQCODEC_DECODER_PRECISION, else "auto", checked: auto (bfloat16 where the CPU has it
    natively), float32 or bfloat16. Only pixels depend on it (by a few levels at most); the codes and the file
    never do. HvqError for another value."""
    precision = precision or os.environ.get(PRECISION_VARIABLE) or "auto"
    if precision not in DECODER_PRECISIONS:
        raise HvqError(f"decoder precision {precision!r} (from {PRECISION_VARIABLE} or the caller): expected "
                       + ", ".join(DECODER_PRECISIONS))
    return precision


@dataclass(frozen=True)
class OperatingPoint:
    """What the encoder codes: how many streams (3 levels, then refinement stages) and the rate weights of
    entropy-constrained code selection (squared latent distance per bit; 0 = nearest codes): `lam` for the
    bottom codes under the bottom prior, `stage_lam` for the refinement stages (None: the same as lam), added to
    the rate weight each stage was trained with, and `bottom_lam` for the bottom codes under the bottom
    codebook's usage: the rule a variable-rate model (config bottom_lambdas) was trained with, whose priors
    know the coarse codes it picks. `residual_step` > 0 adds the residual layer (residual.py) with that
    quantiser step and `residual_tilt` (brightness and colour slope of the step over frequency bands) after the
    streams of codes."""
    streams: int
    lam: float = 0.0
    stage_lam: float | None = None
    bottom_lam: float = 0.0
    residual_step: int = 0
    residual_tilt: tuple[int, int] = FLAT

    @property
    def file_streams(self) -> int:
        """Streams in this point's file: the streams of codes, then the residual's when it has one."""
        return self.streams + bool(self.residual_step)

    @property
    def tilted(self) -> bool:
        """This point's file has a tilted residual stream (container version 4)."""
        return bool(self.residual_step) and is_tilted(self.residual_tilt)

    @property
    def stage_weight(self) -> float:
        return self.lam if self.stage_lam is None else self.stage_lam

    @classmethod
    def from_entry(cls, entry: dict) -> "OperatingPoint":
        """A ladder entry of the manifest ({"streams", "lambda", optional "stage_lambda"}) as a point."""
        stage_lam = entry.get("stage_lambda")
        return cls(int(entry["streams"]), float(entry["lambda"]), None if stage_lam is None else float(stage_lam),
                   float(entry.get("bottom_lambda", 0.0)), int(entry.get("residual_step", 0)),
                   tuple(int(slope) for slope in entry.get("residual_tilt", FLAT)))

    def to_entry(self) -> dict:
        entry = {"streams": self.streams, "lambda": self.lam}
        if self.stage_lam is not None:
            entry["stage_lambda"] = self.stage_lam
        if self.bottom_lam:
            entry["bottom_lambda"] = self.bottom_lam
        if self.residual_step:
            entry["residual_step"] = self.residual_step
        if self.tilted:
            entry["residual_tilt"] = list(self.residual_tilt)
        return entry


def shared_files(points: list[OperatingPoint]) -> list[tuple[OperatingPoint, list[int]]]:
    """Points that differ only in their stream count are served by one file: streams are coded coarse to fine,
    so the file of a point with fewer streams is a prefix of the larger one (`container.prefix_size`); not so
    for points with a residual layer. Returns,
    per file, the point to compress (the one with most streams) and the indices of the points it serves."""
    groups: dict[tuple, list[int]] = {}
    for index, point in enumerate(points):
        # A residual stream is coded on top of all the file's codes: its file serves that point alone.
        alone = (point.residual_step, point.residual_tilt, point.streams) if point.residual_step else ()
        groups.setdefault((point.lam, point.stage_lam, point.bottom_lam) + alone, []).append(index)
    return [(points[max(members, key=lambda i: points[i].streams)], members) for members in groups.values()]


def model_ladder(ladder: list[dict] | None, num_streams: int) -> list[dict]:
    """A model's quality -> operating point table: its calibrated ladder, or without one (an uncalibrated model)
    every quality coding all streams with nearest codes."""
    return ladder or [{"quality": 1, "streams": num_streams, "lambda": 0.0}]


def quality_point(ladder: list[dict], quality: int | None = None) -> OperatingPoint:
    """The operating point for quality 1-100 (None: DEFAULT_QUALITY): the ladder's entry with the highest quality
    at or below it."""
    quality = DEFAULT_QUALITY if quality is None else quality
    if not 1 <= quality <= 100:
        raise ValueError(f"quality {quality} is not in 1..100")
    chosen = ladder[0]
    for entry in ladder:
        if entry["quality"] <= quality:
            chosen = entry
    return OperatingPoint.from_entry(chosen)


@dataclass
class CompressedImage:
    data: bytes
    width: int
    height: int
    level_bytes: list[int]  # per level, all tiles
    cross_entropy_bits: list[float]  # per level, under the integer prior
    header_bytes: int
    warnings: list[str] = field(default_factory=list)
    codes: list[list[Any]] = field(default_factory=list, repr=False)  # [tile][stream], as coded (tensors or arrays)
    tile_size: int = 0  # as in the header (0: one tile)
    # With a residual layer: the (H, W, 3) picture of the codes it was coded against (float32 decoder).
    picture: np.ndarray | None = field(default=None, repr=False)

    @property
    def bpp(self) -> float:
        return 8 * len(self.data) / (self.width * self.height)


class FileCoder(Protocol):
    """What `encode_file` and `decode_file` need of a coder (the torch `codec.Codec`, or `runtime.Runtime`)."""
    name: str
    sha256: str
    num_streams: int
    tile_size: int

    def reconstruct(self, tile_codes: list[list[Any]], width: int, height: int, tile_size: int,
                    progress: Progress | None = None, float32: bool = False) -> np.ndarray: ...


class FileEncoder(FileCoder, Protocol):
    def encode_tiles(self, tiles: Sequence[np.ndarray], point: OperatingPoint, effort: int = 0
                     ) -> Iterator[tuple[list[Any], list[tuple[bytes, float]]]]:
        """Each tile's (h, w, 3) uint8 pixels -> its code grids and each stream of codes as (bytes, information in
        bits under the integer prior), in order."""
        ...


class FileDecoder(FileCoder, Protocol):
    def decode_level_streams(self, level: int, streams: Sequence[bytes], sizes: Sequence[tuple[int, int]],
                             tile_codes: Sequence[Sequence[Any]]) -> list[Any]: ...

    def decode_stage_streams(self, stage: int, streams: Sequence[bytes], tile_codes: Sequence[Sequence[Any]]
                             ) -> list[Any]: ...


def encode_file(encoder: FileEncoder, source, point: OperatingPoint, max_pixels: int = container.DEFAULT_MAX_PIXELS,
                effort: int = 0, progress: Progress | None = None) -> CompressedImage:
    """Any image (path, bytes, PIL image, uint8 array, LoadedImage) -> .hvq bytes coding `point`, and figures
    about them. Images over max_pixels are refused (ImageError); `progress(done, total)` as each tile is coded."""
    if not 0 <= effort <= MAX_EFFORT:
        raise ValueError(f"effort {effort} is not in 0..{MAX_EFFORT}")
    if not 1 <= point.streams <= encoder.num_streams:
        raise ValueError(f"{point.streams} streams: this model has 1..{encoder.num_streams}")
    if not 0 <= point.residual_step <= MAX_RESIDUAL_STEP:
        raise ValueError(f"residual step {point.residual_step} is not in 0..{MAX_RESIDUAL_STEP}")
    loaded = source if isinstance(source, LoadedImage) else load_image(source)
    height, width = loaded.rgb.shape[:2]
    if width * height > max_pixels:
        raise ImageError(f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
                         f"{max_pixels:,} (raise it with --max-pixels)")
    tile_size = 0 if width <= encoder.tile_size and height <= encoder.tile_size else encoder.tile_size
    streams: list[list[bytes]] = [[] for _ in range(point.streams)]
    bits = [0.0] * point.streams
    tile_codes = []
    tiles = container.tile_grid(width, height, tile_size)
    pixels = [loaded.rgb[top:top + h, left:left + w] for top, left, h, w in tiles]
    for codes, encoded in encoder.encode_tiles(pixels, point, effort):
        tile_codes.append(codes)
        for index, (data, information) in enumerate(encoded):
            streams[index].append(data)
            bits[index] += information
        if progress is not None:
            progress(len(tile_codes), len(tiles))
    picture = None
    if point.residual_step:
        # What the decoder will show without the residual: the same codes through the same decoder, in
        # float32 on both sides (a bfloat16 decoder's picture differs by a level or two, which the residual
        # would then carry into the top qualities' pictures).
        picture = encoder.reconstruct(tile_codes, width, height, tile_size, float32=True)
        streams.append([])
        bits.append(0.0)
        for top, left, h, w in tiles:
            residual = encode_residual(loaded.rgb[top:top + h, left:left + w], picture[top:top + h, left:left + w],
                                       point.residual_step, point.residual_tilt)
            streams[-1].append(residual.data)
            bits[-1] += residual.bits
    alpha = encode_alpha(loaded.alpha) if loaded.alpha is not None else b""
    data = container.pack(encoder.name, encoder.sha256[:container.HASH_CHARS], width, height, loaded.mode, tile_size,
                          streams, alpha, residual=point.residual_step > 0, tilted=point.tilted)
    header_bytes = len(data) - sum(len(s) for level in streams for s in level) - len(alpha)
    return CompressedImage(data, width, height, [sum(len(s) for s in level) for level in streams], bits,
                           header_bytes, list(loaded.warnings), tile_codes, tile_size, picture)


class Compressor(Protocol):
    """What compresses whole images (`codec.Codec`, `runtime.Runtime`): a quality ladder and `compress`."""
    ladder: list[dict]

    def compress(self, source, quality: int | None = None, point: OperatingPoint | None = None,
                 max_pixels: int = container.DEFAULT_MAX_PIXELS, effort: int = 0,
                 progress: Progress | None = None) -> CompressedImage: ...


def compress_to_bpp(codec: Compressor, source, target_bpp: float,
                    max_pixels: int | None = None, effort: int = 0) -> tuple[CompressedImage, int]:
    """The highest ladder quality whose file fits target_bpp (binary search over the ladder's entries; the
    smallest entry, with a note in its warnings, when none fits), each try at the given encoder effort. Returns
    the compressed image and the quality used."""
    limit = max_pixels or container.DEFAULT_MAX_PIXELS
    loaded = source if isinstance(source, LoadedImage) else load_image(source)  # read once, compressed several times
    qualities = [entry["quality"] for entry in codec.ladder]
    low, high = 0, len(qualities) - 1
    best = None
    while low <= high:
        middle = (low + high) // 2
        result = codec.compress(loaded, qualities[middle], max_pixels=limit, effort=effort)
        if result.bpp <= target_bpp:
            best, low = (result, qualities[middle]), middle + 1
        else:
            high = middle - 1
    if best is None:
        smallest = codec.compress(loaded, qualities[0], max_pixels=limit, effort=effort)
        smallest.warnings.append(f"even quality {qualities[0]} takes {smallest.bpp:.4f} bpp")
        return smallest, qualities[0]
    return best


@dataclass
class DecodedImage:
    image: Image.Image
    levels: int  # levels used for the reconstruction
    codes: list[list[Any]]  # [tile][level] decoded code grids (tensors from the torch codec, arrays from Runtime)
    warnings: list[str] = field(default_factory=list)


def grid_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Each level's code grid (rows, columns) for an image (or tile) of height x width pixels."""
    padded_h, padded_w = (math.ceil(height / PAD_MULTIPLE) * PAD_MULTIPLE, math.ceil(width / PAD_MULTIPLE) * PAD_MULTIPLE)
    return [(padded_h // s, padded_w // s) for s in LEVEL_STRIDES]


def decode_file(decoder: FileDecoder, data: bytes, levels: int | None = None,
                max_pixels: int = container.DEFAULT_MAX_PIXELS, progress: Progress | None = None) -> DecodedImage:
    """.hvq bytes -> image; `levels` limits the reconstruction to the first streams (1 or 2: a preview).

    Files over max_pixels, or tiled otherwise than the decoder tiles, are refused from their header.
    `progress(done, total)` is called as each stream (all tiles together) and then each tile's picture is done."""
    container.check_limits(container.read_header(data), decoder.tile_size, max_pixels)
    parsed = container.unpack(data)
    header = parsed.header
    if header.model_name != decoder.name or header.model_hash != decoder.sha256[:container.HASH_CHARS]:
        raise ModelError(f"file was made with model {header.model_name} ({header.model_hash}) but this is "
                         f"{decoder.name}, which has hash {decoder.sha256[:container.HASH_CHARS]}: install the matching "
                         "hvqcodec")
    notes = []
    if parsed.truncated_levels:
        notes.append(f"file is truncated: decoding {header.levels} of {header.levels + parsed.truncated_levels} "
                     "levels (a preview)")
    elif parsed.truncated:
        notes.append("file is truncated after its last level: decoded without checksum verification")
    use = min(levels or header.levels, header.levels)
    code_streams = min(use, header.code_streams)
    tiles = container.tile_grid(header.width, header.height, header.tile_size)
    all_codes: list[list[Any]] = [[] for _ in tiles]  # [tile][level]
    if header.code_streams > decoder.num_streams:
        raise container.ContainerError(f"corrupt hvq file ({header.code_streams} streams of codes, but model "
                                       f"{decoder.name} codes at most {decoder.num_streams})")
    for level in range(code_streams):
        try:
            if level < 3:
                sizes = [grid_sizes(h, w)[level] for _, _, h, w in tiles]
                grids = decoder.decode_level_streams(level, parsed.streams[level], sizes, all_codes)
            else:
                grids = decoder.decode_stage_streams(level - 3, parsed.streams[level], all_codes)
        except container.ContainerError:
            raise
        except Exception as exc:  # the range decoder's own failures on damaged data, whatever their type
            raise container.ContainerError(f"corrupt hvq stream ({_one_line(exc)})") from None
        for codes, grid in zip(all_codes, grids):
            codes.append(grid)
        if progress is not None:
            progress(level + 1, use + len(tiles))
    with_residual = use > code_streams
    rgb = decoder.reconstruct(all_codes, header.width, header.height, header.tile_size,
                              None if progress is None else lambda done, _: progress(use + done, use + len(tiles)),
                              float32=with_residual)
    if with_residual:  # the residual layer on top of the picture, tile by tile
        try:
            add_residual_tiles(rgb, parsed.streams[code_streams], header.tile_size, header.tilted)
        except Exception as exc:  # damaged data: the range decoder's failures, whatever their type
            raise container.ContainerError(f"corrupt hvq residual stream ({_one_line(exc)})") from None
    alpha = None
    mode = header.mode
    if mode in container.ALPHA_MODES:
        if parsed.alpha:
            alpha = decode_alpha(parsed.alpha, header.width, header.height)
        else:
            notes.append("file is truncated: its alpha channel is lost, the image is returned without it")
            mode = "RGB" if mode == "RGBA" else "L"
    return DecodedImage(to_pil(rgb, mode, alpha), use, all_codes, notes)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]

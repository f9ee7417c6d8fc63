"""Decoding .hvq files without torch (docs/DESIGN.md section 8): the file's structure (header checks, levels,
stages, tiles, residual layer, alpha) in one function that the torch codec runs too, and a `Runtime` that decodes
with numpy and the C modules: the integer priors (`npprior`, the same codes as the torch codec) and the
autoencoder's decoder (`npdecoder`: float32, whose pixels differ from torch's by rounding only, as section 4
allows). Importing this module imports no torch, so `hvqcodec decompress` skips torch's 1.5-2 s import where this
runtime runs: on a CPU with the C modules' int8 path, for models with 8-bit prior tables.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from PIL import Image

from . import container, npprior, rangecoding, tensorfile
from .errors import HvqError, ModelError
from .imageio import decode_alpha, to_pil
from .manifest import ModelEntry, check_payload, check_weights_file, model_entry
from .names import LEVEL_STRIDES, PAD_MULTIPLE
from .residual import add_residual_tiles
from .wavefront import level_blocks

Progress = Callable[[int, int], None]


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


class FileDecoder(Protocol):
    """What `decode_file` needs of a decoder (the torch `codec.Codec`, or `Runtime`)."""
    name: str
    sha256: str
    num_streams: int
    tile_size: int

    def decode_level_streams(self, level: int, streams: Sequence[bytes], sizes: Sequence[tuple[int, int]],
                             tile_codes: Sequence[Sequence[Any]]) -> list[Any]: ...

    def decode_stage_stream(self, stage: int, data: bytes, codes: Sequence[Any]) -> Any: ...

    def reconstruct(self, tile_codes: list[list[Any]], width: int, height: int, tile_size: int,
                    progress: Progress | None = None, float32: bool = False) -> np.ndarray: ...


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
                grids = [decoder.decode_stage_stream(level - 3, data, codes)
                         for data, codes in zip(parsed.streams[level], all_codes)]
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


class RuntimeUnavailable(HvqError):
    """This runtime does not decode for this model here (16-bit prior tables, no C int8 path, a decoder
    configuration npdecoder does not implement, a weights file only torch reads): use the torch codec."""


class Runtime:
    """A shipped model's decoder without torch: numpy and the C modules. `RuntimeUnavailable` where it does not
    run (the torch codec then does); ModelError for a missing or damaged model, as the torch codec's."""

    def __init__(self, entry: ModelEntry, threads: int | None = None) -> None:
        from .npdecoder import NumpyDecoder

        check_weights_file(entry.path, entry.file_sha256)
        try:
            payload = check_payload(tensorfile.load(entry.path), entry.path)
        except tensorfile.TensorFileError as exc:
            raise RuntimeUnavailable(f"{entry.path.name}: {exc}") from None
        tables = payload.get("prior_tables")
        if tables is None or "prior_config" not in payload:
            raise ModelError(f"model {entry.name} has no trained priors, so it cannot decompress")
        if not npprior.runs_here(tables):
            raise RuntimeUnavailable(f"model {entry.name}: 16-bit prior tables, or no C int8 path on this CPU")
        prior = {**payload["prior_config"], **(entry.coding or {})}
        self.threads = threads or npprior.default_threads()
        try:
            self.levels = [npprior.LevelPrior(tables, level, prior["causal_blocks"], prior["cond_blocks"], block,
                                              self.threads)
                           for level, block in enumerate(level_blocks(prior.get("coding_block", 0)))]
            self.stages = [npprior.StagePrior(tables, stage, prior["refine_groups"], prior["stage_blocks"],
                                              self.threads)
                           for stage in range(prior.get("refine_stages", 0))]
            self.decoder = NumpyDecoder(payload["config"], payload["state_dict"])
        except (ValueError, KeyError) as exc:
            raise RuntimeUnavailable(f"model {entry.name}: {_one_line(exc)}") from None
        self.name, self.sha256 = entry.name, entry.sha256
        self.num_streams = self.decoder.num_streams
        self.tile_size = container.TILE_SIZE

    def decode_level_streams(self, level: int, streams: Sequence[bytes], sizes: Sequence[tuple[int, int]],
                             tile_codes: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
        state = npprior.LevelState(self.levels[level], sizes, tile_codes)
        rangecoding.decode_fronts(state, [rangecoding.stream_decoder(data) for data in streams])
        return state.codes()

    def decode_stage_stream(self, stage: int, data: bytes, codes: Sequence[np.ndarray]) -> np.ndarray:
        prior = self.stages[stage]
        h, w = codes[2].shape
        groups = rangecoding.decode_groups(prior, rangecoding.stream_decoder(data), prior.context(codes), h * w)
        return np.stack([group.reshape(h, w) for group in groups])

    def reconstruct(self, tile_codes: list[list[np.ndarray]], width: int, height: int, tile_size: int,
                    progress: Progress | None = None, float32: bool = True) -> np.ndarray:
        """Each tile's code grids -> the (H, W, 3) uint8 picture (always float32: `float32` is the torch codec's
        choice between its decoders)."""
        from .npdecoder import to_uint8

        rgb = np.zeros((height, width, 3), dtype=np.uint8)
        for done, ((top, left, h, w), codes) in enumerate(
                zip(container.tile_grid(width, height, tile_size), tile_codes), 1):
            rgb[top:top + h, left:left + w] = to_uint8(self.decoder.decode(codes, self.threads)[:h, :w])
            if progress is not None:
                progress(done, len(tile_codes))
        return rgb

    def decompress(self, data: bytes, levels: int | None = None, max_pixels: int = container.DEFAULT_MAX_PIXELS,
                   progress: Progress | None = None) -> DecodedImage:
        """As `codec.Codec.decompress`: .hvq bytes -> image (the same codes; pixels within float rounding)."""
        return decode_file(self, data, levels, max_pixels, progress)


@functools.lru_cache(maxsize=4)
def load_runtime(name: str | None = None, folder: Path | None = None) -> Runtime:
    """A shipped model's runtime (default: the default model), kept for the next file of the same model."""
    return Runtime(model_entry(name, folder))


def runtime_for(data: bytes, folder: Path | None = None) -> Runtime:
    """The runtime for the model a file names (ModelError if it is not installed, RuntimeUnavailable where this
    runtime does not run; `decompress` checks the weights hash)."""
    header = container.read_header(data)
    try:
        return load_runtime(header.model_name, folder)
    except ModelError as exc:
        raise ModelError(f"file needs model {header.model_name} ({header.model_hash}): {exc}") from None

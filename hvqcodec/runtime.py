"""Coding .hvq files without torch (docs/DESIGN.md section 8): a `Runtime` that compresses and decompresses with
numpy and the C modules, through the file structure of `filecoding` that the torch codec runs too: the integer
priors (`npprior`, the same integers as the torch codec), the autoencoder's decoder (`npdecoder`: float32, whose
pixels differ from torch's by rounding only, as section 4 allows) and its encoder (`npencoder`, with the code
selection of `npcoding`). Importing this module imports no torch, so `hvqcodec compress` and `decompress` skip
torch's 1.5-2 s import where this runtime runs: on a CPU with the C modules' int8 path, for models with 8-bit
prior tables.
"""
from __future__ import annotations

import functools
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from . import container, npprior, rangecoding, tensorfile
from .errors import HvqError, ModelError
from .filecoding import (CompressedImage, DecodedImage, OperatingPoint, Progress, _one_line,  # noqa: F401
                         decode_file, decoder_precision, encode_file, grid_sizes,  # (grid_sizes: re-exported)
                         model_ladder, quality_point)
from .manifest import ModelEntry, check_payload, check_weights_file, default_model, model_entry, models_dir
from .wavefront import level_blocks

if TYPE_CHECKING:
    from .npcoding import TileEncoder


# Where the runtime's decoder has no bfloat16 (no AMX tiles), images up to this many pixels are decoded without
# torch on a CPU; beyond, torch's decoder (bfloat16 where the CPU has AVX512-BF16) wins back its import: a
# 4000x3000 photo took 20.6 s to decode with the runtime's float32 decoder and 17.8 s with torch's bfloat16 one
# (kodim01: 1.3-1.4 s against 2.6-3.3 s). With the runtime's bfloat16 tiles that photo took 15.5-16.7 s against
# torch's 17.9-19.4 s (three interleaved pairs, 1.14 GB either way), so there the runtime decodes every size.
# Compressing has no such limit: that photo took 13.2 s (419 MB) without torch against 18.2 s (759 MB) with it at
# the default quality (`/usr/bin/time hvqcodec compress|decompress` with HVQ_RUNTIME=numpy and =torch).
RUNTIME_MAX_PIXELS = 4_000_000


def decodes_any_size() -> bool:
    """Whether the runtime's decoder runs in bfloat16 here (AMX tiles), where it decodes images of any size
    sooner than torch."""
    from . import decoderkernel

    return decoderkernel.bf16_available()


def runtime_preferred(device: str, pixels: int | None = None) -> bool:
    """Whether this runtime codes rather than the torch codec (where the runtime runs): on the CPU (device auto or
    cpu), for compressing always (pixels None), for decoding an image of `pixels` up to RUNTIME_MAX_PIXELS, or of
    any size where `decodes_any_size()`. HVQ_RUNTIME=torch in the environment always takes the torch codec,
    HVQ_RUNTIME=numpy this runtime whatever the size."""
    import os

    choice = os.environ.get("HVQ_RUNTIME", "")
    small = pixels is None or pixels <= RUNTIME_MAX_PIXELS or decodes_any_size()
    return device in ("auto", "cpu") and choice != "torch" and (small or choice == "numpy")


class RuntimeUnavailable(HvqError):
    """This runtime does not code for this model here (16-bit prior tables, no C int8 path, a decoder
    configuration npdecoder does not implement, a weights file only torch reads): use the torch codec."""


class Runtime:
    """A shipped model's coder without torch (compress and decompress): numpy and the C modules.
    `RuntimeUnavailable` where it does not run (the torch codec then does); ModelError for a missing or damaged
    model, as the torch codec's."""

    def __init__(self, entry: ModelEntry, threads: int | None = None) -> None:
        from .npdecoder import NumpyDecoder

        check_weights_file(entry.path, entry.file_sha256)
        try:
            payload = check_payload(tensorfile.load(entry.path), entry.path)
        except tensorfile.TensorFileError as exc:
            raise RuntimeUnavailable(f"{entry.path.name}: {exc}") from None
        tables = payload.get("prior_tables")
        if tables is None or "prior_config" not in payload:
            raise ModelError(f"model {entry.name} has no trained priors, so it cannot compress or decompress")
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
        # As the torch codec's decoder_precision (read when it loads): bfloat16 wherever this decoder has it (AMX).
        self.low_precision = decoder_precision() != "float32" and self.decoder.low_precision_available
        self.tile_size = container.TILE_SIZE
        self.calibrated = bool(entry.ladder)
        self.ladder = model_ladder(entry.ladder, self.num_streams)
        self.device = "cpu"
        self._payload = payload  # for the encoder, made on first use (decoding never needs it)
        self._encoder: TileEncoder | None = None
        self._contexts: dict[tuple[int, int], Future] = {}  # the decoder's context paths, computed ahead
        self._side_thread: ThreadPoolExecutor | None = None

    def _side(self) -> ThreadPoolExecutor:
        if self._side_thread is None:
            self._side_thread = ThreadPoolExecutor(1, thread_name_prefix="hvqcodec-context")
        return self._side_thread

    def operating_point(self, quality: int | None = None) -> OperatingPoint:
        return quality_point(self.ladder, quality)

    def compress(self, source, quality: int | None = None, point: OperatingPoint | None = None,
                 max_pixels: int = container.DEFAULT_MAX_PIXELS, effort: int = 0,
                 progress: Progress | None = None) -> CompressedImage:
        """As `codec.Codec.compress` (effort must be 0: refinement needs torch's gradients): any image -> .hvq
        bytes and figures about them. Its files decode with either runtime; their codes may differ from the torch
        codec's in the few positions where float rounding flips a near-tie (DESIGN section 8)."""
        return encode_file(self, source, point or self.operating_point(quality), max_pixels, effort, progress)

    def encode_tiles(self, tiles: Sequence[np.ndarray], point: OperatingPoint, effort: int = 0
                     ) -> Iterator[tuple[list[np.ndarray], list[tuple[bytes, float]]]]:
        """Each tile's code grids and streams, in order (`npcoding.TileEncoder.encode_tiles`)."""
        return self.tile_encoder().encode_tiles(tiles, point, effort)

    def tile_encoder(self) -> TileEncoder:
        if self._encoder is None:
            from .npcoding import TileEncoder

            try:
                self._encoder = TileEncoder.from_payload(self._payload["config"], self._payload["state_dict"],
                                                         self.levels, self.stages, self.threads, self.decoder.weights)
            except (ValueError, KeyError) as exc:
                raise RuntimeUnavailable(f"model {self.name}: {_one_line(exc)}") from None
        return self._encoder

    def decode_level_streams(self, level: int, streams: Sequence[bytes], sizes: Sequence[tuple[int, int]],
                             tile_codes: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
        side_by_side = self._side_by_side(len(streams))
        if level == 0:
            self._contexts.clear()  # a new file
        elif level == 2 and self.threads > 1 and not side_by_side:
            # The decoder's context path needs only the top and mid codes: on a side thread while the bottom level
            # and the stages are range decoded, whose small wavefront steps leave a core partly idle.
            for codes in tile_codes:
                self._contexts[_grids_key(codes)] = self._side().submit(self.decoder.context, list(codes[:2]),
                                                                        low_precision=self.low_precision)
        prior = self._single_thread_levels[level] if side_by_side else self.levels[level]

        def decode(group: range) -> list[np.ndarray]:
            state = npprior.LevelState(prior, [sizes[i] for i in group], [tile_codes[i] for i in group])
            decoders = [rangecoding.stream_decoder(streams[i]) for i in group]
            if rangecoding.c_coder():  # the whole level in one C call (on this thread)
                state.decode(decoders)
            else:
                rangecoding.decode_fronts(state, decoders)
            return state.codes()

        return self._tile_groups(decode, len(streams), side_by_side)

    def decode_stage_streams(self, stage: int, streams: Sequence[bytes], tile_codes: Sequence[Sequence[np.ndarray]]
                             ) -> list[np.ndarray]:
        side_by_side = self._side_by_side(len(streams))
        prior = self._single_thread_stages[stage] if side_by_side else self.stages[stage]

        def decode(group: range) -> list[np.ndarray]:
            grids = []
            for i in group:
                h, w = tile_codes[i][2].shape
                groups = rangecoding.decode_groups(prior, rangecoding.stream_decoder(streams[i]),
                                                   prior.context(tile_codes[i]), h * w)
                grids.append(np.stack([codes.reshape(h, w) for codes in groups]))
            return grids

        return self._tile_groups(decode, len(streams), side_by_side)

    def _side_by_side(self, tiles: int) -> bool:
        """Whether a file's tiles are decoded two at once, one thread each (range decoded in two groups; their
        pictures two at a time): where the runtime has two threads and the file two tiles or more. A tile's codes
        depend only on its own streams and upper codes, so they are the same either way; the two groups overlap the
        range coder and Python, which hold the GIL, with the C kernels, which do not (on one thread each, a
        wavefront step's work is too small to share)."""
        return tiles > 1 and self.threads > 1

    @functools.cached_property
    def _single_thread_levels(self) -> list[npprior.LevelPrior]:
        return [level.with_threads(1) for level in self.levels]

    @functools.cached_property
    def _single_thread_stages(self) -> list[npprior.StagePrior]:
        return [stage.with_threads(1) for stage in self.stages]

    @staticmethod
    def _tile_groups(decode, tiles: int, side_by_side: bool) -> list[np.ndarray]:
        """decode(range of tiles) -> their grids, for all tiles in order: in two halves at once where
        side_by_side, else in one call."""
        if not side_by_side:
            return decode(range(tiles))
        half = (tiles + 1) // 2
        with ThreadPoolExecutor(2, thread_name_prefix="hvqcodec-tiles") as pool:
            parts = list(pool.map(decode, [range(half), range(half, tiles)]))
        return parts[0] + parts[1]

    def reconstruct(self, tile_codes: list[list[np.ndarray]], width: int, height: int, tile_size: int,
                    progress: Progress | None = None, float32: bool = True) -> np.ndarray:
        """Each tile's code grids -> the (H, W, 3) uint8 picture: with the ConvNeXt blocks' Linears in bfloat16
        where `low_precision` (as the torch codec's bfloat16 decoder), unless `float32` (asked for under a residual
        layer, coded against float32 pixels). Several tiles are decoded two at a time, one thread each, where the
        runtime has two threads (`_side_by_side`): the same pixels, a little sooner
        (`python benchmarks/tile_threads.py`)."""
        from .npcoding import InPlace
        from .npdecoder import to_uint8

        places = container.tile_grid(width, height, tile_size)
        side_by_side = self._side_by_side(len(tile_codes))
        threads = 1 if side_by_side else self.threads
        low_precision = self.low_precision and not float32

        def picture(codes: list[np.ndarray]) -> np.ndarray:
            pending = self._contexts.pop(_grids_key(codes), None) if len(codes) > 1 else None
            # (computed ahead in the runtime's precision: under a residual layer a bfloat16 one is not used)
            context = None if pending is None or low_precision != self.low_precision else pending.result()
            return to_uint8(self.decoder.decode(codes, threads, context=context, low_precision=low_precision))

        rgb = np.zeros((height, width, 3), dtype=np.uint8)
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="hvqcodec-tile") if side_by_side else InPlace()
        with pool:
            for done, ((top, left, h, w), tile) in enumerate(zip(places, pool.map(picture, tile_codes)), 1):
                rgb[top:top + h, left:left + w] = tile[:h, :w]
                if progress is not None:
                    progress(done, len(tile_codes))
        return rgb

    def decompress(self, data: bytes, levels: int | None = None, max_pixels: int = container.DEFAULT_MAX_PIXELS,
                   progress: Progress | None = None) -> DecodedImage:
        """As `codec.Codec.decompress`: .hvq bytes -> image (the same codes; pixels within float rounding)."""
        return decode_file(self, data, levels, max_pixels, progress)


def load_runtime(name: str | None = None, folder: Path | None = None, threads: int | None = None) -> Runtime:
    """A shipped model's runtime (default: the default model of the models folder, $HVQCODEC_MODELS's where set),
    kept for the next file of the same model, folder, threads and decoder precision; threads: how many it codes
    with (None: up to two, `npprior.default_threads`)."""
    folder = folder or models_dir()
    return _cached_runtime(name or default_model(folder), folder, threads, decoder_precision())


@functools.lru_cache(maxsize=4)
def _cached_runtime(name: str, folder: Path, threads: int | None, precision: str) -> Runtime:
    return Runtime(model_entry(name, folder), threads)  # (precision: in the key, read again by Runtime)


load_runtime.cache_clear = _cached_runtime.cache_clear  # type: ignore[attr-defined]


def runtime_for(data: bytes, folder: Path | None = None) -> Runtime:
    """The runtime for the model a file names (ModelError if it is not installed, RuntimeUnavailable where this
    runtime does not run; `decompress` checks the weights hash)."""
    header = container.read_header(data)
    try:
        return load_runtime(header.model_name, folder)
    except ModelError as exc:
        raise ModelError(f"file needs model {header.model_name} ({header.model_hash}): {exc}") from None


def _grids_key(codes: Sequence[np.ndarray]) -> tuple[int, int]:
    """A tile's top and mid grids by identity: the arrays a file's decoding hands from level to level (a context
    computed ahead holds them, so their ids stay theirs until it is taken)."""
    return id(codes[0]), id(codes[1])

"""Choosing and coding one tile's codes without torch: what `codec.Codec.encode_codes` and `encode_tile` do, on
`npencoder` (the encoder's float part), `npprior` (the integer priors) and `rangecoding`'s encoding loops, for the
runtime without torch (`runtime.Runtime.compress`, docs/DESIGN.md section 8).

The rules are the torch codec's: top and mid codes nearest; the bottom codes nearest (+ bottom_lambda * bits under
the codebook's usage), or, with a rate weight lam > 0, the best of ECVQ_CANDIDATES codewords by distance + lam *
bits under the bottom prior, the bits read in one parallel pass with the nearest codes as context; each
refinement stage group by group by distance + weight * bits under the stage prior (exact: a group's
probabilities depend only on codes already chosen), the weight being the point's plus the stage's trained one, or
nearest codes when no weight is positive. The integers of the priors are the same here and there; the distances
are float32 computed in another order, so a near-tie may fall the other way in a few positions (the file is
valid and decodes the same with either runtime, as section 8 allows).

Imports numpy, constriction and the package's torch-free modules only.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator, Mapping, Sequence

import numpy as np

from . import npprior, rangecoding
from .filecoding import ECVQ_CANDIDATES, OperatingPoint
from .npdecoder import DecoderWeights, bottom_vector
from .npencoder import Codebook, NumpyEncoder, distances


class TileEncoder:
    """A model's encoder without torch: `encode_tile(rgb, point)` -> the tile's code grids and its streams.

    encoder: the NumpyEncoder of the model; levels, stages: its npprior priors; stage_lambdas: the rate weight each
    refinement stage was trained with (config refine_lambdas; zeros without them)."""

    def __init__(self, encoder: NumpyEncoder, levels: Sequence[npprior.LevelPrior],
                 stages: Sequence[npprior.StagePrior], stage_lambdas: Sequence[float], threads: int) -> None:
        self.encoder, self.levels, self.stages, self.threads = encoder, list(levels), list(stages), threads
        self.stage_lambdas = list(stage_lambdas) or [0.0] * len(self.stages)
        # Each refinement group's codebook (K, D / G) with what `npencoder.distances` needs (plain distances).
        self.stage_codebooks = [[Codebook.of(group) for group in stage]
                                for stage in encoder.decoder_weights.stage_codebooks]
        self._views: dict[int, TileEncoder] = {}

    def with_threads(self, threads: int) -> "TileEncoder":
        """This encoder on `threads` threads (the same weights and tables; made once, kept: the level priors build
        their conditioning kernels on first use)."""
        if threads == self.threads:
            return self
        if threads not in self._views:
            self._views[threads] = TileEncoder(self.encoder, [level.with_threads(threads) for level in self.levels],
                                               [stage.with_threads(threads) for stage in self.stages],
                                               self.stage_lambdas, threads)
        return self._views[threads]

    def encode_tiles(self, tiles: Sequence[np.ndarray], point: OperatingPoint, effort: int = 0
                     ) -> Iterator[tuple[list[np.ndarray], list[tuple[bytes, float]]]]:
        """`encode_tile` of each tile, in order. Several tiles run side by side, one thread each, where this encoder
        has threads to spare: a tile's coding has serial parts (numpy's reductions, the range coder, Python) that
        leave a second thread idle (`python benchmarks/tile_threads.py`: four 1024x1024 tiles of a photo in 4.28 s
        against 4.87 s one after the other on two threads; the same bytes)."""
        if len(tiles) < 2 or self.threads < 2:
            yield from (self.encode_tile(rgb, point, effort) for rgb in tiles)
            return
        single = self.with_threads(1)
        with ThreadPoolExecutor(self.threads, thread_name_prefix="hvqcodec-tile") as pool:
            yield from pool.map(lambda rgb: single.encode_tile(rgb, point, effort), tiles)

    @classmethod
    def from_payload(cls, config: Mapping, state: Mapping[str, np.ndarray], levels: Sequence[npprior.LevelPrior],
                     stages: Sequence[npprior.StagePrior], threads: int,
                     decoder_weights: DecoderWeights | None = None) -> "TileEncoder":
        """From a weights file's autoencoder config and state dict (as `tensorfile.load` gives them);
        decoder_weights: the NumpyDecoder's prepared weights of that state, shared."""
        lambdas = [float(lam) for lam in config.get("refine_lambdas") or ()]
        return cls(NumpyEncoder(config, state, decoder_weights=decoder_weights), levels, stages, lambdas, threads)

    def encode_tile(self, rgb: np.ndarray, point: OperatingPoint, effort: int = 0
                    ) -> tuple[list[np.ndarray], list[tuple[bytes, float]]]:
        """One tile's (h, w, 3) uint8 pixels -> the code grids the point codes ([top (h, w), mid, bottom, stages (G,
        h, w)...] of the padded tile) and each stream as (bytes, information in bits).

        A level's stream is coded as soon as its codes are chosen: where this encoder has two threads, on a side
        thread (one C thread) while the next codes are chosen on both. A stream's coding has serial parts (the
        range coder, numpy) that would leave a core idle (docs/DESIGN.md section 8 has the measurements); the same
        bytes."""
        if effort:
            raise ValueError("encoder refinement (effort > 0) needs the torch codec")
        streams = point.streams
        top, mid, latent = self.encoder.encode_latent(rgb, self.threads)
        codes = [top, mid][:streams]
        side_by_side = streams >= 3 and self.threads >= 2
        coder = self.with_threads(1) if side_by_side else self
        with ThreadPoolExecutor(1, thread_name_prefix="hvqcodec-stream") if side_by_side else InPlace() as side:
            coded = [side.submit(coder._level_stream, level, grid, codes[:level]) for level, grid in enumerate(codes)]
            if streams >= 3:
                codes.append(self._bottom(latent, codes, point, coder, side, coded))
                coded += [_done(stream) for stream in self._stages(latent, codes, point)]
            return codes, [future.result() for future in coded]

    def _bottom(self, latent: np.ndarray, codes: list[np.ndarray], point: OperatingPoint, coder: "TileEncoder",
                side, coded: list[Future]) -> np.ndarray:
        """The bottom codes (entropy-constrained with lam > 0, else nearest), their stream submitted to `side`."""
        h, w, dim = latent.shape
        flat = latent.reshape(h * w, dim)
        if point.lam > 0:
            bottom, state, known = self._ecvq_bottom(flat, (h, w), codes, point.lam, point.bottom_lam)
            state.threads = coder.threads
            if known is not None:
                coded.append(side.submit(coder._reused_stream, bottom, state, known))
                return bottom
        else:
            bottom, state = self.encoder.nearest(2, flat, point.bottom_lam, self.threads).reshape(h, w), None
        coded.append(side.submit(coder._level_stream, 2, bottom, codes[:2], state))
        return bottom

    def _stages(self, latent: np.ndarray, codes: list[np.ndarray], point: OperatingPoint) -> list[tuple[bytes, float]]:
        """The refinement stages the point codes, chosen and coded one after the other (codes appended)."""
        flat = latent.reshape(-1, latent.shape[-1])
        stage_weights = [point.stage_weight + lam for lam in self.stage_lambdas[:point.streams - 3]]
        nearest_only = point.lam <= 0 and not any(weight > 0 for weight in stage_weights)
        streams = []
        for stage, weight in enumerate(stage_weights):
            # What the bottom code and the stages so far leave of the latent, as the decoder sums their vectors.
            residual = flat - bottom_vector(self.encoder.decoder_weights, codes[2:]).reshape(flat.shape)
            stage_codes, stream = self._stage(stage, residual, codes, None if nearest_only else weight)
            codes.append(stage_codes)
            streams.append((stream.data, stream.cross_entropy_bits))
        return streams

    def _level_stream(self, level: int, grid: np.ndarray, uppers: list[np.ndarray],
                      state: npprior.LevelState | None = None) -> tuple[bytes, float]:
        """A level's known grid -> (bytes, bits); `state`: one made for this grid's size and uppers already (its
        conditioning, the costly part, depends on the upper codes only), painted over here."""
        if state is None:
            state = npprior.LevelState(self.levels[level], [grid.shape], [uppers])
        symbols = grid.reshape(-1)[state.order]
        state.paint(0, len(symbols), symbols)
        stream = state.encode(symbols) if rangecoding.c_coder() else rangecoding.encode_ordered(state, symbols)
        return stream.data, stream.cross_entropy_bits

    def _ecvq_bottom(self, flat: np.ndarray, size: tuple[int, int], uppers: list[np.ndarray], lam: float,
                     bottom_lam: float) -> tuple[np.ndarray, npprior.LevelState, tuple | None]:
        """Bottom codes minimising distance (+ bottom_lam * bits under the codebook's usage) + lam * bits among the
        best few codewords, the bits under the bottom prior with the nearest codes as context (one parallel
        pass); the level's state, whose conditioning serves the coding too; and what that pass knows of the
        coding (`_reused_stream`), where the coder is C's: for each position (decoding order) its chosen code's
        frequency and those below it under that context, and which positions' context the choice changed. As
        `Codec._ecvq_bottom`."""
        costs, candidates = self.encoder.candidates(flat, ECVQ_CANDIDATES, bottom_lam, self.threads)
        state = npprior.LevelState(self.levels[2], [size], [uppers])
        order = state.order
        in_order = candidates[order]
        state.paint(0, len(order), in_order[:, 0])
        picked = np.empty(in_order.shape)
        reuse = rangecoding.c_coder()
        below = np.empty(in_order.shape, np.uint32) if reuse else None
        for start, stop in rangecoding.spans(len(order), rangecoding.ENCODE_CHUNK):
            picked[start:stop] = state.candidate_probabilities(start, in_order[start:stop],
                                                               None if below is None else below[start:stop])
        cost = costs[order].astype(np.float64) + lam * -np.log2(picked)  # probabilities: exact freq / 2^20
        best = cost.argmin(1)[:, None]
        symbols = np.take_along_axis(in_order, best, 1)[:, 0]
        chosen = np.empty(len(order), dtype=np.int64)
        chosen[order] = symbols
        known = None
        if reuse:
            frequencies = np.rint(np.take_along_axis(picked, best, 1)[:, 0] * npprior.FREQ_TOTAL).astype(np.uint32)
            known = (symbols, np.take_along_axis(below, best, 1)[:, 0], frequencies,
                     state.stale_positions(symbols != in_order[:, 0]))
        return chosen.reshape(size), state, known

    def _reused_stream(self, bottom: np.ndarray, state: npprior.LevelState, known: tuple) -> tuple[bytes, float]:
        """The bottom level's stream from `_ecvq_bottom`'s frequencies, computed again only where the choice changed
        a position's context: `_level_stream`'s bytes and bits, for about half the prior's work."""
        symbols, cumulative, frequencies, stale = known
        state.paint(0, len(symbols), symbols)
        stream = state.encode_reusing(symbols, cumulative, frequencies, stale)
        return stream.data, stream.cross_entropy_bits

    def _stage(self, stage: int, residual: np.ndarray, codes: list[np.ndarray], weight: float | None
               ) -> tuple[np.ndarray, rangecoding.EncodedLevel]:
        """A refinement stage's codes (G, h, w) for the residual (h*w, D) and its stream: each group's codes by
        distance + weight * bits under the stage prior (None: nearest codes), chosen and coded chunk by chunk."""
        prior, books = self.stages[stage], self.stage_codebooks[stage]
        h, w = codes[2].shape
        part = residual.shape[1] // prior.groups

        def choose(group: int, start: int, stop: int, probabilities: np.ndarray) -> np.ndarray:
            rows = np.ascontiguousarray(residual[start:stop, group * part:(group + 1) * part])
            table = distances(rows, books[group])
            if weight is None:
                return table.argmin(1)
            cost = table.astype(np.float64)
            cost -= np.log2(probabilities) * weight  # distance + weight * bits, as the torch codec computes it
            return cost.argmin(1)

        groups, stream = rangecoding.encode_groups(prior, prior.context(codes), h * w, choose)
        return np.stack([group.reshape(h, w) for group in groups]), stream


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


class InPlace:
    """An executor that runs what it is given in the calling thread (one thread: nothing to overlap): `submit` at
    once, `map` lazily, item by item."""

    def submit(self, function, *args) -> Future:
        return _done(function(*args))

    def map(self, function, items):
        return map(function, items)

    def __enter__(self) -> "InPlace":
        return self

    def __exit__(self, *exc) -> None:
        pass


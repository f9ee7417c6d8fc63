"""The integer priors' decoding on numpy arrays and the C module, without torch: what the runtime without torch
runs (docs/DESIGN.md section 8), on the C module's int8 path only.

The probabilities are the exact integers of `intprior` (the same tables, the same C functions, which take
addresses and do not care whether numpy or torch owns them), so a file decodes to the same codes here as in the
torch codec. The layers' integer tables (`layer_tables`, `tap_major`, `masked_tap_tables`) and the levels' layout
(`wavefront.layout`) are the same code here and in `intprior`, which converts the arrays to tensors; the levels'
conditioning is stacked in `stacked_conditioning`'s rows (here written in place, `_stacked_conditioning`). A level's
wavefronts are range coded in one C call here (`LevelState.decode`, `encode`), where the torch codec loops in
Python (`rangecoding.decode_fronts`, `encode_ordered`): the same codes and bytes.
"""
from __future__ import annotations

import copy
import os
from typing import Sequence

import numpy as np

from . import rangecoding, stepkernel, wavefront

ACT_BITS = 10
ACT_MAX = (1 << 15) - 1  # |activation| < 32 on the 2^-10 grid
# The 8-bit format: weights and matrix-product inputs in [-127, 127]; every accumulator (products, bias and
# rounding offset) must stay below 2^24, where float32 stops representing every integer. Checked per output
# channel at export and again at load (a table that breaks it is refused, not computed inexactly).
NARROW_MAX = 127
FLOAT32_EXACT = 1 << 24
GATE_HALF = 8 << ACT_BITS  # tanh / sigmoid tables cover [-8, 8]; beyond, both are saturated at this grid
EXP_MAX = 16 << ACT_BITS  # exp(-d) for d in [0, 16]; further below the maximum a code gets the floor frequency
FREQ_BITS = 20
FREQ_TOTAL = 1 << FREQ_BITS
assert stepkernel.PROBABILITY_SCALE == 1.0 / FREQ_TOTAL

# A layer as the step functions take it: weight (inputs, outputs), bias plus the rounding offset 2^(shift-1),
# 2^-shift (float64, exact integers and powers of two), the scale 2^-input_shift that rounds its input to 8 bits
# (None: a 16-bit layer, its input as it is), and the weight as int8 (inputs, outputs) for an 8-bit layer.
Layer = tuple[np.ndarray, np.ndarray, np.ndarray, "float | None", "np.ndarray | None"]


def layer_tables(tables: dict[str, np.ndarray], where: str = "") -> dict[str, Layer]:
    """The integer layers among a network's tables (keys without the network's prefix: name.weight, name.bias,
    name.shift, name.input_shift). ValueError for an 8-bit layer whose sums could leave float32's exact range."""
    layers = {}
    for key in tables:
        if not key.endswith(".weight"):
            continue
        name = key[:-len(".weight")]
        shift = tables[f"{name}.shift"].astype(np.float64)
        weight = np.ascontiguousarray(tables[key].astype(np.float64).T)
        half = np.where(shift > 0, np.power(2.0, shift - 1), 0.0)  # the rounding offset of a right shift
        bias = tables[f"{name}.bias"].astype(np.float64) + half
        input_scale, weight_int8 = None, None
        if f"{name}.input_shift" in tables:
            input_scale = 2.0 ** -int(tables[f"{name}.input_shift"])
            # The bound export guarantees, checked again: a table that breaks it would compute inexactly.
            if bool((NARROW_MAX * np.abs(weight).sum(0) + np.abs(bias) >= FLOAT32_EXACT).any()):
                raise ValueError(f"{where}{name}: 8-bit layer exceeds the float32-exact range")
            weight_int8 = np.ascontiguousarray(tables[key].T).astype(np.int8)
        layers[name] = (weight, bias, np.power(2.0, -shift), input_scale, weight_int8)
    return layers


def tap_major(weight: np.ndarray, taps: int = 9) -> np.ndarray:
    """A layer's (inputs, outputs) weight over `taps` taps (a 3x3 layer's 9, a masked layer's causal ones) with its
    input rows reordered from (channel, tap), as stored (F.unfold's order), to (tap, channel), the order the C
    kernels gather their columns in."""
    inputs, outputs = weight.shape
    return np.ascontiguousarray(
        weight.reshape(inputs // taps, taps, outputs).transpose(1, 0, 2).reshape(inputs, outputs))


def rounded_embedding(embedding: np.ndarray, input_scale: float | None) -> np.ndarray:
    """A code embedding as an 8-bit layer's input (float64): rounded with `input_scale`, half to even as intprior's
    layer_input, to [-NARROW_MAX, NARROW_MAX]; as it is for a 16-bit layer (input_scale None)."""
    embedding = embedding.astype(np.float64)
    if input_scale is None:
        return embedding
    return np.clip(np.rint(embedding * input_scale), -NARROW_MAX, NARROW_MAX)


def masked_tap_tables(weight: np.ndarray, input_scale: float | None, embedding: np.ndarray,
                      channels: int) -> np.ndarray:
    """A level's masked convolution folded into one table per tap: tap_tables[tap, code] = W_tap @ embedding[code]
    (exact integers, float64), with a zero row for code K, the out-of-grid sentinel, flattened to
    (taps * (K + 1), 2C) so that the 12 rows of a position are summed without materialising them. weight: the
    layer's (inputs, outputs) = (C * taps, 2C) table; the embedding is the layer's input, rounded to 8 bits with
    `input_scale` for an 8-bit layer (so that every entry, and the sum of 12 plus the bias, stays float32-exact)."""
    embedding = np.concatenate([rounded_embedding(embedding, input_scale), np.zeros((1, channels))])
    weight = weight.astype(np.float64).T.reshape(2 * channels, channels, -1)
    # (taps, K + 1, 2C) by one batched matmul (exact: integers far below 2^53; einsum's loops took 20 ms a level)
    return np.matmul(embedding[None], weight.transpose(2, 1, 0)).reshape(-1, 2 * channels)


def stacked_conditioning(conditioning, sizes: Sequence[tuple[int, int]], upper_codes: Sequence, positions: int,
                         empty) -> list | None:
    """Each gated unit's conditioning for all tiles of a level, one after the other, in the rows
    `wavefront.layout` numbers them by (cells of the 2x coarser grid, `positions` rows a cell), as int16 tables
    made by empty(rows, like_unit); conditioning(uppers) gives one tile's units (None for the top level). Tile by
    tile, so that only one tile's float tables exist at a time: on a 12-megapixel image the bottom level's
    conditioning is the largest thing the decoder keeps, and int16 holds it exactly in a quarter of float64's
    memory."""
    rows = sum((h // 2) * (w // 2) for h, w in sizes) * positions
    stacked, base = None, 0
    for (h, w), uppers in zip(sizes, upper_codes):
        units = conditioning(uppers)
        if units is not None:
            if stacked is None:
                stacked = [empty(rows, unit) for unit in units]
            for target, unit in zip(stacked, units):
                target[base * positions:base * positions + unit.shape[0]] = unit
        del units
        base += (h // 2) * (w // 2)
    return stacked


def runs_here(tables: dict[str, np.ndarray]) -> bool:
    """Whether this runtime decodes with these tables here: 8-bit tables and the C module's int8 path."""
    return (stepkernel.available() and stepkernel.int8_available()
            and any(key.endswith(".input_shift") for key in tables))


def default_threads() -> int:
    return max(1, min(2, os.cpu_count() or 1))


class _Network:
    """A network's 8-bit layers under one prefix, as the C kernels take them (float32 copies of the tables)."""

    def __init__(self, tables: dict[str, np.ndarray], prefix: str, channels: int, threads: int) -> None:
        self.tables = {key[len(prefix):]: value for key, value in tables.items() if key.startswith(prefix)}
        self.channels, self.threads = channels, threads
        self.layers = {}
        for name, (weight, bias, inv_scale, input_scale, _) in layer_tables(self.tables, prefix).items():
            if input_scale is None:
                raise ValueError(f"{prefix}{name}: a 16-bit layer (this runtime runs 8-bit tables only)")
            self.layers[name] = (weight.astype(np.float32), bias.astype(np.float32), inv_scale.astype(np.float32),
                                 input_scale, None)
        luts = {key[len("lut."):]: value for key, value in tables.items() if key.startswith("lut.")}
        self.exp = luts["exp"].astype(np.float64)
        self.tanh, self.sigmoid = luts["tanh"], luts["sigmoid"]

    def with_threads(self, threads: int):
        """A view of this network that runs its C functions on `threads` threads (the same tables and kernels)."""
        view = copy.copy(self)
        view.threads = threads
        return view

    def _tap_major(self, name: str) -> str:
        """The layer `name` with its weight in tap-major order (`tap_major`), made once."""
        key = f"{name}:tap-major"
        if key not in self.layers:
            weight, bias, inv_scale, input_scale, _ = self.layers[name]
            self.layers[key] = (tap_major(weight), bias, inv_scale, input_scale, None)
        return key

    def _convs(self, names: Sequence[str]) -> stepkernel.ConvKernel:
        return stepkernel.ConvKernel(self, names, GATE_HALF, self.tanh, self.sigmoid)


class LevelPrior(_Network):
    """One level's integer prior: the conditioning from the levels above, and the C step function."""

    def __init__(self, tables: dict[str, np.ndarray], level: int, causal_blocks: int, cond_blocks: int,
                 block: int | tuple[int, int] = 0, threads: int | None = None) -> None:
        prefix = f"level{level}."
        super().__init__(tables, prefix, tables[f"{prefix}embedding"].shape[1], threads or default_threads())
        t = self.tables
        self.level, self.block, self.causal_blocks = level, block, causal_blocks
        self.cond_blocks = cond_blocks if level > 0 else 0
        self.codebook_size = t["head.weight"].shape[0]
        self.cond_embeddings = [t[f"cond.embedding{u}"].astype(np.int64) for u in range(level)]
        self.cond_positions = 4 if level and t["cond.proj0.weight"].shape[0] == 8 * self.channels else 1
        weight, bias_and_half, inv_scale, input_scale, _ = self.layers.pop("masked")
        self.masked_layer, self.masked_embedding = (weight, bias_and_half, inv_scale, input_scale), t["embedding"]
        self.tap_tables = masked_tap_tables(weight, input_scale, t["embedding"], self.channels).astype(np.float32)
        self.masked_scale = (bias_and_half, inv_scale)
        self.tap_offsets = np.arange(len(wavefront.TAPS)) * (self.codebook_size + 1)
        self.kernel = stepkernel.LevelKernel(self, GATE_HALF, EXP_MAX, self.tanh, self.sigmoid)
        if not self.kernel.int8:
            raise ValueError(f"{prefix}: the step function's int8 path does not take these tables")
        self._cond_kernels = None

    def conditioning(self, upper_codes: Sequence[np.ndarray], out: Sequence[np.ndarray] | None = None
                     ) -> list[np.ndarray] | None:
        """Upper levels' codes -> per gated unit a (h_u * w_u * cond_positions, 2C) int16 projection (as
        `intprior.IntLevelPrior.conditioning`); written into `out` (one such contiguous table per unit) where
        given, so that a level's tiles' conditioning is stacked without a copy."""
        if self.level == 0:
            return None
        if self._cond_kernels is None:
            projections = [f"cond.proj{i}" for i in range(1 + self.causal_blocks)]
            self._cond_kernels = (self._convs([f"cond.block{i}" for i in range(self.cond_blocks)]),
                                  stepkernel.LinearKernel(self, projections))
        convs, linears = self._cond_kernels
        h, w = upper_codes[-1].shape[-2:]
        x = 0
        for table, codes in zip(self.cond_embeddings, upper_codes):
            factor = h // codes.shape[-2]
            x = x + table[codes.repeat(factor, -2).repeat(factor, -1)]  # (h, w, C)
        x = np.clip(x, -ACT_MAX, ACT_MAX).reshape(h * w, -1).astype(np.float32)
        x = convs.run(x, h, w, self.threads)
        return [linears.run(x, i, self.threads, None if out is None else out[i].reshape(h * w, -1)
                            ).reshape(h * w * self.cond_positions, -1)
                for i in range(1 + self.causal_blocks)]


def _stacked_conditioning(prior: LevelPrior, sizes: Sequence[tuple[int, int]],
                          upper_codes: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray] | None:
    """`stacked_conditioning`'s tables, each tile's projections written in place (a 1024 x 1024 tile's bottom
    level has 48 MB of them, which the copy took a fifth of the conditioning's time to move)."""
    if prior.level == 0:
        return None
    positions, width = prior.cond_positions, 2 * prior.channels
    rows = sum((h // 2) * (w // 2) for h, w in sizes) * positions
    stacked = [np.empty((rows, width), dtype=np.int16) for _ in range(1 + prior.causal_blocks)]
    base = 0
    for (h, w), uppers in zip(sizes, upper_codes):
        count = (h // 2) * (w // 2) * positions
        prior.conditioning(uppers, [table[base:base + count] for table in stacked])
        base += count
    return stacked


class LevelState:
    """A level's canvas while its tiles decode together (as `intprior.LevelState`, numpy-owned)."""

    def __init__(self, prior: LevelPrior, sizes: Sequence[tuple[int, int]],
                 upper_codes: Sequence[Sequence[np.ndarray]]) -> None:
        self.prior, self.sizes = prior, [tuple(size) for size in sizes]
        positions = prior.cond_positions
        cond = _stacked_conditioning(prior, self.sizes, upper_codes)
        laid = wavefront.layout(self.sizes, prior.block, positions)
        self.order, self.centres, self.fronts, self._segments = laid.order, laid.centres, laid.fronts, laid.segments
        self._tiles = laid.tiles
        self.canvas = np.full(laid.canvas_size, prior.codebook_size, dtype=np.int64)
        self._bound = stepkernel.BoundLevel(prior.kernel, self.canvas, laid.neighbours, laid.upper, cond)
        self.threads = prior.threads  # what `probabilities` runs on (an encoder may lower it)

    def probabilities(self, start: int, stop: int) -> np.ndarray:
        return self._bound.probabilities(start, stop, self.threads)

    def candidate_probabilities(self, start: int, candidates: np.ndarray, cumulative: np.ndarray | None = None
                                ) -> np.ndarray:
        """`probabilities(start, start + P)` at each position's candidate codes (P, M), without the (P, K) table;
        into `cumulative` (P, M) uint32 where given, the frequencies below each candidate."""
        return self._bound.candidate_probabilities(start, candidates, self.threads, cumulative)

    def encode_reusing(self, symbols: np.ndarray, cumulative: np.ndarray, frequencies: np.ndarray,
                       stale: np.ndarray) -> "rangecoding.EncodedLevel":
        """`encode(symbols)` (painted already) where each position's frequency and the frequencies below its code are
        known already (uint32, decoding order) but for the `stale` ones (bool), whose causal neighbours' codes
        changed since: only those are computed again (the entropy-constrained choice's pass knew the others)."""
        cumulative, frequencies = cumulative.copy(), frequencies.copy()
        again = np.flatnonzero(stale)
        cumulative[again], frequencies[again] = self._bound.symbol_frequencies(again, symbols[again])
        encoder = rangecoding.new_encoder()
        bits = encoder.add_counts(symbols, cumulative, frequencies, self.prior.codebook_size)
        return rangecoding.finish(encoder, bits)

    def stale_positions(self, changed: np.ndarray) -> np.ndarray:
        """Which positions (decoding order) have a causal neighbour among the `changed` positions (bool, decoding
        order): their frequencies differ from a pass over the canvas before the change."""
        moved = np.zeros(self.canvas.shape, dtype=bool)
        moved[self.centres[changed]] = True
        return moved[self._bound.neighbours].any(1)

    def decode(self, decoders: Sequence) -> None:
        """Decodes the whole level from its tiles' streams (`rangecoding.CStreamDecoder`s, one per tile) in one C
        call (on `threads`: a second one computes part of each large wavefront's rows): `rangecoding.decode_fronts`'s
        loop, the rows going straight to the decoder."""
        fronts = np.asarray(self.fronts, dtype=np.int64).reshape(-1, 2)
        self._bound.decode(self.centres, self._tiles, fronts, decoders, self.threads)

    def encode(self, symbols: np.ndarray) -> "rangecoding.EncodedLevel":
        """One tile's known codes (decoding order, painted already) into its stream in one C call on this thread:
        `rangecoding.encode_ordered`'s result."""
        encoder = rangecoding.new_encoder()
        bits = self._bound.encode(symbols, encoder)
        return rangecoding.finish(encoder, bits)

    def segments(self, start: int) -> list[tuple[int, int, int]]:
        return self._segments[start]

    def paint(self, start: int, stop: int, codes: np.ndarray) -> None:
        self.canvas[self.centres[start:stop]] = codes

    def codes(self) -> list[np.ndarray]:
        flat = np.empty_like(self.order)
        flat[self.order] = self.canvas[self.centres]
        return [grid.reshape(size) for grid, size in zip(np.split(flat, np.cumsum([h * w for h, w in self.sizes])[:-1]),
                                                          self.sizes)]


class StagePrior(_Network):
    """One refinement stage's integer prior (fully parallel: a context pass, then one C head per group)."""

    def __init__(self, tables: dict[str, np.ndarray], stage: int, groups: int, blocks: int,
                 threads: int | None = None) -> None:
        prefix = f"stage{stage}."
        super().__init__(tables, prefix, tables[f"{prefix}level_embedding0"].shape[1], threads or default_threads())
        t = self.tables
        self.stage, self.groups, self.blocks = stage, groups, blocks
        self.codebook_size = t["head0.weight"].shape[0]
        self.level_embeddings = [t[f"level_embedding{u}"].astype(np.float32) for u in range(3)]
        self.stage_embeddings = [t[f"stage_embedding{e}"].astype(np.float32) for e in range((stage + 1) * groups - 1)]
        self.head_kernels = [stepkernel.HeadKernel(self, g, GATE_HALF, EXP_MAX, self.tanh, self.sigmoid)
                             for g in range(groups)]
        if not all(kernel.usable for kernel in self.head_kernels):
            raise ValueError(f"{prefix}: the C heads' int8 path does not take these tables")
        self._context_convs = self._convs([f"block{i}" for i in range(blocks)])

    def context(self, codes: Sequence[np.ndarray]) -> np.ndarray:
        """One tile's [top, mid, bottom, earlier stages (G, h, w)...] -> context (h*w, C) on the bottom grid."""
        h, w = codes[2].shape[-2:]
        x = 0
        for table, grid in zip(self.level_embeddings, codes[:3]):
            factor = h // grid.shape[-2]
            x = x + table[grid.repeat(factor, -2).repeat(factor, -1)]
        for s, stage_codes in enumerate(codes[3:3 + self.stage]):
            for g in range(self.groups):
                x = x + self.stage_embeddings[s * self.groups + g][stage_codes[g]]
        x = np.clip(x.reshape(h * w, -1), -ACT_MAX, ACT_MAX)
        return self._context_convs.run(x, h, w, self.threads)

    def group_context(self, context: np.ndarray, group: int, previous: np.ndarray | None) -> np.ndarray:
        if not group:
            return context
        return np.clip(context + self.stage_embeddings[self.stage * self.groups + group - 1][previous],
                       -ACT_MAX, ACT_MAX)

    def group_probabilities(self, context: np.ndarray, group: int) -> np.ndarray:
        return self.head_kernels[group].frequencies(context, self.threads, 1.0 / FREQ_TOTAL)

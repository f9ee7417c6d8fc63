"""The autoencoder's encoder without torch: `HierarchicalVQVAE.encode_latent` in numpy float32, and the bottom
codebook's nearest codes and candidates as `EMAQuantiser.candidates` computes them, for a torch-free
`hvqcodec compress` (docs/DESIGN.md section 8).

`NumpyEncoder(config, state)` takes what `npdecoder.NumpyDecoder` takes (the autoencoder config as
`AutoencoderConfig.to_dict()` gives it, the state dict as numpy arrays, float16 in the shipped files) and
prepares the weights once; `encode_latent(rgb)` turns one tile's (H, W, 3) uint8 pixels into the top codes, the
mid codes and the bottom level's unquantised latent of the padded image, what `Codec.encode_codes` gets from
torch's `encode_latent`; `nearest` and `candidates` search a level's codebook.

The layers are npdecoder's: its ConvNeXt block (the C kernels where built, else plain numpy), LayerNorm without
affine, 1x1 convs, and for the context the levels below are quantised with, its context path's weights and
layers (`npdecoder.prepare_weights`). What the encoder alone has is matmuls: the patchify stem (a 4x4 stride-4
conv: the image's 4x4 blocks as rows of 48), the 2x2 stride-2 downsampling convs (2x2 blocks as rows of 4C, the
LayerNorm's affine folded into the matrix) and the projections into code space (LayerNorm + 1x1 conv, folded
likewise). Bands of rows are shared out over Python threads as in npdecoder (numpy's BLAS then best on one
thread: OPENBLAS_NUM_THREADS=1 before numpy is imported).

The latent differs from torch's float32 `encode_latent` by float rounding (the same function summed in another
order); top and mid codes come from argmins over those floats, so a near-tie can fall the other way in a few
positions of a hundred thousand (tests/test_npencoder.py), which docs/DESIGN.md section 8 allows: the codes a
file carries are decoded exactly by either runtime.

This module imports numpy, hvqcodec.decoderkernel, hvqcodec.stepkernel and hvqcodec.npdecoder only (no torch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from . import stepkernel
from .names import PAD_MULTIPLE  # the image is replicate-padded to multiples of it (autoencoder.pad_to_multiple)
from .npdecoder import (BlockWeights, DecoderWeights, Timer, _block_weights, _conv1x1, _f32, _is_int, _Network,
                        _Run, _State, convnext_block, decoder_config, mid_context, normalise_rows_,
                        prepare_weights, top_context)
# AutoencoderConfig's default encoder depths (ConvNeXt blocks at /4, /8, /16), for a config without the key.
ENCODER_DEPTHS_DEFAULT = (2, 3, 3)
# Rows per pass of a codebook search (quantiser.NEAREST_CHUNK): the (rows, K) distances stay in cache.
NEAREST_CHUNK = 1024
# Columns per group of `smallest`'s preselection (K / SMALLEST_GROUP_SIZE groups).
SMALLEST_GROUP_SIZE = 8
# Positions per band of the stem, the downsampling convs and the projections into code space.
BAND_POSITIONS = 4096

# The encoder's parts, in order, as `encode_latent` reports them to a timer.
PARTS = ("stem + /4 stage", "/8 stage", "/16 stage", "top codes + context", "mid codes + context",
         "bottom latent")


# --- weights --------------------------------------------------------------------------------------------------

@dataclass
class NormLinear:
    """LayerNorm over channels then a per-row matmul: the norm's affine folded into the matrix (rows: the input
    channels, or (i, j, channel) for a 2x2 stride-2 conv's blocks) and bias."""
    matrix: np.ndarray
    bias: np.ndarray


@dataclass
class Codebook:
    """A level's codebook with what its distances need (EMAQuantiser.candidates): |c|^2, 2 c^T, and each code's
    bits under the codebook's EMA usage (code_bits) where the state has the usage."""
    vectors: np.ndarray  # (K, D)
    squared_norms: np.ndarray  # (K,)
    minus_doubled_transposed: np.ndarray  # (D, K): -2 c^T (exact: x @ -2c^T == -(2 x @ c^T), as torch's)
    bits: np.ndarray | None  # (K,)

    @classmethod
    def of(cls, vectors: np.ndarray, bits: np.ndarray | None = None) -> "Codebook":
        """Codebook vectors (K, D) float32 and, where known, each code's bits: |c|^2 and -2 c^T in float32."""
        return cls(vectors, np.square(vectors).sum(1, dtype=np.float32),
                   np.ascontiguousarray(vectors.T * np.float32(-2)), bits)


@dataclass
class EncoderWeights:
    stem: np.ndarray  # (48, w1): the 4x4 stride-4 conv, rows (i, j, colour)
    stem_bias: np.ndarray
    stem_norm_weight: np.ndarray  # the stem's LayerNorm (its affine applied: blocks and residuals follow)
    stem_norm_bias: np.ndarray
    stages: list[list[BlockWeights]]  # ConvNeXt blocks at /4, /8, /16
    downsamples: list[NormLinear]  # /4 -> /8, /8 -> /16
    pre_quant: list[NormLinear]  # top (w3 -> D), mid ([f2, c2]: 2 w2 -> D), bottom ([f1, c1]: 2 w1 -> D)
    codebooks: list[Codebook]  # top, mid, bottom


def encoder_depths(config: Mapping) -> tuple[int, int, int]:
    value = config.get("encoder_depths", ENCODER_DEPTHS_DEFAULT)
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(_is_int(v) and v >= 0 for v in value):
        raise ValueError(f"autoencoder config encoder_depths: 3 integers >= 0 are needed, not {value!r}")
    return tuple(int(v) for v in value)


def _norm_linear(get: _State, norm: str, matrix: np.ndarray, bias: np.ndarray, channels: int) -> NormLinear:
    """LayerNorm `norm` (channels) then matrix (rows (..., channel), float64) + bias: the affine folded in."""
    weight, shift = get(norm + ".weight", channels), get(norm + ".bias", channels)
    repeats = matrix.shape[0] // channels
    return NormLinear(_f32(np.tile(weight, repeats)[:, None] * matrix),
                      _f32(np.tile(shift, repeats) @ matrix + bias))


def _downsample(get: _State, prefix: str, channels: int, out_channels: int) -> NormLinear:
    kernel = get(prefix + ".conv.weight", out_channels, channels, 2, 2)
    matrix = kernel.transpose(2, 3, 1, 0).reshape(4 * channels, out_channels)  # rows (i, j, c)
    return _norm_linear(get, prefix + ".norm", matrix, get(prefix + ".conv.bias", out_channels), channels)


def _pre_quant(get: _State, level: int, channels: int, code_dim: int) -> NormLinear:
    matrix, bias = _conv1x1(get, f"pre_quant.{level}.1", channels, code_dim)
    return _norm_linear(get, f"pre_quant.{level}.0", matrix, bias, channels)


def _codebook(state: Mapping[str, np.ndarray], vectors: np.ndarray, level: int) -> Codebook:
    """float32 throughout, as EMAQuantiser computes |c|^2 and code_bits from its float32 buffers."""
    usage = state.get(f"quantisers.{level}.cluster_size")
    bits = None
    if usage is not None:
        usage = np.asarray(usage).astype(np.float32) + np.float32(1e-3)
        if usage.shape != vectors.shape[:1]:
            raise ValueError(f"state quantisers.{level}.cluster_size: shape {vectors.shape[:1]} is needed, not "
                             f"{usage.shape}")
        with np.errstate(divide="ignore", invalid="ignore"):  # NaN for a usage < 0 (a random model), as torch's
            bits = np.log2(usage.sum(dtype=np.float32)) - np.log2(usage)
    return Codebook.of(vectors, bits)


def prepare_encoder_weights(state: Mapping[str, np.ndarray], config: Mapping,
                            decoder_weights: DecoderWeights) -> EncoderWeights:
    """The encoder's weights from the state dict (the codebooks from the decoder's prepared weights)."""
    get = _State(state)
    shape = decoder_config(config)
    w1, w2, w3 = shape.widths
    d = shape.code_dim
    depths = encoder_depths(config)
    stem = get("stem.0.weight", w1, 3, 4, 4).transpose(2, 3, 1, 0).reshape(48, w1)  # rows (i, j, colour)
    return EncoderWeights(
        stem=_f32(stem), stem_bias=_f32(get("stem.0.bias", w1)),
        stem_norm_weight=_f32(get("stem.1.weight", w1)), stem_norm_bias=_f32(get("stem.1.bias", w1)),
        stages=[[_block_weights(get, f"enc{stage + 1}.{i}", width) for i in range(depth)]
                for stage, (width, depth) in enumerate(zip((w1, w2, w3), depths))],
        downsamples=[_downsample(get, "down2", w1, w2), _downsample(get, "down3", w2, w3)],
        pre_quant=[_pre_quant(get, 0, w3, d), _pre_quant(get, 1, 2 * w2, d), _pre_quant(get, 2, 2 * w1, d)],
        codebooks=[_codebook(state, vectors, level) for level, vectors in enumerate(decoder_weights.codebooks)])


# --- layers (float32, channels last) --------------------------------------------------------------------------

def _bands(run: _Run, rows: int, band_rows: int, function: Callable[[int, int], None]) -> None:
    """function(first, stop) over bands of `band_rows` rows of 0..rows-1, shared out as `run` says."""
    run.each(lambda first: function(first, min(rows, first + band_rows)), range(0, rows, band_rows))


def _band_rows(width: int) -> int:
    return max(1, BAND_POSITIONS // max(1, width))


def padded_input(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> the autoencoder's input channels last: replicate-padded on the bottom and right to
    multiples of PAD_MULTIPLE (pad_to_multiple), then x / 255 * 2 - 1 in float32, the same roundings as torch's
    (`Codec.encode_codes` divides by 255, `features` maps to [-1, 1])."""
    h, w = rgb.shape[:2]
    rows = np.minimum(np.arange(h + -h % PAD_MULTIPLE), h - 1)
    columns = np.minimum(np.arange(w + -w % PAD_MULTIPLE), w - 1)
    x = rgb[rows][:, columns].astype(np.float32)
    x /= np.float32(255)
    x *= np.float32(2)
    x -= np.float32(1)
    return x


def stem(x: np.ndarray, weights: EncoderWeights, run: _Run) -> np.ndarray:
    """The patchify stem: (H, W, 3) -> 4x4 stride-4 conv (each 4x4 block as a row of 48, one matmul) ->
    LayerNorm with its affine -> (H/4, W/4, w1)."""
    h, w = x.shape[0] // 4, x.shape[1] // 4
    out = np.empty((h, w, weights.stem.shape[1]), np.float32)

    def band(first: int, stop: int) -> None:
        rows = stop - first
        patches = x[4 * first:4 * stop].reshape(rows, 4, w, 4, 3).transpose(0, 2, 1, 3, 4).reshape(-1, 48)
        y = patches @ weights.stem
        y += weights.stem_bias
        normalise_rows_(y)
        y *= weights.stem_norm_weight
        y += weights.stem_norm_bias
        out[first:stop] = y.reshape(rows, w, -1)

    _bands(run, h, _band_rows(w), band)
    return out


def downsample(x: np.ndarray, layer: NormLinear, run: _Run) -> np.ndarray:
    """LayerNorm2d + Conv2d(k=2, s=2) on (H, W, C) -> (H/2, W/2, O): each position normalised, then each 2x2
    block as a row of 4C times the folded matrix."""
    h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    out = np.empty((h2, w2, layer.matrix.shape[1]), np.float32)

    def band(first: int, stop: int) -> None:
        rows = stop - first
        normalised = normalise_rows_(x[2 * first:2 * stop].reshape(-1, c).copy())
        patches = normalised.reshape(rows, 2, w2, 2, c).transpose(0, 2, 1, 3, 4).reshape(-1, 4 * c)
        y = patches @ layer.matrix
        y += layer.bias
        out[first:stop] = y.reshape(rows, w2, -1)

    _bands(run, h2, _band_rows(w2), band)
    return out


def project(parts: list[np.ndarray], layer: NormLinear, run: _Run) -> np.ndarray:
    """pre_quant: LayerNorm2d + 1x1 conv of the channels of `parts` (each (H, W, C_k), concatenated in this
    order, as torch.cat(..., 1)) -> (H, W, D)."""
    h, w = parts[0].shape[:2]
    out = np.empty((h, w, layer.matrix.shape[1]), np.float32)

    def band(first: int, stop: int) -> None:
        rows = np.concatenate([part[first:stop] for part in parts], axis=-1).reshape((stop - first) * w, -1)
        y = normalise_rows_(rows) @ layer.matrix
        y += layer.bias
        out[first:stop] = y.reshape(stop - first, w, -1)

    _bands(run, h, _band_rows(w), band)
    return out


def stage(x: np.ndarray, blocks: list[BlockWeights], run: _Run) -> np.ndarray:
    for block in blocks:
        x = convnext_block(x, block, run)
    return x


def distances(rows: np.ndarray, codebook: Codebook, lambdas: float = 0.0) -> np.ndarray:
    """(M, D) -> (M, K) squared distances as EMAQuantiser.candidates computes them in float32, |x|^2 - 2 x.c +
    |c|^2 in that order (-2 x.c + |x|^2 is the same float), plus lambdas * bits under the codebook's usage where
    lambdas > 0."""
    table = rows @ codebook.minus_doubled_transposed
    table += np.square(rows).sum(1, dtype=np.float32)[:, None]
    table += codebook.squared_norms
    if lambdas > 0:
        table += np.float32(lambdas) * codebook.bits
    return table


def smallest(table: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The `count` smallest values of each row of a float32 (M, K) table, ascending, the lower column first among
    equal values (stepkernel.smallest's order; argmin's for count 1), and their columns (int64).

    Exact, ties included: every value at or below a threshold that the row's `count` smallest cannot exceed is
    ranked, by one stable sort of (row, value) keys in the table's order. The threshold: where K splits into G =
    K / SMALLEST_GROUP_SIZE >= count groups of columns (column j in group j mod G), the count-th smallest of the
    groups' minima (count groups hold a value at or below it each), else the row's count-th smallest value.
    About 9 values a row are then ranked for 8 of 512 (a third of argpartition's time over all columns)."""
    rows, columns = table.shape
    if count == 1:
        index = table.argmin(1)[:, None]
        return np.take_along_axis(table, index, 1), index.astype(np.int64)
    groups = columns // SMALLEST_GROUP_SIZE
    if count < columns:
        minima = (table.reshape(rows, SMALLEST_GROUP_SIZE, groups).min(1)
                  if columns % SMALLEST_GROUP_SIZE == 0 and groups >= count else table)
        threshold = np.partition(minima, count - 1, axis=1)[:, count - 1:count]
        flat = table.reshape(-1)
        places = np.flatnonzero(table <= threshold)  # row-major: by row, then column
        row = places // columns
        if np.all(np.bincount(row, minlength=rows) >= count):  # else NaNs: sorted whole below
            # float32 -> unsigned integers in the same order (+0.0 turns -0.0 into 0.0, which compare equal)
            bits = (flat[places] + np.float32(0)).view(np.uint32)
            order = np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31)).astype(np.uint64)
            order |= row.astype(np.uint64) << np.uint64(32)
            places = places[np.argsort(order, kind="stable")]
            starts = np.searchsorted(places // columns, np.arange(rows))
            taken = places[starts[:, None] + np.arange(count)]
            return flat[taken], (taken % columns).astype(np.int64)
    index = np.argsort(table, axis=1, kind="stable")[:, :count]
    return np.take_along_axis(table, index, 1), index.astype(np.int64)


def _flat_latent(latent: np.ndarray, dim: int) -> np.ndarray:
    latent = np.asarray(latent)
    if latent.ndim < 1 or latent.shape[-1] != dim or not np.issubdtype(latent.dtype, np.floating):
        raise ValueError(f"a float latent (..., {dim}) is needed, not {latent.dtype} {latent.shape}")
    return np.ascontiguousarray(latent.reshape(-1, dim), dtype=np.float32)


def search(flat: np.ndarray, codebook: Codebook, count: int, lambdas: float, run: _Run
           ) -> tuple[np.ndarray, np.ndarray]:
    """The `count` best codes of each row of flat (M, D), NEAREST_CHUNK rows at a time: costs and indices (with the
    C kernels, `stepkernel.nearest_codes`: the same sums in registers, no (M, K) table)."""
    costs = np.empty((flat.shape[0], count), np.float32)
    indices = np.empty((flat.shape[0], count), np.int64)

    def chunk(first: int, stop: int) -> None:
        found = stepkernel.nearest_codes(flat[first:stop], codebook.minus_doubled_transposed, codebook.squared_norms,
                                         codebook.bits, lambdas, count) if run.kernels else None
        costs[first:stop], indices[first:stop] = found if found is not None else smallest(
            distances(flat[first:stop], codebook, lambdas), count)

    _bands(run, flat.shape[0], NEAREST_CHUNK, chunk)
    return costs, indices


# --- the public interface -------------------------------------------------------------------------------------

class NumpyEncoder(_Network):
    """The autoencoder's encoder side in numpy float32 (this module's docstring).

    config, state: as for `npdecoder.NumpyDecoder` (ValueError for a config it does not implement or a state that
    does not match it); kernels: whether to use the C kernels of hvqcodec.decoderkernel (None: where built).
    The context path's weights are npdecoder's (`prepare_weights`, the whole decoder's), in `decoder_weights`.
    Threads are kept (one executor per thread count) until `close()` (or the end of a `with` block).
    decoder_weights: a NumpyDecoder's `weights` of the same state, to share rather than prepare again."""

    def __init__(self, config: Mapping, state: Mapping[str, np.ndarray], kernels: bool | None = None,
                 decoder_weights: DecoderWeights | None = None) -> None:
        super().__init__(config, kernels, "hvqcodec-npencoder")
        # A NumpyDecoder's prepared weights of the same state may be passed in: they are the same arrays.
        self.decoder_weights = decoder_weights or prepare_weights(state, self.config)
        self.weights = prepare_encoder_weights(state, config, self.decoder_weights)
        # Where the CPU has AMX tiles, the ConvNeXt blocks' MLPs (the context path's too) run as three bfloat16
        # passes: 16 significant bits, within 2e-5 of float32 (whose codes these choose), 1.6x sooner.
        for block in [b for blocks in self.weights.stages for b in blocks] + self.decoder_weights.top_blocks + \
                self.decoder_weights.mid_blocks:
            block.split_bf16()
        for layer in (self.decoder_weights.top_up, self.decoder_weights.mid_up):  # (the context path's upsamplings)
            layer.split_bf16()

    @property
    def code_dim(self) -> int:
        return self.config.code_dim

    def encode_latent(self, rgb: np.ndarray, threads: int = 2, timer: Timer | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 (any size) -> top codes (h, w) int64, mid codes (2h, 2w) int64 (nearest) and the
        bottom level's unquantised latent (4h, 4w, D) float32 of the image padded to multiples of 16 (h = ceil(H
        / 16)): torch's `HierarchicalVQVAE.encode_latent` of the image as `Codec.encode_codes` gives it, channels
        last. threads: Python threads sharing out bands of rows (1: the calling thread only); timer(name,
        seconds), for measurements: each part (PARTS, from the calling thread) and the ConvNeXt blocks'
        operations (npdecoder's names, from the thread that ran them)."""
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
            raise ValueError(f"encode_latent needs an (H, W, 3) uint8 image, not {rgb.dtype} {rgb.shape}")
        run = self._run(threads, timer, split_bf16=True)
        weights, context = self.weights, self.decoder_weights
        lap = run.laps()
        f1 = stage(stem(padded_input(rgb), weights, run), weights.stages[0], run)
        lap(PARTS[0])
        f2 = stage(downsample(f1, weights.downsamples[0], run), weights.stages[1], run)
        lap(PARTS[1])
        f3 = stage(downsample(f2, weights.downsamples[1], run), weights.stages[2], run)
        lap(PARTS[2])
        top = self._codes(0, project([f3], weights.pre_quant[0], run), run)
        c2 = top_context(context, top, run)
        lap(PARTS[3])
        mid = self._codes(1, project([f2, c2], weights.pre_quant[1], run), run)
        c1 = mid_context(context, mid, c2, run)
        lap(PARTS[4])
        latent = project([f1, c1], weights.pre_quant[2], run)
        lap(PARTS[5])
        return top, mid, latent

    def nearest(self, level: int, latent: np.ndarray, bottom_lambda: float = 0.0, threads: int = 2) -> np.ndarray:
        """Level 0, 1, 2 (top, mid, bottom) and a latent (..., D) -> the codes (...) int64 of least squared
        distance (EMAQuantiser.nearest; for the bottom with bottom_lambda > 0, + bottom_lambda * bits under the
        codebook's usage, as `bottom_codes`), the lower index among equal costs."""
        if level not in (0, 1, 2):
            raise ValueError(f"level: 0, 1 or 2 (top, mid, bottom), not {level!r}")
        latent = np.asarray(latent)
        codes = self._search(level, latent, 1, bottom_lambda, threads)[1]
        return codes.reshape(latent.shape[:-1])

    def candidates(self, latent: np.ndarray, count: int, bottom_lambda: float = 0.0, threads: int = 2
                   ) -> tuple[np.ndarray, np.ndarray]:
        """The bottom codebook's `count` best codes for each row of a latent (..., D), as EMAQuantiser.candidates
        computes them (rows in C order, as `latent.permute(1, 2, 0).reshape(-1, D)` of torch's (D, h, w)): costs
        (M, count) float32 (squared distance, + bottom_lambda * bits where bottom_lambda > 0) and indices (M,
        count) int64, least first, the lower index first among equal costs."""
        if not _is_int(count) or not 1 <= count <= self.config.codebook_sizes[2]:
            raise ValueError(f"count: 1..{self.config.codebook_sizes[2]} is needed, not {count!r}")
        return self._search(2, np.asarray(latent), int(count), bottom_lambda, threads)

    def _search(self, level: int, latent: np.ndarray, count: int, bottom_lambda: float, threads: int
                ) -> tuple[np.ndarray, np.ndarray]:
        codebook = self.weights.codebooks[level]
        lambdas = float(bottom_lambda) if level == 2 else 0.0
        if lambdas > 0 and codebook.bits is None:
            raise ValueError("bottom_lambda > 0 needs the bottom codebook's usage (quantisers.2.cluster_size)")
        return search(_flat_latent(latent, self.code_dim), codebook, count, lambdas, self._run(threads))

    def _codes(self, level: int, latent: np.ndarray, run: _Run) -> np.ndarray:
        """Nearest codes (h, w) of a level's (h, w, D) latent."""
        flat = latent.reshape(-1, latent.shape[-1])
        return search(flat, self.weights.codebooks[level], 1, 0.0, run)[1].reshape(latent.shape[:2])

"""Could a runtime without torch run the autoencoder's decoder? A float32 numpy-only `HierarchicalVQVAE.decode`,
checked against torch's and timed beside it.

The command line spends 1.5-2 s importing torch; docs/DESIGN.md section 8 plans a runtime without it. This probe
measures what the decoder part of such a runtime costs in numpy plus the runtime's C kernels
(hvqcodec/decoderkernel.py: depthwise 7x7 conv + LayerNorm, bias + GELU, the post-filter's 3x3 convs; the
matmuls stay in numpy's BLAS), and in plain numpy:

- agreement: `numpy_decode` (with the kernels, and plain) against torch's float32 decode of the same codes
  (kodim01 at the default quality): the largest difference before rounding, and the PSNR of the numpy picture
  against torch's (both clamped, x255, rounded to uint8);
- time: medians of --repeats runs each of the numpy decoder with the kernels and plain, each on one thread and
  on two (bands of rows shared out over two Python threads; the kernels release the GIL), torch's float32
  decoder and torch's default one (bfloat16 where native, `Codec.low_precision_decoder`), interleaved in one
  process (this 2-core machine's speed drifts and other work may be running: the 1-minute load average, this
  process included, is recorded before and after), on kodim01 (768x512) and on a 1024x1024 crop of a CLIC image
  (the codec's largest tile);
- where the numpy decoders' time goes: context path, /4 stage, /2 stage, to_rgb + detail head, post-filter, and
  per kind of operation on one thread (medians over the same runs); beside it, torch's own kernels by kind (one
  profiled decode at each precision);
- `python -c "import numpy"` against `python -c "import torch"`: medians of fresh processes, interleaved.

    python benchmarks/numpy_decoder.py [--repeats 5] [--import-repeats 3] [--no-large] [--no-kernels]
                                       [--json out.json]

--no-kernels: plain numpy only (also what runs where hvqcodec._decoderkernel is not built).

The decoder part of this file (down to the "measurement" line) needs numpy (and hvqcodec.decoderkernel, numpy
only) but not torch; torch and hvqcodec's codec are imported by the measurement functions. Plain numpy's GELU is
the exact (erf) form with erfc by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7), arranged as gelu(x) = max(x, 0)
- |x|/2 * erfc(|x|/sqrt(2)), so no branch or sign is needed; the kernels' is described in _decoderkernel.c.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# numpy's BLAS (OpenBLAS) on one thread, set before numpy is imported (a caller's own setting wins): the two-thread
# numpy decoder shares bands of rows out over Python threads instead, and two BLAS threads under one Python
# thread were measured here 5-10% faster when the machine was idle but 2-2.7x slower while another process ran
# (OpenBLAS's threads spin, and the elementwise work between matmuls, most of the time, stays on one core anyway).
ENVIRONMENT_BEFORE = dict(os.environ)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from hvqcodec import decoderkernel  # noqa: E402  (numpy only: `import hvqcodec` does not import torch)

ROOT = Path(__file__).resolve().parents[1]
KODIM01 = ROOT.parent / "shared" / "datasets" / "kodak" / "kodim01.png"
CLIC = ROOT.parent / "shared" / "datasets" / "train" / "clic2025_finaltest"

# ---------------------------------------------------------------------------------------------------------------
# The decoder in numpy (float32, channels last: an activation is (H, W, C), so per-position Linears are matmuls)
# ---------------------------------------------------------------------------------------------------------------

# Positions per chunk of a ConvNeXt block (its depthwise conv, LayerNorm and MLP run a band of rows at a time, so
# the (positions, 4C) intermediates stay in cache); as hvqcodec/convnext.py, narrower blocks take more rows. 2048
# measured best of 1024-4096 here (hvqcodec's torch blocks use 4096); smaller bands also share out better over
# two threads.
CHUNK_POSITIONS = 2048
# Elements per pass of GELU's 19 elementwise numpy operations: 64K floats (256 KB) stay in L2 between passes.
GELU_CHUNK = 1 << 16
# Positions per band of the post-filter's 3x3 convs.
CONV3X3_POSITIONS = 8192
# Positions per pass of the depthwise conv (measured best of 256-4096 at 32 and 64 channels).
DEPTHWISE_POSITIONS = 1024
# With the C kernels, ConvNeXt blocks take bands of chunk_positions too (256-2048 measured within noise, 2048
# ahead); the post-filter's three convs run together on bands of this many output positions (post_filter_kernels;
# 8192-32768 measured, 16384 ahead on one thread: 21 rows at kodim01's width).
KERNEL_POST_FILTER_POSITIONS = 16384
LAYER_NORM_EPS = 1e-6

# Abramowitz & Stegun 7.1.26: erfc(z) = t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) exp(-z^2), t = 1 / (1 + p z),
# z >= 0, |error| <= 1.5e-7. With z = |x| / sqrt(2), t = (sqrt2 / p) / (sqrt2 / p + |x|) (an add and a divide), and
# the GELU's 1/2 goes into the a_k.
ERFC_P = 0.3275911
ERFC_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
GELU_T_OFFSET = GELU_T_NUMERATOR = np.float32(math.sqrt(2) / ERFC_P)
GELU_HALF_A = tuple(np.float32(a / 2) for a in ERFC_A)


def chunk_positions(channels: int) -> int:
    return CHUNK_POSITIONS * max(1, 128 // channels)


def _config_value(config, name: str):
    """config as an AutoencoderConfig or its to_dict() (a torch-free runtime would read the dict)."""
    return config[name] if isinstance(config, dict) else getattr(config, name)


def _f32(array) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


@dataclass
class BlockWeights:
    """One ConvNeXt block, prepared: the LayerNorm's affine folded into the first Linear, the layer scale into the
    second (the same function; the folding is done in float64 and rounded once)."""
    depthwise: np.ndarray  # (49, C): tap (i, j) at row 7 i + j
    depthwise_bias: np.ndarray  # (C,)
    fc1: np.ndarray  # (C, 4C)
    fc1_bias: np.ndarray  # (4C,)
    fc2: np.ndarray  # (4C, C)
    fc2_bias: np.ndarray  # (C,)


@dataclass
class UpsampleWeights:
    """LayerNorm2d then a 2x2 stride-2 transposed conv, prepared as one matmul (C, 2*2*O), the norm's affine
    folded in; output columns ordered (i, j, o)."""
    matrix: np.ndarray
    bias: np.ndarray
    out_channels: int


@dataclass
class DecoderWeights:
    codebooks: list[np.ndarray]  # top, mid, bottom: (K, D)
    stage_codebooks: list[list[np.ndarray]]  # per refinement stage, per group: (K, D / G)
    absent: np.ndarray  # (2, D): stand-ins for missing mid and bottom levels
    top_proj: np.ndarray  # (D, w3)
    top_proj_bias: np.ndarray
    top_blocks: list[BlockWeights]
    top_up: UpsampleWeights
    mid_proj_codes: np.ndarray  # (D, w2): the mid codes' rows of the projection of [mid codes, c2]
    mid_proj_context: np.ndarray  # (w2, w2): c2's rows
    mid_proj_bias: np.ndarray
    mid_blocks: list[BlockWeights]
    mid_up: UpsampleWeights
    dec_in_codes: np.ndarray  # (D, w1): rows for the bottom vector of [bottom vector, c1]
    dec_in_context: np.ndarray  # (w1, w1): c1's rows
    dec_in_bias: np.ndarray
    quarter_blocks: list[BlockWeights]
    half_up: UpsampleWeights
    half_blocks: list[BlockWeights]
    to_rgb: UpsampleWeights
    detail: np.ndarray | None  # (w1, 48): detail head's 1x1 conv, columns (colour, i, j) as PixelShuffle(4) reads
    detail_bias: np.ndarray | None
    post_filter: list[tuple[np.ndarray, np.ndarray]]  # per 3x3 conv: (9 * Cin, Cout) rows (i, j, cin), bias


def _block_weights(weights: dict[str, np.ndarray], prefix: str) -> BlockWeights:
    w = {k[len(prefix) + 1:]: np.asarray(v, dtype=np.float64) for k, v in weights.items()
         if k.startswith(prefix + ".")}
    channels = w["dwconv.bias"].shape[0]
    gamma = w.get("gamma", np.ones(channels))
    fc1 = w["pwconv1.weight"].T  # (C, 4C)
    return BlockWeights(
        depthwise=_f32(w["dwconv.weight"].reshape(channels, 49).T),
        depthwise_bias=_f32(w["dwconv.bias"]),
        fc1=_f32(w["norm.weight"][:, None] * fc1),
        fc1_bias=_f32(w["norm.bias"] @ fc1 + w["pwconv1.bias"]),
        fc2=_f32(w["pwconv2.weight"].T * gamma[None, :]),
        fc2_bias=_f32(w["pwconv2.bias"] * gamma))


def _upsample_weights(weights: dict[str, np.ndarray], norm: str, conv: str) -> UpsampleWeights:
    kernel = np.asarray(weights[conv + ".weight"], dtype=np.float64)  # (C, O, 2, 2)
    channels, out_channels = kernel.shape[:2]
    matrix = kernel.transpose(0, 2, 3, 1).reshape(channels, 4 * out_channels)
    norm_weight = np.asarray(weights[norm + ".weight"], dtype=np.float64)
    norm_bias = np.asarray(weights[norm + ".bias"], dtype=np.float64)
    bias = norm_bias @ matrix + np.tile(np.asarray(weights[conv + ".bias"], dtype=np.float64), 4)
    return UpsampleWeights(_f32(norm_weight[:, None] * matrix), _f32(bias), out_channels)


def _conv1x1(weights: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    kernel = weights[name + ".weight"]
    return _f32(kernel.reshape(kernel.shape[0], -1).T), _f32(weights[name + ".bias"])


def prepare_weights(weights: dict[str, np.ndarray], config) -> DecoderWeights:
    """The autoencoder's state dict (as numpy arrays) -> the decoder's weights in the layouts numpy_decode uses."""
    dec3, dec2, dec1 = _config_value(config, "decoder_depths")
    refine_stages = _config_value(config, "refine_stages")
    refine_groups = _config_value(config, "refine_groups")
    half_depth = _config_value(config, "half_depth")
    code_dim = _config_value(config, "code_dim")
    top_proj, top_proj_bias = _conv1x1(weights, "context_top.proj")
    mid_proj, mid_proj_bias = _conv1x1(weights, "context_mid.proj")
    dec_in, dec_in_bias = _conv1x1(weights, "dec_in")
    detail, detail_bias = (_conv1x1(weights, "detail.0") if _config_value(config, "detail_head")
                           else (None, None))
    post_filter = []
    if _config_value(config, "post_filter"):
        index = 0
        while f"post_filter.convs.{index}.weight" in weights:
            kernel = weights[f"post_filter.convs.{index}.weight"]  # (Cout, Cin, 3, 3)
            post_filter.append((_f32(np.transpose(kernel, (2, 3, 1, 0)).reshape(-1, kernel.shape[0])),
                                _f32(weights[f"post_filter.convs.{index}.bias"])))
            index += 1
    return DecoderWeights(
        codebooks=[_f32(weights[f"quantisers.{level}.codebook"]) for level in range(3)],
        stage_codebooks=[[_f32(weights[f"refiners.{stage}.quantisers.{group}.codebook"])
                          for group in range(refine_groups)] for stage in range(refine_stages)],
        absent=_f32(weights["absent"]),
        top_proj=top_proj, top_proj_bias=top_proj_bias,
        top_blocks=[_block_weights(weights, f"context_top.blocks.{i}") for i in range(dec3)],
        top_up=_upsample_weights(weights, "context_top.up.norm", "context_top.up.conv"),
        mid_proj_codes=_f32(mid_proj[:code_dim]), mid_proj_context=_f32(mid_proj[code_dim:]),
        mid_proj_bias=mid_proj_bias,
        mid_blocks=[_block_weights(weights, f"context_mid.blocks.{i}") for i in range(dec2)],
        mid_up=_upsample_weights(weights, "context_mid.up.norm", "context_mid.up.conv"),
        dec_in_codes=_f32(dec_in[:code_dim]), dec_in_context=_f32(dec_in[code_dim:]), dec_in_bias=dec_in_bias,
        quarter_blocks=[_block_weights(weights, f"dec1.{i}") for i in range(dec1)],
        half_up=_upsample_weights(weights, "dec_up.norm", "dec_up.conv"),
        half_blocks=[_block_weights(weights, "dec_half")]
        + [_block_weights(weights, f"dec_half_more.{i}") for i in range(half_depth - 1)],
        to_rgb=_upsample_weights(weights, "to_rgb.0", "to_rgb.1"),
        detail=detail, detail_bias=detail_bias, post_filter=post_filter)


# --- layers ---------------------------------------------------------------------------------------------------

def gelu_(x: np.ndarray) -> np.ndarray:
    """Exact GELU, x * Phi(x), in place on a contiguous float32 array, GELU_CHUNK elements at a time.

    gelu(x) = max(x, 0) - |x|/2 * erfc(|x|/sqrt(2)), erfc by Abramowitz & Stegun 7.1.26 (module docstring)."""
    flat = x.reshape(-1)
    size = min(GELU_CHUNK, flat.size)
    magnitude, t, poly = (np.empty(size, np.float32) for _ in range(3))
    a1, a2, a3, a4, a5 = GELU_HALF_A
    for start in range(0, flat.size, GELU_CHUNK):
        part = flat[start:start + GELU_CHUNK]
        n = part.size
        mag, tt, p = magnitude[:n], t[:n], poly[:n]
        np.abs(part, out=mag)
        np.add(mag, GELU_T_OFFSET, out=tt)
        np.divide(GELU_T_NUMERATOR, tt, out=tt)  # t = 1 / (1 + p |x| / sqrt2) = (sqrt2 / p) / (sqrt2 / p + |x|)
        np.multiply(tt, a5, out=p)
        p += a4
        p *= tt
        p += a3
        p *= tt
        p += a2
        p *= tt
        p += a1
        p *= tt  # p = erfc(|x|/sqrt2) / (2 exp(-x^2/2))
        np.multiply(mag, -0.5, out=tt)
        tt *= mag
        np.exp(tt, out=tt)
        p *= tt
        p *= mag
        np.maximum(part, 0, out=part)
        part -= p
    return x


def normalise_rows_(rows: np.ndarray) -> np.ndarray:
    """LayerNorm without its affine (folded into the next matmul), in place over the last axis of (P, C)."""
    channels = rows.shape[1]
    average = np.full(channels, 1 / channels, np.float32)
    rows -= (rows @ average)[:, None]
    variance = np.square(rows) @ average
    variance += LAYER_NORM_EPS
    rows *= (1 / np.sqrt(variance))[:, None]
    return rows


def conv1x1(x: np.ndarray, matrix: np.ndarray, bias: np.ndarray) -> np.ndarray:
    out = x.reshape(-1, x.shape[-1]) @ matrix
    out += bias
    return out.reshape(*x.shape[:-1], matrix.shape[1])


def upsample(x: np.ndarray, layer: UpsampleWeights) -> np.ndarray:
    """LayerNorm2d + ConvTranspose2d(k=2, s=2) on (H, W, C) -> (2H, 2W, O)."""
    h, w, c = x.shape
    out = normalise_rows_(x.reshape(-1, c).copy()) @ layer.matrix
    out += layer.bias
    o = layer.out_channels
    return out.reshape(h, w, 2, 2, o).transpose(0, 2, 1, 3, 4).reshape(2 * h, 2 * w, o)


def depthwise7x7(flat_padded: np.ndarray, padded_width: int, start: int, out: np.ndarray,
                 block: BlockWeights) -> np.ndarray:
    """The depthwise 7x7 conv for len(out) consecutive positions of the padded grid from `start` (row-major;
    positions whose column is past the image are garbage), DEPTHWISE_POSITIONS at a time.

    Per kernel row i, one einsum sums the 7 horizontal taps: position p's taps are the 7 x C floats from
    flat_padded[p + i * padded_width] on, contiguous, so a strided view (positions, 7, C) holds them all without a
    copy. Measured 1.5-1.8x faster than 49 shifted multiplies and adds (two numpy passes per tap)."""
    channels = out.shape[1]
    row_stride, item = flat_padded.strides
    kernel = block.depthwise.reshape(7, 7, channels)
    scratch = np.empty((min(DEPTHWISE_POSITIONS, len(out)), channels), np.float32)
    for sub in range(0, len(out), DEPTHWISE_POSITIONS):
        part = out[sub:sub + DEPTHWISE_POSITIONS]
        count = len(part)
        for i in range(7):
            first = flat_padded[start + sub + i * padded_width:]
            taps = np.lib.stride_tricks.as_strided(first, shape=(count, 7, channels),
                                                   strides=(row_stride, row_stride, item), writeable=False)
            if i == 0:
                np.einsum("pjc,jc->pc", taps, kernel[0], out=part)
            else:
                np.einsum("pjc,jc->pc", taps, kernel[i], out=scratch[:count])
                part += scratch[:count]
        part += block.depthwise_bias
    return out


def convnext_block(x: np.ndarray, block: BlockWeights, pool=None, timings: dict | None = None) -> np.ndarray:
    """x + MLP(LayerNorm(dwconv7x7(x))) for (H, W, C), a band of rows at a time (bands shared out over `pool`'s
    threads if given). timings, if given (single thread only), gets seconds per kind of operation."""
    h, w, c = x.shape
    padded_width = w + 6
    # Zero padding of 3 on each side, and one more row at the bottom so the last band's shifted slices stay inside.
    padded = np.zeros((h + 7, padded_width, c), np.float32)
    padded[3:3 + h, 3:3 + w] = x
    flat_padded = padded.reshape(-1, c)
    out = np.empty_like(x)
    band_rows = max(1, chunk_positions(c) // padded_width)
    clock = time.perf_counter

    def band(top: int) -> None:
        rows = min(band_rows, h - top)
        t0 = clock()
        y = depthwise7x7(flat_padded, padded_width, top * padded_width,
                         np.empty((rows * padded_width, c), np.float32), block)
        t1 = clock()
        normalise_rows_(y)
        t2 = clock()
        hidden = y @ block.fc1
        hidden += block.fc1_bias
        t3 = clock()
        gelu_(hidden)
        t4 = clock()
        y = hidden @ block.fc2
        y += block.fc2_bias
        t5 = clock()
        np.add(x[top:top + rows], y.reshape(rows, padded_width, c)[:, :w], out=out[top:top + rows])
        t6 = clock()
        if timings is not None:
            for name, seconds in (("depthwise 7x7 (einsum)", t1 - t0), ("LayerNorm", t2 - t1),
                                  ("MLP matmuls + biases", t3 - t2 + t5 - t4), ("GELU", t4 - t3),
                                  ("residual add", t6 - t5)):
                _add_time(timings, "ConvNeXt blocks: " + name, seconds)

    _each(band, range(0, h, band_rows), pool)
    return out


def convnext_block_kernels(x: np.ndarray, block: BlockWeights, pool=None, timings: dict | None = None) -> np.ndarray:
    """convnext_block with the C kernels: the depthwise conv + LayerNorm, and the first Linear's bias + GELU (the
    matmuls in numpy). Bands of rows as there; the kernels release the GIL, so `pool`'s threads run them at once."""
    x = np.ascontiguousarray(x)
    h, w, c = x.shape
    kernel = block.depthwise.reshape(7, 7, c)
    out = np.empty_like(x)
    band_rows = max(1, chunk_positions(c) // w)
    clock = time.perf_counter

    def band(top: int) -> None:
        rows = min(band_rows, h - top)
        t0 = clock()
        y = decoderkernel.depthwise7x7_layernorm(x, kernel, block.depthwise_bias, first_row=top, rows=rows)
        t1 = clock()
        hidden = y.reshape(rows * w, c) @ block.fc1
        t2 = clock()
        decoderkernel.bias_gelu_(hidden, block.fc1_bias)
        t3 = clock()
        y = hidden @ block.fc2
        y += block.fc2_bias
        t4 = clock()
        np.add(x[top:top + rows], y.reshape(rows, w, c), out=out[top:top + rows])
        t5 = clock()
        if timings is not None:
            for name, seconds in (("depthwise 7x7 + LayerNorm (C)", t1 - t0),
                                  ("MLP matmuls + second bias", t2 - t1 + t4 - t3),
                                  ("bias + GELU (C)", t3 - t2), ("residual add", t5 - t4)):
                _add_time(timings, "ConvNeXt blocks: " + name, seconds)

    _each(band, range(0, h, band_rows), pool)
    return out


def _add_time(timings: dict, name: str, seconds: float) -> None:
    timings[name] = timings.get(name, 0.0) + seconds


def _each(function, items, pool) -> None:
    if pool is None:
        for item in items:
            function(item)
    else:
        list(pool.map(function, items))  # list(): re-raises a worker's exception


def conv3x3(x: np.ndarray, matrix: np.ndarray, bias: np.ndarray, gelu: bool, pool=None,
            timings: dict | None = None) -> np.ndarray:
    """A 3x3 conv, zero padding 1, on (H, W, Cin) -> (H, W, Cout), optionally GELU after, in bands of rows of the
    flattened padded input (tap (i, j) of position p is position p + i * padded_width + j, so every tap's inputs
    for a band are one contiguous slice). Three ways, by shape (each measured fastest for its layer):
    Cin < 9 (the filter's first conv, 3 -> 32): an im2col (positions, 9 Cin), then one matmul;
    Cout < 9 (its last, 32 -> 3): one matmul (positions, Cin) @ (Cin, 9 Cout), then the taps' outputs summed at
    their shifts (a 3-column matmul runs at a fraction of BLAS's speed);
    otherwise (32 -> 32): 9 matmuls of the shifted slices, accumulated (no im2col copy).
    timings, if given (single thread only), gets seconds per kind of operation."""
    h, w, c = x.shape
    padded_width = w + 2
    padded = np.zeros((h + 3, padded_width, c), np.float32)
    padded[1:1 + h, 1:1 + w] = x
    flat_padded = padded.reshape(-1, c)
    out_channels = matrix.shape[1]
    out = np.empty((h, w, out_channels), np.float32)
    band_rows = max(1, CONV3X3_POSITIONS // padded_width)
    tap_matrices = matrix.reshape(9, c, out_channels)
    if out_channels < 9:  # (Cin, 9 Cout): column block k is tap k's (Cin, Cout)
        all_taps = np.ascontiguousarray(tap_matrices.transpose(1, 0, 2).reshape(c, -1))

    clock = time.perf_counter

    def band(top: int) -> None:
        t0 = clock()
        rows = min(band_rows, h - top)
        count = rows * padded_width
        start = top * padded_width
        offsets = [(tap // 3) * padded_width + tap % 3 for tap in range(9)]
        if c < 9:
            columns = np.empty((count, 9, c), np.float32)
            for tap, offset in enumerate(offsets):
                columns[:, tap] = flat_padded[start + offset:start + offset + count]
            y = columns.reshape(count, 9 * c) @ matrix
        elif out_channels < 9:
            # Every tap's output at every position of the band and the 2 rows (+ 2) below it.
            taps = flat_padded[start:start + count + 2 * padded_width + 2] @ all_taps
            y = taps[:count, :out_channels].copy()
            for tap, offset in enumerate(offsets[1:], 1):
                y += taps[offset:offset + count, tap * out_channels:(tap + 1) * out_channels]
        else:
            y = flat_padded[start:start + count] @ tap_matrices[0]
            product = np.empty_like(y)
            for tap, offset in enumerate(offsets[1:], 1):
                np.matmul(flat_padded[start + offset:start + offset + count], tap_matrices[tap], out=product)
                y += product
        y += bias
        t1 = clock()
        if gelu:
            gelu_(y)
        t2 = clock()
        out[top:top + rows] = y.reshape(rows, padded_width, out_channels)[:, :w]
        if timings is not None:
            _add_time(timings, "post-filter: 3x3 convs (copies, matmuls, sums)", t1 - t0 + clock() - t2)
            _add_time(timings, "post-filter: GELU", t2 - t1)

    _each(band, range(0, h, band_rows), pool)
    return out


def post_filter_kernels(rgb: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]], pool=None,
                        timings: dict | None = None) -> np.ndarray:
    """The post-filter's correction (its 3x3 convs, GELU between them) with the C kernel, every layer a band of
    rows at a time: for a band of output rows, layer k computes those rows and the L-1-k rows on each side that
    the layers after it read, from the rows of layer k-1 held for the band (given to the kernel as its whole
    input: its zero padding then falls only at the image's top and bottom, where it is the image's). The same
    sums as one layer at a time over the whole image, but the 32-channel intermediates stay in cache instead of
    two full-resolution tables (50 MB each at kodim01's size); the halo rows cost a little more arithmetic.
    Bands shared out over `pool`'s threads if given."""
    h, w, _ = rgb.shape
    weights = [matrix.reshape(3, 3, matrix.shape[0] // 9, matrix.shape[1]) for matrix, _ in layers]
    out = np.empty((h, w, weights[-1].shape[3]), np.float32)
    band_rows = max(1, KERNEL_POST_FILTER_POSITIONS // w)
    last = len(layers) - 1
    clock = time.perf_counter

    def band(top: int) -> None:
        bottom = min(h, top + band_rows)
        x, x_top = rgb, 0  # layer k-1's rows x_top .. x_top + len(x) - 1
        for index, (weight, (_, bias)) in enumerate(zip(weights, layers)):
            halo = last - index
            first, stop = max(0, top - halo), min(h, bottom + halo)
            rows = out[top:bottom] if index == last else np.empty((stop - first, w, weight.shape[3]), np.float32)
            t0 = clock()
            decoderkernel.conv3x3(x, weight, bias, rows, first_row=first - x_top, gelu=index < last)
            if timings is not None:
                _add_time(timings, f"post-filter: 3x3 conv {weight.shape[2]}->{weight.shape[3]}"
                                   f"{' + GELU' if index < last else ''} (C)", clock() - t0)
            x, x_top = rows, first

    _each(band, range(0, h, band_rows), pool)
    return out


# --- the decoder ----------------------------------------------------------------------------------------------

PARTS = ("context path", "/4 stage", "/2 stage", "to_rgb + detail", "post-filter")


def decode_prepared(weights: DecoderWeights, codes: list[np.ndarray], timings: dict | None = None,
                    pool=None, kernels: bool = False) -> np.ndarray:
    """A prefix of the code grids [top (h, w), mid (2h, 2w), bottom (4h, 4w), stages (G, 4h, 4w)...] -> RGB
    (16h, 16w, 3) float32, about [0, 1] (not clamped): HierarchicalVQVAE.decode in float32, channels last.
    timings, if given, gets seconds per part (PARTS) and, without a pool, per kind of operation in the ConvNeXt
    blocks and the post-filter (under "operations"). pool: a concurrent.futures executor to share the bands of
    rows out over (numpy's elementwise operations run on one core; its ufuncs and the C kernels release the
    GIL). kernels: the C kernels (hvqcodec.decoderkernel) for the ConvNeXt blocks and the post-filter."""
    clock = time.perf_counter
    started = clock()
    top = weights.codebooks[0][codes[0]]
    h, w = codes[0].shape
    ops = {} if timings is not None and pool is None else None
    convnext_block_ = convnext_block_kernels if kernels else convnext_block

    x = conv1x1(top, weights.top_proj, weights.top_proj_bias)
    for block in weights.top_blocks:
        x = convnext_block_(x, block, pool, ops)
    c2 = upsample(x, weights.top_up)  # (2h, 2w, w2)
    mid = (weights.codebooks[1][codes[1]] if len(codes) > 1
           else np.broadcast_to(weights.absent[0], (2 * h, 2 * w, weights.absent.shape[1])))
    x = conv1x1(mid, weights.mid_proj_codes, weights.mid_proj_bias)
    x += conv1x1(c2, weights.mid_proj_context, np.float32(0))
    for block in weights.mid_blocks:
        x = convnext_block_(x, block, pool, ops)
    c1 = upsample(x, weights.mid_up)  # (4h, 4w, w1)
    context_done = clock()

    if len(codes) > 2:
        bottom = weights.codebooks[2][codes[2]]
        for stage_codes, group_books in zip(codes[3:], weights.stage_codebooks):
            bottom += np.concatenate([book[stage_codes[g]] for g, book in enumerate(group_books)], axis=-1)
    else:
        bottom = np.broadcast_to(weights.absent[1], (4 * h, 4 * w, weights.absent.shape[1]))
    x = conv1x1(bottom, weights.dec_in_codes, weights.dec_in_bias)
    x += conv1x1(c1, weights.dec_in_context, np.float32(0))
    for block in weights.quarter_blocks:
        x = convnext_block_(x, block, pool, ops)
    quarter = x
    quarter_done = clock()

    half = upsample(quarter, weights.half_up)
    for block in weights.half_blocks:
        half = convnext_block_(half, block, pool, ops)
    half_done = clock()

    rgb = upsample(half, weights.to_rgb)
    if weights.detail is not None:
        detail = conv1x1(quarter, weights.detail, weights.detail_bias)  # (4h, 4w, 48): channel = 16 colour + 4 i + j
        rgb += detail.reshape(4 * h, 4 * w, 3, 4, 4).transpose(0, 3, 1, 4, 2).reshape(16 * h, 16 * w, 3)
    rgb += 1
    rgb *= 0.5
    rgb_done = clock()

    if weights.post_filter and kernels:
        rgb += post_filter_kernels(rgb, weights.post_filter, pool, ops)
    elif weights.post_filter:
        x = rgb
        for index, (matrix, bias) in enumerate(weights.post_filter):
            x = conv3x3(x, matrix, bias, index < len(weights.post_filter) - 1, pool, ops)
        rgb += x
    filter_done = clock()
    if timings is not None:
        for name, seconds in zip(PARTS, np.diff([started, context_done, quarter_done, half_done, rgb_done,
                                                 filter_done])):
            timings[name] = float(seconds)
        if ops is not None:
            timings["operations"] = ops
    return rgb


def numpy_decode(weights: dict[str, np.ndarray], config, codes: list[np.ndarray], pool=None,
                 kernels: bool | None = None) -> np.ndarray:
    """HierarchicalVQVAE.decode in numpy: the autoencoder's state dict as numpy arrays, its config (or
    config.to_dict()) and a prefix of one image's code grids (no batch axis) -> RGB (H, W, 3) float32 of the
    padded size, about [0, 1] (torch's (N, 3, H, W) channels last). pool: as decode_prepared. kernels: whether
    to use the C kernels; None: where they are built (decoderkernel.available())."""
    if kernels is None:
        kernels = decoderkernel.available()
    return decode_prepared(prepare_weights(weights, config), codes, pool=pool, kernels=kernels)


# ---------------------------------------------------------------------------------------------------------------
# measurement (imports torch and hvqcodec)
# ---------------------------------------------------------------------------------------------------------------

def import_seconds(module: str) -> float:
    """Wall time of `python -c "import module"` in a fresh process, with the environment this script started in."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, env=ENVIRONMENT_BEFORE)
    return time.perf_counter() - start


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def load_average() -> float:
    return os.getloadavg()[0]


NUMPY_DECODERS = {"numpy + C kernels": True, "numpy float32": False}  # label -> kernels


def agreement_with(reference: np.ndarray, ours: np.ndarray, ours_threaded: np.ndarray) -> dict:
    """How a numpy decode (and its two-thread run) compares with torch's float32 decode."""
    difference = np.abs(ours - reference)
    ours8, reference8 = to_uint8(ours), to_uint8(reference)
    return {"max_abs_difference": float(difference.max()), "mean_abs_difference": float(difference.mean()),
            "uint8_psnr_vs_torch_float32": psnr_uint8(ours8, reference8),
            "uint8_values_differing": float(np.mean(ours8 != reference8)),
            "uint8_max_difference": int(np.abs(ours8.astype(np.int16) - reference8).max()),
            "two_threads_max_abs_difference_vs_one": float(np.abs(ours_threaded - ours).max())}


def measure_image(codec, name: str, codes, repeats: int, pool: ThreadPoolExecutor, kernels: bool) -> dict:
    """Agreement with torch's float32 decode, then interleaved timings of the decoders (the numpy ones with the C
    kernels if `kernels`, and plain)."""
    import torch

    autoencoder = codec.autoencoder
    state = {k: v.detach().numpy() for k, v in autoencoder.state_dict().items()}
    config = autoencoder.config.to_dict()
    numpy_codes = [c.numpy() for c in codes]
    batched = [c[None] for c in codes]
    numpy_decoders = {label: use for label, use in NUMPY_DECODERS.items() if kernels or not use}
    with torch.no_grad():
        reference = autoencoder.decode(batched, low_precision=False)[0].permute(1, 2, 0).numpy()
    agreement = {}
    for label, use in numpy_decoders.items():
        ours = numpy_decode(state, config, numpy_codes, kernels=use)
        agreement[label] = found = agreement_with(reference, ours, numpy_decode(state, config, numpy_codes, pool,
                                                                                 kernels=use))
        print(f"{name}: {label} vs torch float32: max |diff| {found['max_abs_difference']:.2e}, mean "
              f"{found['mean_abs_difference']:.2e}; uint8: PSNR {found['uint8_psnr_vs_torch_float32']:.2f} dB, "
              f"{100 * found['uint8_values_differing']:.4f}% of values differ (by <= "
              f"{found['uint8_max_difference']}); 2 threads vs 1: max |diff| "
              f"{found['two_threads_max_abs_difference_vs_one']:.1e}")

    prepare_times: list[float] = []
    part_times: dict[str, list[dict]] = {}

    def run_numpy(label: str, executor, use_kernels: bool) -> None:
        start = time.perf_counter()
        prepared = prepare_weights(state, config)
        prepare_times.append(time.perf_counter() - start)
        timings: dict = {}
        decode_prepared(prepared, numpy_codes, timings, executor, use_kernels)
        part_times.setdefault(label, []).append(timings)

    def run_torch(low_precision: bool) -> None:
        with torch.no_grad():
            autoencoder.decode(batched, low_precision=low_precision)

    default_label = f"torch default ({'bfloat16' if codec.low_precision_decoder else 'float32'})"
    runners = {}
    for label, use in numpy_decoders.items():
        for threads, executor in ((1, None), (2, pool)):
            thread_label = f"{label}, {threads} thread{'s' if threads > 1 else ''}"
            runners[thread_label] = (lambda l=thread_label, e=executor, u=use: run_numpy(l, e, u))
    runners["torch float32"] = lambda: run_torch(False)
    runners[default_label] = lambda: run_torch(codec.low_precision_decoder)
    for runner in runners.values():  # warm-up: allocators, oneDNN's kernels, caches
        runner()
    prepare_times.clear()
    part_times.clear()
    seconds: dict[str, list[float]] = {label: [] for label in runners}
    load_before = load_average()
    for _ in range(repeats):
        for label, runner in runners.items():
            start = time.perf_counter()
            runner()
            seconds[label].append(time.perf_counter() - start)
    load_after = load_average()
    medians = {label: statistics.median(values) for label, values in seconds.items()}
    parts = {label: {part: statistics.median(t[part] for t in runs) for part in PARTS}
             for label, runs in part_times.items()}
    operations = {}
    for label in numpy_decoders:
        single = part_times[f"{label}, 1 thread"]
        operations[label] = {op: statistics.median(t["operations"][op] for t in single)
                             for op in single[0]["operations"]}
    height, width = reference.shape[:2]
    print(f"{name} ({width}x{height}, {len(codes)} streams), median of {repeats} (load average "
          f"{load_before:.2f} before, {load_after:.2f} after):")
    for label, values in seconds.items():
        print(f"  {label:33s} {medians[label]:.3f} s  ({medians[label] / medians[default_label]:.2f}x torch "
              f"default; runs: {', '.join(f'{v:.3f}' for v in values)})")
    for label, part_seconds in parts.items():
        print(f"  {label} by part: " + ", ".join(f"{part} {value:.3f}" for part, value in part_seconds.items()))
    print(f"  weights prepared in {statistics.median(prepare_times):.4f} s (in each numpy time)")
    for label, kinds in operations.items():
        print(f"  {label}, 1 thread, by operation: " + ", ".join(
            f"{op} {value:.3f}" for op, value in sorted(kinds.items(), key=lambda item: -item[1])))
    kernels_seconds = {label: torch_kernels(autoencoder, batched, low) for label, low in
                       (("torch float32", False), (default_label, codec.low_precision_decoder))}
    for label, kinds in kernels_seconds.items():
        print(f"  {label} kernels (profiler, one run): " + ", ".join(f"{k} {v:.3f}" for k, v in kinds.items()))
    return {"image": name, "width": width, "height": height, "streams": len(codes), "agreement": agreement,
            "load_average_before_after": [load_before, load_after],
            "seconds_median": medians, "seconds": seconds,
            "relative_to_torch_default": {label: value / medians[default_label] for label, value in medians.items()},
            "numpy_parts_seconds_median": parts,
            "numpy_prepare_weights_seconds_median": statistics.median(prepare_times),
            "numpy_1_thread_operations_seconds_median": operations,
            "torch_kernels_seconds_one_profiled_run": kernels_seconds}


def torch_kernel_kind(name: str, shapes) -> str:
    if "conv" in name:
        weight = next((shape for shape in shapes[1:2] if len(shape) == 4), None)
        if weight is not None and weight[1] == 1 and weight[2:] == [7, 7]:
            return "depthwise 7x7 convs"
        if weight is not None and weight[2:] == [3, 3]:
            return "post-filter 3x3 convs"
        return "other convs (1x1, transposed 2x2)"
    for kind, keys in (("matmuls (Linear)", ("addmm", "linear", "matmul", "aten::mm", "aten::bmm")),
                       ("GELU", ("gelu",)), ("LayerNorm", ("layer_norm",)),
                       ("copies (layouts, dtypes)", ("copy", "contiguous", "clone"))):
        if any(key in name for key in keys):
            return kind
    return "other"


def torch_kernels(autoencoder, batched, low_precision: bool) -> dict[str, float]:
    """Seconds of torch's own (C) kernels in one decode by kind: the profiler's self time of each aten op on the
    calling thread (its intra-op threads work inside that time), what C kernels reach on these shapes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        autoencoder.decode(batched, low_precision=low_precision)
    kinds: dict[str, float] = {}
    for event in profiler.key_averages(group_by_input_shape=True):
        if event.key.startswith("aten::"):
            kind = torch_kernel_kind(event.key, event.input_shapes)
            kinds[kind] = kinds.get(kind, 0.0) + event.self_cpu_time_total / 1e6
    return dict(sorted(kinds.items(), key=lambda item: -item[1]))


def large_tile_codes(codec, size: int = 1024) -> tuple[str, list]:
    """Codes of a size x size centre crop of the first CLIC image at the default quality (what compress codes)."""
    from PIL import Image

    path = sorted(CLIC.glob("*.png"))[0]
    rgb = np.asarray(Image.open(path).convert("RGB"))
    top, left = (rgb.shape[0] - size) // 2, (rgb.shape[1] - size) // 2
    crop = np.ascontiguousarray(rgb[top:top + size, left:left + size])
    return f"{path.name[:12]} {size}x{size} centre crop", codec.encode_codes(crop, codec.operating_point())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--import-repeats", type=int, default=3)
    parser.add_argument("--no-large", action="store_true", help="skip the 1024x1024 crop")
    parser.add_argument("--no-kernels", action="store_true",
                        help="plain numpy only, without the C kernels (hvqcodec.decoderkernel)")
    parser.add_argument("--json")
    args = parser.parse_args()

    import_times: dict[str, list[float]] = {"numpy": [], "torch": []}
    for _ in range(args.import_repeats):  # interleaved, fresh processes
        for module, values in import_times.items():
            values.append(import_seconds(module))
    imports = {f"import {module}": {"seconds_median": statistics.median(values), "seconds": values}
               for module, values in import_times.items()}
    for label, value in imports.items():
        print(f"python -c \"{label}\": {value['seconds_median']:.3f} s  "
              f"(runs: {', '.join(f'{v:.3f}' for v in value['seconds'])})")

    import torch
    from hvqcodec.codec import load_codec

    kernels = decoderkernel.available() and not args.no_kernels
    if not decoderkernel.available() and not args.no_kernels:
        print("hvqcodec._decoderkernel is not built: plain numpy only")
    codec = load_codec()
    with ThreadPoolExecutor(2) as pool:
        images = [measure_image(codec, "kodim01", codec.compress(str(KODIM01)).codes[0], args.repeats, pool,
                                kernels)]
        if not args.no_large:
            images.append(measure_image(codec, *large_tile_codes(codec), args.repeats, pool, kernels))
    results = {"model": codec.name, "torch": torch.__version__, "numpy": np.__version__,
               "torch_threads": torch.get_num_threads(), "numpy_blas_threads": os.environ["OPENBLAS_NUM_THREADS"],
               "machine": platform.machine(), "cpus": os.cpu_count(),
               "low_precision_decoder": codec.low_precision_decoder,
               "decoder_kernels": decoderkernel.path() if kernels else None,
               "gelu": {"numpy float32": "exact (erf) form; erfc by Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7",
                        **({"numpy + C kernels": "exact (erf) form; erfc(z) = 2u exp(-z^2 + Q(u)), u = 1/(2 + z), "
                                                 "Q of degree 7 (hvqcodec/_decoderkernel.c), |error| < 2e-8 "
                                                 "before float32 rounding"} if kernels else {})},
               "imports": imports, "images": images}
    if args.json:
        command = "python benchmarks/numpy_decoder.py" + "".join(
            flag for flag, on in ((f" --repeats {args.repeats}", args.repeats != 5),
                                  (f" --import-repeats {args.import_repeats}", args.import_repeats != 3),
                                  (" --no-large", args.no_large), (" --no-kernels", args.no_kernels),
                                  (f" --json {args.json}", True)) if on)
        Path(args.json).write_text(json.dumps({
            "name": "numpy-decoder", "description": " ".join(__doc__.split("\n\n")[0].split()),
            "command": command, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()

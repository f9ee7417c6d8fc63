"""The autoencoder's decoder without torch: `HierarchicalVQVAE.decode` in numpy float32, for the torch-free
runtime of `hvqcodec decompress` (docs/DESIGN.md section 8).

`NumpyDecoder(config, state)` prepares an exported model's weights once (the autoencoder config as
`AutoencoderConfig.to_dict()` gives it, the state dict as numpy arrays, float16 in the shipped files); its
`decode(codes)` turns one tile's code grids into the picture, channels last and not yet clamped, and `to_uint8`
makes the bytes from it exactly as `Codec.decode_codes` does from torch's picture.

The heavy elementwise work runs in the C kernels of `hvqcodec.decoderkernel` where they are built (a ConvNeXt
block's depthwise 7x7 convolution with its LayerNorm, the first Linear's bias with GELU, the post-filter's 3x3
convolutions), the matmuls in numpy's BLAS; without the kernels, in plain numpy (several times slower). Bands of
rows can be shared out over Python threads: the kernels and numpy's ufuncs release the GIL. numpy's BLAS should
then run on one thread (OPENBLAS_NUM_THREADS=1, set before numpy is imported, as benchmarks/numpy_decoder.py
does; this module cannot set it): on a 2-core machine kodim01 took 0.33 s so on two Python threads, 0.54-0.63 s
with OpenBLAS's own two threads as well (their waiting threads spin).

Its pixels differ from torch's float32 decoder by float rounding only (the same function, summed in another
order; LayerNorm affines and layer scales folded into the next matmul): a few 1e-7 before rounding to 8 bits, a
level in a few values of a hundred thousand after, which docs/DESIGN.md section 4 allows for the decoder. The
probability path (priors, entropy coding) is integer and does not depend on this module.

This module imports numpy and hvqcodec.decoderkernel only (no torch).
"""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from . import decoderkernel

# timer(name, seconds): what `NumpyDecoder.decode` reports to a caller that measures it.
Timer = Callable[[str, float], None]

class Timings:
    """A `Timer` that sums seconds per part (those named in `parts`) and per other operation over its calls, from
    any thread (what benchmarks/numpy_decoder.py and numpy_encoder.py report)."""

    def __init__(self, parts: Sequence[str]) -> None:
        self.part_names = set(parts)
        self.parts: dict[str, float] = {}
        self.operations: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str, seconds: float) -> None:
        with self._lock:
            table = self.parts if name in self.part_names else self.operations
            table[name] = table.get(name, 0.0) + seconds


# The decoder's parts, in order, as `decode` reports them to a timer.
PARTS = ("context path", "/4 stage", "/2 stage", "to_rgb + detail", "post-filter")

# Positions per band of a ConvNeXt block (its depthwise conv, LayerNorm and MLP run a band of rows at a time, so
# the (positions, 4C) intermediates stay in cache); as hvqcodec/convnext.py, narrower blocks take more rows.
# 2048 measured best of 1024-4096 in numpy (hvqcodec's torch blocks use 4096), and 256-2048 within noise with the
# C kernels; smaller bands also share out better over two threads.
CHUNK_POSITIONS = 2048
# Plain numpy: elements per pass of GELU's 19 elementwise operations (64K floats, 256 KB, stay in L2 between
# passes); positions per band of the post-filter's 3x3 convs; positions per pass of the depthwise conv
# (measured best of 256-4096 at 32 and 64 channels).
GELU_CHUNK = 1 << 16
CONV3X3_POSITIONS = 8192
DEPTHWISE_POSITIONS = 1024
# With the C kernels the post-filter's convs run together on bands of this many output positions
# (`post_filter_kernels`; 8192-32768 measured, 16384 ahead on one thread: 21 rows at kodim01's width).
KERNEL_POST_FILTER_POSITIONS = 16384
LAYER_NORM_EPS = 1e-6

# Plain numpy's GELU is the exact (erf) form, gelu(x) = max(x, 0) - |x|/2 * erfc(|x|/sqrt(2)) (no branch or sign
# needed), erfc by Abramowitz & Stegun 7.1.26: erfc(z) = t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) exp(-z^2),
# t = 1 / (1 + p z), z >= 0, |error| <= 1.5e-7. With z = |x| / sqrt(2), t = (sqrt2 / p) / (sqrt2 / p + |x|) (an
# add and a divide), and the GELU's 1/2 goes into the a_k. The C kernels' GELU is described in _decoderkernel.c.
ERFC_P = 0.3275911
ERFC_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
GELU_T_OFFSET = GELU_T_NUMERATOR = np.float32(math.sqrt(2) / ERFC_P)
GELU_HALF_A = tuple(np.float32(a / 2) for a in ERFC_A)

# The autoencoder config keys that shape the decoder, with AutoencoderConfig's defaults (an older file may lack
# the newer keys), and those that only concern the encoder or training. Any other key is refused: it may change
# the decoder in a way this module does not know (tests/test_npdecoder.py keeps both in step with the config).
DECODER_CONFIG_DEFAULTS = {
    "widths": (64, 96, 128), "decoder_depths": (3, 3, 4), "code_dim": 32, "codebook_sizes": (512, 512, 512),
    "layer_scale_init": 1e-6, "refine_stages": 0, "refine_groups": 4, "refine_codebook_size": 32,
    "detail_head": False, "half_depth": 1, "post_filter": ()}
ENCODER_CONFIG_KEYS = frozenset({
    "encoder_depths", "ema_decay", "commitment", "drop_bottom", "drop_bottom_mid", "keep_all_refine",
    "refine_lambdas", "bottom_lambdas"})


# --- configuration and weights ------------------------------------------------------------------------------

@dataclass(frozen=True)
class DecoderConfig:
    """What the decoder needs of an AutoencoderConfig."""
    widths: tuple[int, int, int]  # /4, /8, /16
    decoder_depths: tuple[int, int, int]  # ConvNeXt blocks: context at /16, context at /8, the /4 stage
    code_dim: int
    codebook_sizes: tuple[int, int, int]  # top, mid, bottom
    refine_stages: int
    refine_groups: int
    refine_codebook_size: int
    detail_head: bool
    half_depth: int  # ConvNeXt blocks at /2
    post_filter: tuple[int, ...]  # (channels, layers), or () for none

    @property
    def num_streams(self) -> int:
        return 3 + self.refine_stages


def decoder_config(config: Mapping) -> DecoderConfig:
    """An autoencoder config dict (`AutoencoderConfig.to_dict()`) -> DecoderConfig; ValueError for one this
    decoder does not implement (an unknown key, malformed values)."""
    if not isinstance(config, Mapping):
        raise ValueError(f"the autoencoder config must be a dict, not {type(config).__name__}")
    unknown = set(config) - set(DECODER_CONFIG_DEFAULTS) - ENCODER_CONFIG_KEYS
    if unknown:
        raise ValueError(f"the numpy decoder does not implement autoencoder config keys {sorted(unknown)} "
                         "(a newer model? decode it with torch)")
    values = {**DECODER_CONFIG_DEFAULTS, **{k: v for k, v in config.items() if k in DECODER_CONFIG_DEFAULTS}}

    def integers(name: str, count: int | None, least: int) -> tuple[int, ...]:
        value = values[name]
        if (not isinstance(value, (list, tuple)) or (count is not None and len(value) != count)
                or not all(_is_int(v) and v >= least for v in value)):
            length = f"{count} " if count is not None else ""
            raise ValueError(f"autoencoder config {name}: {length}integers >= {least} are needed, not {value!r}")
        return tuple(int(v) for v in value)

    def integer(name: str, least: int) -> int:
        value = values[name]
        if not _is_int(value) or value < least:
            raise ValueError(f"autoencoder config {name}: an integer >= {least} is needed, not {value!r}")
        return int(value)

    post_filter = integers("post_filter", None, 1)
    if post_filter and (len(post_filter) != 2 or post_filter[1] < 2):
        raise ValueError(f"autoencoder config post_filter: (channels, layers >= 2) or () is needed, not "
                         f"{values['post_filter']!r}")
    if not isinstance(values["detail_head"], bool):
        raise ValueError(f"autoencoder config detail_head: true or false, not {values['detail_head']!r}")
    result = DecoderConfig(
        widths=integers("widths", 3, 1), decoder_depths=integers("decoder_depths", 3, 0),
        code_dim=integer("code_dim", 1), codebook_sizes=integers("codebook_sizes", 3, 1),
        refine_stages=integer("refine_stages", 0), refine_groups=integer("refine_groups", 1),
        refine_codebook_size=integer("refine_codebook_size", 1), detail_head=values["detail_head"],
        half_depth=integer("half_depth", 1), post_filter=post_filter)
    if result.refine_stages and result.code_dim % result.refine_groups:
        raise ValueError(f"autoencoder config: code_dim {result.code_dim} is not divisible into "
                         f"{result.refine_groups} refinement groups")
    return result


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass
class BlockWeights:
    """One ConvNeXt block, prepared: the LayerNorm's affine folded into the first Linear, the layer scale into the
    second (the same function; folded in float64 and rounded to float32 once)."""
    depthwise: np.ndarray  # (7, 7, C): torch's dwconv.weight (C, 1, 7, 7) as [i, j, c]
    depthwise_bias: np.ndarray  # (C,)
    fc1: np.ndarray  # (C, 4C)
    fc1_bias: np.ndarray  # (4C,)
    fc2: np.ndarray  # (4C, C)
    fc2_bias: np.ndarray  # (C,)
    # fc1 and fc2 in bfloat16 tiles (decoderkernel.pack_bf16) where the CPU has them, for low-precision decodes;
    # and what that rounding left (`split_bf16`), for the encoder's three-pass products.
    fc1_bf16: np.ndarray | None = None
    fc2_bf16: np.ndarray | None = None
    fc1_rest: np.ndarray | None = None
    fc2_rest: np.ndarray | None = None

    def split_bf16(self) -> None:
        """Pack the remainders of fc1 and fc2 (once) where their bfloat16 tiles are packed."""
        if self.fc1_bf16 is not None and self.fc1_rest is None:
            self.fc1_rest = decoderkernel.pack_bf16(self.fc1, remainder=True)
            self.fc2_rest = decoderkernel.pack_bf16(self.fc2, remainder=True)


@dataclass
class UpsampleWeights:
    """LayerNorm2d then a 2x2 stride-2 transposed conv, as one matmul (C, 2*2*O), the norm's affine folded in;
    output columns ordered (i, j, o)."""
    matrix: np.ndarray
    bias: np.ndarray
    out_channels: int
    # The matrix with its columns zero-padded to a multiple of 32 in bfloat16 tiles, and that bias, where the CPU
    # has them, for low-precision decodes; with what rounding left (three passes) for the RGB output.
    bf16: np.ndarray | None = None
    bf16_bias: np.ndarray | None = None
    bf16_rest: np.ndarray | None = None
    # The remainders for the encoder's three passes (`split_bf16`: its context path's upsamplings, whose output
    # chooses codes against torch's float32), where the encoder packed them; the decoder's one pass never uses them.
    split_rest: np.ndarray | None = None

    def split_bf16(self) -> None:
        """Pack the matrix's remainders for three-pass products (once), where its bfloat16 tiles are packed."""
        if self.bf16 is not None and self.split_rest is None:
            padded, _ = decoderkernel.pad_columns(self.matrix, self.bias)
            self.split_rest = decoderkernel.pack_bf16(padded, remainder=True)


@dataclass
class Conv3x3Weights:
    """One of the post-filter's 3x3 convs: weight (3, 3, Cin, Cout) (torch's (Cout, Cin, 3, 3) transposed)."""
    weight: np.ndarray
    bias: np.ndarray
    # In bfloat16 tiles with the bias padded to match (decoderkernel.pack_conv3x3_bf16), where the CPU has them.
    bf16: np.ndarray | None = None
    bf16_bias: np.ndarray | None = None

    @property
    def matrix(self) -> np.ndarray:
        """(9 Cin, Cout), rows (i, j, cin): the taps stacked (a view)."""
        return self.weight.reshape(-1, self.weight.shape[3])


@dataclass
class DecoderWeights:
    codebooks: list[np.ndarray]  # top, mid, bottom: (K, D)
    stage_codebooks: list[list[np.ndarray]]  # per refinement stage, per group: (K, D / G)
    top_proj: np.ndarray  # (D, w3): the top codes' 1x1 projection
    top_proj_bias: np.ndarray
    top_blocks: list[BlockWeights]
    top_up: UpsampleWeights
    mid_proj_codes: np.ndarray  # (D, w2): the mid codes' rows of the projection of [mid codes, c2]
    mid_proj_context: np.ndarray  # (w2, w2): c2's rows
    mid_proj_bias: np.ndarray
    mid_absent_projected: np.ndarray  # (w2,): the 'absent' mid vector's projection + bias
    mid_blocks: list[BlockWeights]
    mid_up: UpsampleWeights
    dec_in_codes: np.ndarray  # (D, w1): the bottom vector's rows of the projection of [bottom vector, c1]
    dec_in_context: np.ndarray  # (w1, w1): c1's rows
    dec_in_bias: np.ndarray
    bottom_absent_projected: np.ndarray  # (w1,): the 'absent' bottom vector's projection + bias
    quarter_blocks: list[BlockWeights]
    half_up: UpsampleWeights
    half_blocks: list[BlockWeights]
    to_rgb: UpsampleWeights
    detail: np.ndarray | None  # (w1, 48): detail head's 1x1 conv, columns (colour, i, j) as PixelShuffle(4) reads
    detail_bias: np.ndarray | None
    post_filter: list[Conv3x3Weights]


def _f32(array) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


class _State:
    """The state dict's float arrays, in float64 for folding, each checked to be there with the shape wanted."""

    def __init__(self, state: Mapping[str, np.ndarray]) -> None:
        if not isinstance(state, Mapping):
            raise ValueError(f"the state must be a dict of numpy arrays, not {type(state).__name__}")
        self.state = state

    def __call__(self, name: str, *shape: int | None) -> np.ndarray:
        if name not in self.state:
            raise ValueError(f"the autoencoder state has no {name} (does it match its config?)")
        array = np.asarray(self.state[name])
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"state {name}: floats are needed, not {array.dtype}")
        if array.ndim != len(shape) or any(want is not None and have != want
                                           for have, want in zip(array.shape, shape)):
            wanted = ", ".join("any" if want is None else str(want) for want in shape)
            raise ValueError(f"state {name}: shape ({wanted}) is needed for this config, not {array.shape}")
        return array.astype(np.float64)

    def has(self, name: str) -> bool:
        return name in self.state


def _block_weights(state: _State, prefix: str, channels: int) -> BlockWeights:
    c = channels
    fc1 = state(f"{prefix}.pwconv1.weight", 4 * c, c).T  # (C, 4C)
    norm_weight, norm_bias = state(f"{prefix}.norm.weight", c), state(f"{prefix}.norm.bias", c)
    # No layer scale where the model was made with layer_scale_init 0.
    gamma = state(f"{prefix}.gamma", c) if state.has(f"{prefix}.gamma") else np.ones(c)
    block = BlockWeights(
        depthwise=_f32(state(f"{prefix}.dwconv.weight", c, 1, 7, 7).reshape(c, 7, 7).transpose(1, 2, 0)),
        depthwise_bias=_f32(state(f"{prefix}.dwconv.bias", c)),
        fc1=_f32(norm_weight[:, None] * fc1),
        fc1_bias=_f32(norm_bias @ fc1 + state(f"{prefix}.pwconv1.bias", 4 * c)),
        fc2=_f32(state(f"{prefix}.pwconv2.weight", c, 4 * c).T * gamma[None, :]),
        fc2_bias=_f32(state(f"{prefix}.pwconv2.bias", c) * gamma))
    if decoderkernel.bf16_available() and decoderkernel.bf16_shape_ok(block.fc1) and \
            decoderkernel.bf16_shape_ok(block.fc2):
        block.fc1_bf16, block.fc2_bf16 = decoderkernel.pack_bf16(block.fc1), decoderkernel.pack_bf16(block.fc2)
    return block


def _upsample_weights(state: _State, norm: str, conv: str, channels: int, out_channels: int) -> UpsampleWeights:
    kernel = state(conv + ".weight", channels, out_channels, 2, 2)
    matrix = kernel.transpose(0, 2, 3, 1).reshape(channels, 4 * out_channels)
    norm_weight, norm_bias = state(norm + ".weight", channels), state(norm + ".bias", channels)
    bias = norm_bias @ matrix + np.tile(state(conv + ".bias", out_channels), 4)
    layer = UpsampleWeights(_f32(norm_weight[:, None] * matrix), _f32(bias), out_channels)
    if decoderkernel.bf16_available() and channels % 32 == 0:
        padded, layer.bf16_bias = decoderkernel.pad_columns(layer.matrix, layer.bias)
        layer.bf16 = decoderkernel.pack_bf16(padded)
        # The RGB output (3 channels) in three passes: about 16 bits where one pass has 8, at little cost.
        layer.bf16_rest = decoderkernel.pack_bf16(padded, remainder=True) if out_channels < 32 else None
    return layer


def _conv1x1(state: _State, name: str, in_channels: int, out_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """A 1x1 conv as (in, out) matrix and bias, in float64."""
    kernel = state(name + ".weight", out_channels, in_channels, 1, 1)
    return kernel.reshape(out_channels, in_channels).T, state(name + ".bias", out_channels)


def prepare_weights(state: Mapping[str, np.ndarray], config: DecoderConfig) -> DecoderWeights:
    """The autoencoder's state dict (numpy arrays, any float type) -> the decoder's float32 weights in the layouts
    the layers below use. ValueError where the state does not match the config."""
    get = _State(state)
    w1, w2, w3 = config.widths
    dec3, dec2, dec1 = config.decoder_depths
    d = config.code_dim
    half = max(w1 // 2, 16)  # as HierarchicalVQVAE
    absent = get("absent", 2, d)
    top_proj, top_proj_bias = _conv1x1(get, "context_top.proj", d, w3)
    mid_proj, mid_proj_bias = _conv1x1(get, "context_mid.proj", d + w2, w2)
    dec_in, dec_in_bias = _conv1x1(get, "dec_in", d + w1, w1)
    detail, detail_bias = _conv1x1(get, "detail.0", w1, 48) if config.detail_head else (None, None)
    post_filter = []
    if config.post_filter:
        channels, layers = config.post_filter
        sizes = [3] + [channels] * (layers - 1) + [3]
        for index, (cin, cout) in enumerate(zip(sizes[:-1], sizes[1:])):
            kernel = get(f"post_filter.convs.{index}.weight", cout, cin, 3, 3)
            layer = Conv3x3Weights(_f32(kernel.transpose(2, 3, 1, 0)),
                                   _f32(get(f"post_filter.convs.{index}.bias", cout)))
            # The first layer (the picture as input) stays float32: in bfloat16 it needed three passes to keep the
            # pixels and then took longer than the float32 kernel.
            if decoderkernel.bf16_available() and cin % 32 == 0:
                layer.bf16, layer.bf16_bias = decoderkernel.pack_conv3x3_bf16(layer.weight, layer.bias)
            post_filter.append(layer)
    group_dim = d // config.refine_groups if config.refine_stages else 0
    return DecoderWeights(
        codebooks=[_f32(get(f"quantisers.{level}.codebook", size, d))
                   for level, size in enumerate(config.codebook_sizes)],
        stage_codebooks=[[_f32(get(f"refiners.{stage}.quantisers.{group}.codebook", config.refine_codebook_size,
                                   group_dim))
                          for group in range(config.refine_groups)] for stage in range(config.refine_stages)],
        top_proj=_f32(top_proj), top_proj_bias=_f32(top_proj_bias),
        top_blocks=[_block_weights(get, f"context_top.blocks.{i}", w3) for i in range(dec3)],
        top_up=_upsample_weights(get, "context_top.up.norm", "context_top.up.conv", w3, w2),
        mid_proj_codes=_f32(mid_proj[:d]), mid_proj_context=_f32(mid_proj[d:]), mid_proj_bias=_f32(mid_proj_bias),
        mid_absent_projected=_f32(absent[0] @ mid_proj[:d] + mid_proj_bias),
        mid_blocks=[_block_weights(get, f"context_mid.blocks.{i}", w2) for i in range(dec2)],
        mid_up=_upsample_weights(get, "context_mid.up.norm", "context_mid.up.conv", w2, w1),
        dec_in_codes=_f32(dec_in[:d]), dec_in_context=_f32(dec_in[d:]), dec_in_bias=_f32(dec_in_bias),
        bottom_absent_projected=_f32(absent[1] @ dec_in[:d] + dec_in_bias),
        quarter_blocks=[_block_weights(get, f"dec1.{i}", w1) for i in range(dec1)],
        half_up=_upsample_weights(get, "dec_up.norm", "dec_up.conv", w1, half),
        half_blocks=[_block_weights(get, "dec_half", half)]
        + [_block_weights(get, f"dec_half_more.{i}", half) for i in range(config.half_depth - 1)],
        to_rgb=_upsample_weights(get, "to_rgb.0", "to_rgb.1", half, 3),
        detail=None if detail is None else _f32(detail), detail_bias=None if detail is None else _f32(detail_bias),
        post_filter=post_filter)


# --- running: threads and timing ----------------------------------------------------------------------------

class _Run:
    """One decode's settings, handed to the layers: the executor bands of rows are shared out over (None: the
    calling thread), whether to use the C kernels, the caller's timer if any, and whether the ConvNeXt blocks'
    Linears may run in bfloat16 (where their weights were packed for it), or in three bfloat16 passes (where
    their remainders were too)."""

    def __init__(self, pool: ThreadPoolExecutor | None, kernels: bool, timer: Timer | None,
                 bf16: bool = False, split_bf16: bool = False) -> None:
        self.pool, self.kernels, self.timer, self.bf16 = pool, kernels, timer, bf16
        self.split_bf16 = split_bf16  # blocks with remainders packed: three-pass products (float32 otherwise)


    def each(self, function: Callable[[int], None], items: Sequence[int]) -> None:
        if self.pool is None:
            for item in items:
                function(item)
        else:
            list(self.pool.map(function, items))  # list(): re-raises a worker's exception

    def laps(self, prefix: str = "") -> "_Laps":
        return _Laps(self.timer, prefix)


class _Laps:
    """A stopwatch for a timer: lap(name) reports the seconds since the previous lap (or since it was made) as
    prefix + name. Does nothing without a timer."""

    def __init__(self, timer: Timer | None, prefix: str) -> None:
        self.timer, self.prefix = timer, prefix
        self.last = time.perf_counter() if timer is not None else 0.0

    def __call__(self, name: str) -> None:
        if self.timer is not None:
            now = time.perf_counter()
            self.timer(self.prefix + name, now - self.last)
            self.last = now


# --- layers (float32, channels last: an activation is (H, W, C), so per-position Linears are matmuls) ---------

def chunk_positions(channels: int) -> int:
    return CHUNK_POSITIONS * max(1, 128 // channels)


def gelu_(x: np.ndarray) -> np.ndarray:
    """Exact GELU, x Phi(x), in plain numpy, in place on a contiguous float32 array, GELU_CHUNK elements at a time
    (the formula: GELU_HALF_A's comment)."""
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
        for a in (a4, a3, a2, a1):
            p += a
            p *= tt
        np.multiply(mag, -0.5, out=tt)  # p = erfc(|x|/sqrt2) / (2 exp(-x^2/2)), now times exp(-x^2/2) |x|
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


def conv1x1(x: np.ndarray, matrix: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """A 1x1 conv (a per-position Linear): (..., Cin) @ (Cin, Cout) + bias."""
    out = x.reshape(-1, x.shape[-1]) @ matrix
    if bias is not None:
        out += bias
    return out.reshape(*x.shape[:-1], matrix.shape[1])


def project_codes_and_context(vectors: np.ndarray | None, context: np.ndarray, codes_matrix: np.ndarray,
                              context_matrix: np.ndarray, bias: np.ndarray,
                              absent_projected: np.ndarray) -> np.ndarray:
    """The 1x1 conv of [a level's code vectors, the context from above] (torch's, of their concatenation) as the
    sum of the two parts' matmuls; for an absent level (vectors None) its 'absent' vector's projection + bias,
    the same at every position, computed once (absent_projected)."""
    x = conv1x1(context, context_matrix)
    x += absent_projected if vectors is None else conv1x1(vectors, codes_matrix, bias)
    return x


def upsample(x: np.ndarray, layer: UpsampleWeights, run: _Run) -> np.ndarray:
    """LayerNorm2d + ConvTranspose2d(k=2, s=2) on (H, W, C) -> (2H, 2W, O): in bfloat16 on AMX tiles (the C
    kernel, bands of rows on `run`'s threads) where the decode is low-precision and the weights were packed, or in
    three bfloat16 passes where the run splits (the encoder) and the remainders were packed, else in float32
    numpy."""
    h, w, c = x.shape
    # A low-precision decode's one pass (three for the RGB output), or the encoder's three passes where packed.
    rest = layer.bf16_rest if run.bf16 else layer.split_rest if run.split_bf16 else None
    if layer.bf16 is not None and (run.bf16 or rest is not None):
        x = np.ascontiguousarray(x)
        out = np.empty((2 * h, 2 * w, layer.out_channels), np.float32)
        band_rows = max(1, chunk_positions(c) // w)

        def band(top: int) -> None:
            lap = run.laps("upsampling: ")
            decoderkernel.upsample_bf16(x, layer.bf16, layer.bf16_bias, out, top, min(band_rows, h - top), rest)
            lap("LayerNorm + 2x2 transposed conv in bfloat16 (C)")

        run.each(band, range(0, h, band_rows))
        return out
    out = normalise_rows_(x.reshape(-1, c).copy()) @ layer.matrix
    out += layer.bias
    o = layer.out_channels
    return out.reshape(h, w, 2, 2, o).transpose(0, 2, 1, 3, 4).reshape(2 * h, 2 * w, o)


def convnext_block(x: np.ndarray, block: BlockWeights, run: _Run) -> np.ndarray:
    """x + MLP(LayerNorm(dwconv7x7(x))) for (H, W, C), a band of rows at a time, with the C kernels or in plain
    numpy as `run` says."""
    return (convnext_block_kernels if run.kernels else convnext_block_numpy)(x, block, run)


def convnext_block_kernels(x: np.ndarray, block: BlockWeights, run: _Run) -> np.ndarray:
    """convnext_block with the C kernels: the depthwise conv + LayerNorm, and the first Linear's bias + GELU (the
    matmuls in numpy). The kernels release the GIL, so the bands run at once on `run`'s threads."""
    x = np.ascontiguousarray(x)
    h, w, c = x.shape
    out = np.empty_like(x)
    band_rows = max(1, chunk_positions(c) // w)

    def band(top: int) -> None:
        rows = min(band_rows, h - top)
        lap = run.laps("ConvNeXt blocks: ")
        y = decoderkernel.depthwise7x7_layernorm(x, block.depthwise, block.depthwise_bias, first_row=top, rows=rows)
        lap("depthwise 7x7 + LayerNorm (C)")
        split = run.split_bf16 and block.fc1_rest is not None
        if split or (run.bf16 and block.fc1_bf16 is not None):
            decoderkernel.mlp_bf16(y.reshape(rows * w, c), block.fc1_bf16, block.fc1_bias, block.fc2_bf16,
                                   block.fc2_bias, x[top:top + rows].reshape(rows * w, c),
                                   out[top:top + rows].reshape(rows * w, c),
                                   block.fc1_rest if split else None, block.fc2_rest if split else None)
            lap(f"MLP + residual add in {'three ' if split else ''}bfloat16 (C)")
            return
        hidden = y.reshape(rows * w, c) @ block.fc1
        lap("MLP matmuls + second bias")
        decoderkernel.bias_gelu_(hidden, block.fc1_bias)
        lap("bias + GELU (C)")
        y = hidden @ block.fc2
        y += block.fc2_bias
        lap("MLP matmuls + second bias")
        np.add(x[top:top + rows], y.reshape(rows, w, c), out=out[top:top + rows])
        lap("residual add")

    run.each(band, range(0, h, band_rows))
    return out


def convnext_block_numpy(x: np.ndarray, block: BlockWeights, run: _Run) -> np.ndarray:
    """convnext_block in plain numpy, on a zero-padded copy of x whose rows are read as one flat array (positions
    in the 6 padding columns of each row are computed too, and dropped)."""
    h, w, c = x.shape
    padded_width = w + 6
    # Zero padding of 3 on each side, and one more row at the bottom so the last band's shifted slices stay inside.
    padded = np.zeros((h + 7, padded_width, c), np.float32)
    padded[3:3 + h, 3:3 + w] = x
    flat_padded = padded.reshape(-1, c)
    out = np.empty_like(x)
    band_rows = max(1, chunk_positions(c) // padded_width)

    def band(top: int) -> None:
        rows = min(band_rows, h - top)
        lap = run.laps("ConvNeXt blocks: ")
        y = depthwise7x7_numpy(flat_padded, padded_width, top * padded_width,
                               np.empty((rows * padded_width, c), np.float32), block)
        lap("depthwise 7x7 (einsum)")
        normalise_rows_(y)
        lap("LayerNorm")
        hidden = y @ block.fc1
        hidden += block.fc1_bias
        lap("MLP matmuls + biases")
        gelu_(hidden)
        lap("GELU")
        y = hidden @ block.fc2
        y += block.fc2_bias
        lap("MLP matmuls + biases")
        np.add(x[top:top + rows], y.reshape(rows, padded_width, c)[:, :w], out=out[top:top + rows])
        lap("residual add")

    run.each(band, range(0, h, band_rows))
    return out


def depthwise7x7_numpy(flat_padded: np.ndarray, padded_width: int, start: int, out: np.ndarray,
                       block: BlockWeights) -> np.ndarray:
    """The depthwise 7x7 conv (+ bias) for len(out) consecutive positions of the padded grid from `start`
    (row-major; positions whose column is past the image are garbage), DEPTHWISE_POSITIONS at a time.

    Per kernel row i, one einsum sums the 7 horizontal taps: position p's taps are the 7 x C floats from
    flat_padded[p + i * padded_width] on, contiguous, so a strided view (positions, 7, C) holds them all without a
    copy. Measured 1.5-1.8x faster than 49 shifted multiplies and adds (two numpy passes per tap)."""
    channels = out.shape[1]
    row_stride, item = flat_padded.strides
    kernel = block.depthwise
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


def post_filter_correction(rgb: np.ndarray, layers: list[Conv3x3Weights], run: _Run) -> np.ndarray:
    """The post-filter's correction f(rgb) (its 3x3 convs, GELU between them), with the C kernels or in plain
    numpy as `run` says."""
    if run.kernels:
        return post_filter_kernels(rgb, layers, run)
    x = rgb
    for index, layer in enumerate(layers):
        x = conv3x3_numpy(x, layer, index < len(layers) - 1, run)
    return x


def post_filter_kernels(rgb: np.ndarray, layers: list[Conv3x3Weights], run: _Run) -> np.ndarray:
    """The post-filter's correction with the C kernel, all layers a band of rows at a time: for a band of output
    rows, layer k computes those rows and the L-1-k rows on each side that the layers after it read, from the rows
    of layer k-1 held for the band (given to the kernel as its whole input: its zero padding then falls only at
    the image's top and bottom, where it is the image's). The same sums as one layer at a time over the whole
    image, but the intermediates stay in cache instead of full-resolution tables (50 MB each at kodim01's size
    and 32 channels); the halo rows cost a little more arithmetic."""
    h, w, _ = rgb.shape
    out = np.empty((h, w, layers[-1].weight.shape[3]), np.float32)
    band_rows = max(1, KERNEL_POST_FILTER_POSITIONS // w)
    last = len(layers) - 1

    def band(top: int) -> None:
        bottom = min(h, top + band_rows)
        x, x_top = rgb, 0  # layer k-1's rows x_top .. x_top + len(x) - 1
        for index, layer in enumerate(layers):
            halo = last - index
            first, stop = max(0, top - halo), min(h, bottom + halo)
            cin, cout = layer.weight.shape[2:]
            rows = out[top:bottom] if index == last else np.empty((stop - first, w, cout), np.float32)
            lap = run.laps("post-filter: ")
            bf16 = run.bf16 and layer.bf16 is not None
            if bf16:
                decoderkernel.conv3x3_bf16(x, layer.bf16, layer.bf16_bias, rows, first_row=first - x_top,
                                           gelu=index < last)
            else:
                decoderkernel.conv3x3(x, layer.weight, layer.bias, rows, first_row=first - x_top, gelu=index < last)
            lap(f"3x3 conv {cin}->{cout}{' + GELU' if index < last else ''}{' in bfloat16' if bf16 else ''} (C)")
            x, x_top = rows, first

    run.each(band, range(0, h, band_rows))
    return out


def conv3x3_numpy(x: np.ndarray, layer: Conv3x3Weights, gelu: bool, run: _Run) -> np.ndarray:
    """A 3x3 conv, zero padding 1, on (H, W, Cin) -> (H, W, Cout), optionally GELU after, in plain numpy, in bands
    of rows of the flattened padded input (tap (i, j) of position p is position p + i * padded_width + j, so every
    tap's inputs for a band are one contiguous slice). Three ways, by shape (each measured fastest for its layer):
    Cin < 9 (the filter's first conv, 3 -> 32): an im2col (positions, 9 Cin), then one matmul;
    Cout < 9 (its last, 32 -> 3): one matmul (positions, Cin) @ (Cin, 9 Cout), then the taps' outputs summed at
    their shifts (a 3-column matmul runs at a fraction of BLAS's speed);
    otherwise (32 -> 32): 9 matmuls of the shifted slices, accumulated (no im2col copy)."""
    h, w, c = x.shape
    padded_width = w + 2
    padded = np.zeros((h + 3, padded_width, c), np.float32)
    padded[1:1 + h, 1:1 + w] = x
    flat_padded = padded.reshape(-1, c)
    matrix, bias = layer.matrix, layer.bias
    out_channels = matrix.shape[1]
    out = np.empty((h, w, out_channels), np.float32)
    band_rows = max(1, CONV3X3_POSITIONS // padded_width)
    tap_matrices = layer.weight.reshape(9, c, out_channels)
    offsets = [(tap // 3) * padded_width + tap % 3 for tap in range(9)]
    if out_channels < 9:  # (Cin, 9 Cout): column block k is tap k's (Cin, Cout)
        all_taps = np.ascontiguousarray(tap_matrices.transpose(1, 0, 2).reshape(c, -1))

    def band(top: int) -> None:
        lap = run.laps("post-filter: ")
        rows = min(band_rows, h - top)
        count = rows * padded_width
        start = top * padded_width
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
        lap("3x3 convs (copies, matmuls, sums)")
        if gelu:
            gelu_(y)
            lap("GELU")
        out[top:top + rows] = y.reshape(rows, padded_width, out_channels)[:, :w]
        lap("3x3 convs (copies, matmuls, sums)")

    run.each(band, range(0, h, band_rows))
    return out


# --- the decoder's parts --------------------------------------------------------------------------------------

def top_context(weights: DecoderWeights, top: np.ndarray, run: _Run) -> np.ndarray:
    """Top codes (h, w) -> the context c2 (2h, 2w, w2) (HierarchicalVQVAE.context_top of the code vectors)."""
    x = conv1x1(weights.codebooks[0][top], weights.top_proj, weights.top_proj_bias)
    for block in weights.top_blocks:
        x = convnext_block(x, block, run)
    return upsample(x, weights.top_up, run)


def mid_context(weights: DecoderWeights, mid: np.ndarray | None, c2: np.ndarray, run: _Run) -> np.ndarray:
    """Mid codes (2h, 2w), or None for the 'absent' mid vector, and c2 -> the context c1 (4h, 4w, w1)
    (context_mid of [mid vectors, c2])."""
    x = project_codes_and_context(None if mid is None else weights.codebooks[1][mid], c2, weights.mid_proj_codes,
                                  weights.mid_proj_context, weights.mid_proj_bias, weights.mid_absent_projected)
    for block in weights.mid_blocks:
        x = convnext_block(x, block, run)
    return upsample(x, weights.mid_up, run)


def context_path(weights: DecoderWeights, codes: list[np.ndarray], run: _Run) -> np.ndarray:
    """Top codes (h, w) and mid codes (2h, 2w) if given -> the context c1 (4h, 4w, w1) of the /4 stage (the
    'absent' mid vector where there are no mid codes). The encoder runs the same two halves (npencoder)."""
    return mid_context(weights, codes[1] if len(codes) > 1 else None, top_context(weights, codes[0], run), run)


def bottom_vector(weights: DecoderWeights, codes: list[np.ndarray]) -> np.ndarray:
    """Bottom codes (4h, 4w) and a prefix of the refinement stages' codes (G, 4h, 4w) each -> the quantised bottom
    latent (4h, 4w, D): the bottom codebook's vector plus each stage's, a stage's vector the concatenation of
    its groups' (as HierarchicalVQVAE.bottom_vector and ProductQuantiser.lookup)."""
    total = weights.codebooks[2][codes[0]]
    for stage_codes, group_books in zip(codes[1:], weights.stage_codebooks):
        total += np.concatenate([book[stage_codes[g]] for g, book in enumerate(group_books)], axis=-1)
    return total


def quarter_stage(weights: DecoderWeights, codes: list[np.ndarray], c1: np.ndarray, run: _Run) -> np.ndarray:
    """The bottom vector (or the 'absent' one where there are no bottom codes) and the context c1 -> the /4
    features (4h, 4w, w1)."""
    bottom = bottom_vector(weights, codes[2:]) if len(codes) > 2 else None
    x = project_codes_and_context(bottom, c1, weights.dec_in_codes, weights.dec_in_context, weights.dec_in_bias,
                                  weights.bottom_absent_projected)
    for block in weights.quarter_blocks:
        x = convnext_block(x, block, run)
    return x


def half_stage(weights: DecoderWeights, quarter: np.ndarray, run: _Run) -> np.ndarray:
    """/4 features -> 2x upsampling -> the /2 ConvNeXt blocks."""
    x = upsample(quarter, weights.half_up, run)
    for block in weights.half_blocks:
        x = convnext_block(x, block, run)
    return x


def to_rgb(weights: DecoderWeights, half: np.ndarray, quarter: np.ndarray, run: _Run) -> np.ndarray:
    """/2 features (2x to RGB) plus the detail head's 4x4 blocks from the /4 features -> RGB (16h, 16w, 3),
    mapped from [-1, 1] to [0, 1]."""
    rgb = upsample(half, weights.to_rgb, run)
    if weights.detail is not None:
        h, w = quarter.shape[:2]
        detail = conv1x1(quarter, weights.detail, weights.detail_bias)  # (h, w, 48): channel 16 colour + 4 i + j
        rgb += detail.reshape(h, w, 3, 4, 4).transpose(0, 3, 1, 4, 2).reshape(4 * h, 4 * w, 3)
    rgb += 1
    rgb *= 0.5
    return rgb


def decode_prepared(weights: DecoderWeights, codes: list[np.ndarray], run: _Run,
                    c1: np.ndarray | None = None) -> np.ndarray:
    """Checked code grids (a prefix of [top, mid, bottom, stages...], no batch axis) -> RGB (16h, 16w, 3); c1: the
    context path's output for these top and mid codes where computed already."""
    lap = run.laps()
    c1 = context_path(weights, codes[:2], run) if c1 is None else c1
    lap(PARTS[0])
    quarter = quarter_stage(weights, codes, c1, run)
    lap(PARTS[1])
    half = half_stage(weights, quarter, run)
    lap(PARTS[2])
    rgb = to_rgb(weights, half, quarter, run)
    lap(PARTS[3])
    if weights.post_filter:
        rgb += post_filter_correction(rgb, weights.post_filter, run)
    lap(PARTS[4])
    return rgb


# --- the public interface -------------------------------------------------------------------------------------

class _Network:
    """What NumpyDecoder and npencoder.NumpyEncoder share: the checked config, the choice of the C kernels, and
    Python threads kept per thread count (one executor each) until `close()` or the end of a `with` block."""

    def __init__(self, config: Mapping, kernels: bool | None, thread_name: str) -> None:
        self.config = decoder_config(config)
        if kernels and not decoderkernel.available():
            raise RuntimeError("hvqcodec._decoderkernel is not built: use kernels=None or False")
        self.kernels = decoderkernel.available() if kernels is None else bool(kernels)
        self._thread_name = thread_name
        self._pools: dict[int, ThreadPoolExecutor] = {}
        self._pools_lock = threading.Lock()

    def close(self) -> None:
        """Stop the threads kept (a later call starts new ones)."""
        with self._pools_lock:
            pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, threads: int, timer: Timer | None = None, bf16: bool = False, split_bf16: bool = False) -> _Run:
        """How a call runs: on `threads` Python threads (1: the calling thread only), with the kernels or not, the
        ConvNeXt blocks' Linears in bfloat16 or not."""
        if not _is_int(threads) or threads < 1:
            raise ValueError(f"threads: a positive integer is needed, not {threads!r}")
        pool = None
        if threads > 1:
            with self._pools_lock:
                if threads not in self._pools:
                    self._pools[threads] = ThreadPoolExecutor(int(threads), thread_name_prefix=self._thread_name)
                pool = self._pools[threads]
        return _Run(pool, self.kernels, timer, bf16 and self.kernels, split_bf16 and self.kernels)


class NumpyDecoder(_Network):
    """The autoencoder's decoder in numpy float32 (this module's docstring).

    config: the autoencoder config as `AutoencoderConfig.to_dict()` gives it (an exported weights file's
    "config"); state: the autoencoder's state dict as numpy arrays (any float type; float16 in the shipped files),
    prepared once here. ValueError for a config this decoder does not implement, or a state that does not match
    it. kernels: whether to use the C kernels of hvqcodec.decoderkernel; None: where they are built.

    Threads for `decode` are kept (one executor per thread count asked for) until `close()` (or the end of a
    `with` block, or the object's collection)."""

    def __init__(self, config: Mapping, state: Mapping[str, np.ndarray], kernels: bool | None = None) -> None:
        super().__init__(config, kernels, "hvqcodec-npdecoder")
        self.weights = prepare_weights(state, self.config)

    @property
    def num_streams(self) -> int:
        """Code grids of a full tile: top, mid, bottom and each refinement stage."""
        return self.config.num_streams

    def decode(self, codes: Sequence[np.ndarray], threads: int = 2, timer: Timer | None = None,
               context: np.ndarray | None = None, low_precision: bool = False) -> np.ndarray:
        """One tile's code grids, no batch axis: a prefix (at least the top) of [top (h, w), mid (2h, 2w), bottom
        (4h, 4w), refinement stages (G, 4h, 4w) each], any integer type -> the picture (16h, 16w, 3) float32, about
        [0, 1], not clamped (torch's `HierarchicalVQVAE.decode` output, channels last). Missing mid or bottom
        levels take the learned 'absent' vectors, missing stages are not added, as there.

        threads: Python threads that share out bands of rows (1: the calling thread only). timer, for
        measurements: timer(name, seconds) for each part (names in PARTS, from the calling thread) and each
        operation in the ConvNeXt blocks and the post-filter ("ConvNeXt blocks: ...", "post-filter: ...", from
        the thread that ran it, so overlapping where threads > 1). context: `context(codes[:2])`, computed
        earlier (the runtime computes it while the levels below are range decoded). low_precision: the /4 and /2
        ConvNeXt blocks' MLPs (the context path's too) and the post-filter's 32 -> 32 convolutions in bfloat16 where
        the CPU has AMX tiles (`low_precision_available`), as torch's bfloat16 decoder: pixels within bfloat16
        rounding of float32's; a context given must have been computed in the same precision."""
        run = self._run(threads, timer, low_precision)
        return decode_prepared(self.weights, self._checked_codes(codes), run, context)

    @property
    def low_precision_available(self) -> bool:
        """Whether `decode(low_precision=True)` runs bfloat16 here (else it is float32 throughout)."""
        weights = self.weights
        blocks = weights.top_blocks + weights.mid_blocks + weights.quarter_blocks + weights.half_blocks
        return self.kernels and any(block.fc1_bf16 is not None for block in blocks)

    def context(self, codes: Sequence[np.ndarray], threads: int = 1, low_precision: bool = False) -> np.ndarray:
        """The context path's output for a tile's top and mid codes (the first two grids of `codes`): what `decode`
        of any codes with that top and mid starts from (in the same precision). The same floats on any number of
        threads."""
        return context_path(self.weights, self._checked_codes(codes[:2]), self._run(threads, bf16=low_precision))

    def _checked_codes(self, codes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The grids as integer arrays, checked: shapes that fit the top's, indices within their codebooks."""
        config = self.config
        if isinstance(codes, np.ndarray) or not 1 <= len(codes) <= config.num_streams:
            raise ValueError(f"decode needs a list of the top code grid and optionally up to "
                             f"{config.num_streams - 1} more")
        grids = [np.asarray(c) for c in codes]
        if grids[0].ndim != 2 or 0 in grids[0].shape:
            raise ValueError(f"top codes: a non-empty (h, w) grid is needed, not shape {grids[0].shape}")
        h, w = grids[0].shape
        levels = [("top", (h, w), config.codebook_sizes[0]), ("mid", (2 * h, 2 * w), config.codebook_sizes[1]),
                  ("bottom", (4 * h, 4 * w), config.codebook_sizes[2])]
        stages = [(f"refinement stage {stage + 1}", (config.refine_groups, 4 * h, 4 * w),
                   config.refine_codebook_size) for stage in range(config.refine_stages)]
        for grid, (name, shape, size) in zip(grids, levels + stages):
            if not np.issubdtype(grid.dtype, np.integer):
                raise ValueError(f"{name} codes: integers are needed, not {grid.dtype}")
            if grid.shape != shape:
                raise ValueError(f"{name} codes: shape {shape} is needed (top {h}x{w}), not {grid.shape}")
            low, high = int(grid.min()), int(grid.max())
            if low < 0 or high >= size:
                raise ValueError(f"{name} codes: indices must be in 0..{size - 1}, found {low}..{high}")
        return grids


def to_uint8(picture: np.ndarray) -> np.ndarray:
    """The decoder's picture -> bytes as `Codec.decode_codes` makes them from torch's (clamp to [0, 1], times 255,
    round half to even, to uint8), in the picture's float type, so the same float gives the same byte."""
    picture = np.asarray(picture)
    if not np.issubdtype(picture.dtype, np.floating):
        raise ValueError(f"to_uint8 needs a float picture, not {picture.dtype}")
    scaled = np.clip(picture, 0, 1)  # a new array, of the picture's float type
    scaled *= picture.dtype.type(255)
    np.rint(scaled, out=scaled)  # half to even, as torch.round
    return scaled.astype(np.uint8)

"""The torch-free runtime's decoder kernels (hvqcodec/_decoderkernel.c, docs/DESIGN.md section 8): the parts of
the autoencoder's decoder that plain numpy runs slowly, in C, on float32 channels-last (H, W, C) arrays.

- `depthwise7x7_layernorm`: a ConvNeXt block's depthwise 7x7 convolution + bias, then LayerNorm over channels;
- `bias_gelu_`: the block's first Linear's bias + exact (erf) GELU, in place;
- `conv3x3`: the post-filter's 3x3 convolutions + bias, optionally GELU;
- `png_filter`: PNG's adaptive row filters for the decoded picture (`pngwrite`);
- `pack_bf16`, `mlp_bf16` and `conv3x3_bf16`: a ConvNeXt block's MLP (Linear, GELU, Linear) and residual add,
  and the post-filter's 32 -> 32 convolutions, in bfloat16 on AMX tiles, where the CPU has them
  (`bf16_available()`): what the decoder runs when asked for low precision.

The convolutions compute a band of output rows (`first_row` and the output's first dimension), and every kernel
runs without the GIL, so Python threads can share an image's rows. This module needs numpy only (no torch);
the C module is optional (no C compiler at install): `available()` says whether it is here. Arguments are
checked here (ValueError) and again in C.
"""
from __future__ import annotations

import math

import numpy as np

try:
    from . import _decoderkernel
except ImportError:  # built without a C compiler: the numpy decoder runs plain numpy
    _decoderkernel = None

LAYER_NORM_EPS = 1e-6


def available() -> bool:
    """Whether the C module was built and imports."""
    return _decoderkernel is not None


def path() -> str:
    """The build of the kernels in use: "avx512" (vectors of 16 floats), "avx2" (8), "baseline" (4: the
    compiler's default instruction set) or "plain" (scalar C). A vector build falls back to plain C where the
    vectorised channel count is not a multiple of its width."""
    return _module().path()


def paths() -> list[str]:
    """The builds this CPU runs, best first (tests run each)."""
    return list(_module().paths())


def use_path(name: str) -> str:
    """Use another build of the kernels (tests, measurements); returns the previous one's name."""
    return _module()._use_path(name)


def _module():
    if _decoderkernel is None:
        raise RuntimeError("hvqcodec._decoderkernel is not built (no C compiler at install?)")
    return _decoderkernel


def _check_floats(name: str, array, ndim: int, writable: bool = False) -> None:
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{name}: a numpy array is needed, not {type(array).__name__}")
    if array.dtype != np.float32:
        raise ValueError(f"{name}: float32 is needed, not {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name}: {ndim} dimensions are needed, not shape {array.shape}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name}: a C-contiguous array is needed (np.ascontiguousarray)")
    if writable and not array.flags.writeable:
        raise ValueError(f"{name}: a writable array is needed")


def _check_shape(name: str, array: np.ndarray, shape: tuple) -> None:
    """shape: None for any size on that axis."""
    if len(array.shape) != len(shape) or any(want is not None and have != want
                                             for have, want in zip(array.shape, shape)):
        wanted = ", ".join("any" if want is None else str(want) for want in shape)
        raise ValueError(f"{name}: shape ({wanted}) is needed, not {array.shape}")


def _check_vector(name: str, array, length: int) -> None:
    _check_floats(name, array, 1)
    _check_shape(name, array, (length,))


def _output_rows(name: str, x: np.ndarray, out, first_row: int, rows: int | None, channels: int) -> np.ndarray:
    """out as given (checked), or a new (rows, W, channels) array; rows default: to the bottom of x."""
    height, width = x.shape[:2]
    if out is None:
        rows = height - first_row if rows is None else rows
        if rows < 0:
            raise ValueError(f"{name}: first_row {first_row} is below the input's {height} rows")
        out = np.empty((rows, width, channels), np.float32)
    else:
        _check_floats("out", out, 3, writable=True)
        _check_shape("out", out, (None if rows is None else rows, width, channels))
        if np.may_share_memory(out, x):
            raise ValueError("out: must not share memory with x")
    if first_row < 0 or first_row + out.shape[0] > height:
        raise ValueError(f"{name}: output rows {first_row} .. {first_row + out.shape[0] - 1} are outside the "
                         f"input's {height} rows")
    return out


def depthwise7x7_layernorm(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, out: np.ndarray | None = None,
                           first_row: int = 0, rows: int | None = None, norm_weight: np.ndarray | None = None,
                           norm_bias: np.ndarray | None = None, eps: float = LAYER_NORM_EPS) -> np.ndarray:
    """A ConvNeXt block's depthwise 7x7 convolution (zero padding 3) + bias, then LayerNorm over channels.

    x: (H, W, C); kernel: (7, 7, C) (torch's dwconv.weight (C, 1, 7, 7) as kernel[i, j, c]); bias: (C,);
    norm_weight, norm_bias: the LayerNorm's affine (C,) each, or None for none (when it is folded into the next
    matmul). Computes output rows first_row .. first_row + rows - 1 into out (rows, W, C), made if None (rows
    default: to the bottom), which must not overlap x; returns it."""
    _check_floats("x", x, 3)
    channels = x.shape[2]
    _check_floats("kernel", kernel, 3)
    _check_shape("kernel", kernel, (7, 7, channels))
    _check_vector("bias", bias, channels)
    if (norm_weight is None) != (norm_bias is None):
        raise ValueError("give both norm_weight and norm_bias, or neither")
    if norm_weight is not None:
        _check_vector("norm_weight", norm_weight, channels)
        _check_vector("norm_bias", norm_bias, channels)
    if not eps > 0:
        raise ValueError(f"eps: must be positive, not {eps}")
    out = _output_rows("depthwise7x7_layernorm", x, out, first_row, rows, channels)
    _module().depthwise_layernorm(x, kernel, bias, out, first_row, norm_weight, norm_bias, eps)
    return out


def bias_gelu_(x: np.ndarray, bias: np.ndarray | None = None, start: int = 0, stop: int | None = None) -> np.ndarray:
    """x[start:stop] = gelu(x[start:stop] + bias), in place on a (rows, N) array (rows of any C-contiguous
    array, its last axis as N); exact GELU, x Phi(x), to within a few float32 roundings. bias: (N,) or None.
    Returns x."""
    if not isinstance(x, np.ndarray) or x.ndim < 1:
        raise ValueError("x: a numpy array of at least 1 dimension is needed")
    _check_floats("x", x, x.ndim, writable=True)
    table = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
    if bias is not None:
        _check_vector("bias", bias, table.shape[1])
    stop = table.shape[0] if stop is None else stop
    if not 0 <= start <= stop <= table.shape[0]:
        raise ValueError(f"bias_gelu_: rows {start} .. {stop - 1} are not a range of x's {table.shape[0]} rows")
    _module().bias_gelu(table, bias, start, stop)
    return x


def conv3x3(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, out: np.ndarray | None = None, first_row: int = 0,
            rows: int | None = None, gelu: bool = False) -> np.ndarray:
    """A 3x3 convolution (zero padding 1) + bias, then exact GELU if `gelu`, as the post-filter's.

    x: (H, W, Cin); weight: (3, 3, Cin, Cout) (torch's conv.weight (Cout, Cin, 3, 3) transposed (2, 3, 1, 0));
    bias: (Cout,). Computes output rows first_row .. first_row + rows - 1 into out (rows, W, Cout), made if
    None (rows default: to the bottom), which must not overlap x; returns it."""
    _check_floats("x", x, 3)
    _check_floats("weight", weight, 4)
    _check_shape("weight", weight, (3, 3, x.shape[2], None))
    out_channels = weight.shape[3]
    _check_vector("bias", bias, out_channels)
    out = _output_rows("conv3x3", x, out, first_row, rows, out_channels)
    _module().conv3x3(x, weight, bias, out, first_row, bool(gelu))
    return out



def bf16_available() -> bool:
    """Whether `mlp_bf16` runs here: the C module is built, and the CPU has AMX-BF16 tiles and AVX512-BF16 that the
    OS lets this process use."""
    return _decoderkernel is not None and _decoderkernel.bf16_available()


def bf16_shape_ok(matrix: np.ndarray) -> bool:
    """Whether `pack_bf16` takes a matrix of this shape: (K, N), both multiples of 32."""
    return matrix.ndim == 2 and matrix.size > 0 and matrix.shape[0] % 32 == 0 and matrix.shape[1] % 32 == 0


def pack_bf16(matrix: np.ndarray, remainder: bool = False) -> np.ndarray:
    """A Linear's (K, N) float32 matrix (`bf16_shape_ok`) -> its bfloat16 tiles for `mlp_bf16`: a flat uint16
    array, each value rounded to nearest even; for each block of 16 columns and each of 32 rows, 16 x 32 values:
    row r holds the block's rows 2r and 2r + 1 in pairs, column by column. remainder: what that rounding left of
    each value (matrix - bf16(matrix), rounded to bfloat16), for `mlp_bf16`'s three-pass products. Runs on any
    CPU."""
    _check_floats("matrix", matrix, 2)
    if not bf16_shape_ok(matrix):
        raise ValueError(f"matrix: (K, N) with K and N multiples of 32 is needed, not {matrix.shape}")
    packed = np.empty(matrix.size, np.uint16)
    _module().pack_bf16(matrix, packed, bool(remainder))
    return packed


def mlp_bf16(y: np.ndarray, fc1: np.ndarray, fc1_bias: np.ndarray, fc2: np.ndarray, fc2_bias: np.ndarray,
             residual: np.ndarray, out: np.ndarray | None = None, fc1_rest: np.ndarray | None = None,
             fc2_rest: np.ndarray | None = None) -> np.ndarray:
    """out = residual + gelu(y @ fc1 + fc1_bias) @ fc2 + fc2_bias for y and residual (P, C) float32, fc1 and fc2
    `pack_bf16` of the (C, 4C) and (4C, C) matrices: y and the hidden values rounded to bfloat16 (nearest even),
    the products summed in float32, as torch's bfloat16 matmuls; exact GELU as `bias_gelu_`. out: (P, C), made if
    None; it may be residual itself. With fc1_rest and fc2_rest (`pack_bf16(..., remainder=True)`), each product
    is split into three: hi(a) hi(b) + hi(a) lo(b) + lo(a) hi(b), a float32 value's bfloat16 halves, about 16
    significant bits rather than 8 (float32 has 24): what the encoder runs. Only where `bf16_available()`."""
    _check_floats("y", y, 2)
    positions, channels = y.shape
    _check_floats("residual", residual, 2)
    _check_shape("residual", residual, (positions, channels))
    _check_vector("fc1_bias", fc1_bias, 4 * channels)
    _check_vector("fc2_bias", fc2_bias, channels)
    if (fc1_rest is None) != (fc2_rest is None):
        raise ValueError("give both fc1_rest and fc2_rest, or neither")
    for name, packed in (("fc1", fc1), ("fc2", fc2)) + ((("fc1_rest", fc1_rest), ("fc2_rest", fc2_rest))
                                                      if fc1_rest is not None else ()):
        if not isinstance(packed, np.ndarray) or packed.dtype != np.uint16 or packed.shape != (4 * channels ** 2,):
            raise ValueError(f"{name}: pack_bf16 of a {channels}-channel block's matrix is needed")
    if out is None:
        out = np.empty_like(residual)
    else:
        _check_floats("out", out, 2, writable=True)
        _check_shape("out", out, (positions, channels))
    if not bf16_available():
        raise RuntimeError("mlp_bf16: this CPU (or OS) has no AMX bfloat16 tiles, or the C module is not built")
    _module().mlp_bf16(y, fc1, fc1_bias, fc2, fc2_bias, residual, out, fc1_rest, fc2_rest)
    return out


def pack_conv3x3_bf16(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 3x3 conv's (3, 3, Cin, Cout) weight (Cin a multiple of 32) and (Cout,) bias -> its bfloat16 tiles for
    `conv3x3_bf16` and the bias zero-padded as the tiles' columns: the (9 Cin, Cout) matrix, rows (i, j, cin), its
    columns zero-padded to a multiple of 32 (the extra outputs are computed and dropped)."""
    _check_floats("weight", weight, 4)
    padded, padded_bias = pad_columns(weight.reshape(-1, weight.shape[3]), bias)
    return pack_bf16(padded), padded_bias


def conv3x3_bf16(x: np.ndarray, packed: np.ndarray, bias: np.ndarray, out: np.ndarray | None = None,
                 first_row: int = 0, rows: int | None = None, gelu: bool = False,
                 outputs: int | None = None) -> np.ndarray:
    """`conv3x3` in bfloat16 on AMX tiles, Cin a multiple of 32: x rounded to bfloat16 (nearest even), the
    products summed in float32. packed, bias: `pack_conv3x3_bf16`'s (the columns zero-padded to a multiple of 32);
    outputs: the conv's own (default: the bias's length; out's where given). Only where `bf16_available()`."""
    _check_floats("x", x, 3)
    channels = x.shape[2]
    if channels % 32 or channels == 0:
        raise ValueError(f"conv3x3_bf16: the inputs must be a multiple of 32, not {channels}")
    _check_floats("bias", bias, 1)
    columns = bias.shape[0]
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint16 or packed.size != 9 * channels * columns:
        raise ValueError(f"packed: pack_conv3x3_bf16 of a (3, 3, {channels}, outputs) weight is needed")
    outputs = out.shape[2] if isinstance(out, np.ndarray) and out.ndim == 3 else (outputs or columns)
    if columns % 32 or not 0 < outputs <= columns < outputs + 32:
        raise ValueError(f"conv3x3_bf16: {outputs} outputs do not match the bias's {columns} padded columns")
    out = _output_rows("conv3x3_bf16", x, out, first_row, rows, outputs)
    if not bf16_available():
        raise RuntimeError("conv3x3_bf16: this CPU (or OS) has no AMX bfloat16 tiles, or the C module is not built")
    _module().conv3x3_bf16(x, packed, bias, out, first_row, bool(gelu))
    return out


def pad_columns(matrix: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A (K, N) matrix and its bias with N zero-padded to a multiple of 32 (for `pack_bf16`; the extra columns
    come out as zeros and are not written)."""
    padding = -matrix.shape[1] % 32
    return (np.ascontiguousarray(np.pad(matrix, ((0, 0), (0, padding))), dtype=np.float32),
            np.ascontiguousarray(np.pad(bias, (0, padding)), dtype=np.float32))


def upsample_bf16(x: np.ndarray, packed: np.ndarray, bias: np.ndarray, out: np.ndarray, first_row: int = 0,
                  rows: int | None = None, packed_rest: np.ndarray | None = None) -> np.ndarray:
    """LayerNorm over channels (eps LAYER_NORM_EPS, no affine) then a 2x2 stride-2 transposed conv, for rows
    first_row .. first_row + rows - 1 of x (H, W, C) float32, C a multiple of 32, into the matching rows of out
    (2H, 2W, O): each normalised position rounded to bfloat16 times `packed` (`pack_bf16` of the (C, N) matrix
    whose columns are (i, j, o), zero-padded to N; `pad_columns`), summed in float32, plus bias (N,). With
    packed_rest (`pack_bf16(..., remainder=True)`), three passes as `mlp_bf16`'s. Only where
    `bf16_available()`."""
    _check_floats("x", x, 3)
    _check_floats("out", out, 3, writable=True)
    height = x.shape[0]
    rows = height - first_row if rows is None else rows
    if not bf16_available():
        raise RuntimeError("upsample_bf16: this CPU (or OS) has no AMX bfloat16 tiles, or the C module is not built")
    _module().upsample_bf16(x, packed, packed_rest, bias, out, first_row, rows, LAYER_NORM_EPS)
    return out


def png_filter(rows: np.ndarray, pixel: int, out: np.ndarray, first: int = 0, stop: int | None = None) -> None:
    """PNG's adaptive row filters (libpng's heuristic: of none, sub, up, average and Paeth, the least sum of
    |filtered byte as signed|) for rows first .. stop - 1 of `rows` (an (H, W * pixel) uint8 array, `pixel` bytes
    a pixel) into `out` (H, 1 + W * pixel): each row's filter type, then its bytes. Without the GIL, so threads
    can filter bands of rows at once."""
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2:
        raise ValueError("rows: an (H, bytes) uint8 array is needed")
    _module().png_filter(rows, pixel, out, first, rows.shape[0] if stop is None else stop)

"""The torch-free runtime's decoder kernels (hvqcodec/_decoderkernel.c via hvqcodec/decoderkernel.py) against
straightforward float64 numpy references, on every build of the kernels this CPU runs (AVX-512, AVX2, baseline
vectors, plain C), in bands of rows and whole; and their argument checks."""
import math
import threading

import numpy as np
import pytest

from hvqcodec import decoderkernel

pytestmark = pytest.mark.skipif(not decoderkernel.available(), reason="hvqcodec._decoderkernel is not built here")

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(params=decoderkernel.paths() if decoderkernel.available() else ["none"])
def path(request):
    """Each build of the kernels in turn."""
    previous = decoderkernel.use_path(request.param)
    yield request.param
    decoderkernel.use_path(previous)


def random(rng, shape, scale=1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def exact_gelu(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1 + np.vectorize(math.erf, otypes=[float])(x / math.sqrt(2)))


def reference_depthwise_layernorm(x, kernel, bias, norm_weight=None, norm_bias=None, eps=1e-6):
    h, w, _ = x.shape
    padded = np.pad(x.astype(np.float64), ((3, 3), (3, 3), (0, 0)))
    y = np.zeros(x.shape) + bias
    for i in range(7):
        for j in range(7):
            y += padded[i:i + h, j:j + w] * kernel[i, j]
    mean = y.mean(axis=-1, keepdims=True)
    variance = ((y - mean) ** 2).mean(axis=-1, keepdims=True)
    y = (y - mean) / np.sqrt(variance + eps)
    return y if norm_weight is None else y * norm_weight + norm_bias


def reference_conv3x3(x, weight, bias, gelu):
    h, w, _ = x.shape
    padded = np.pad(x.astype(np.float64), ((1, 1), (1, 1), (0, 0)))
    y = np.zeros((h, w, weight.shape[3])) + bias
    for i in range(3):
        for j in range(3):
            y += padded[i:i + h, j:j + w] @ weight[i, j].astype(np.float64)
    return exact_gelu(y) if gelu else y


def bands(height: int) -> list[tuple[int, int]]:
    """Uneven bands of rows covering the height: a single row, a band at the top edge, one in the middle."""
    cuts = sorted({0, 1, min(height, 3), min(height, height // 2 + 2), height})
    return list(zip(cuts[:-1], cuts[1:]))


# (H, W, C): odd grids, narrower than the kernel, C a multiple of 16 (every vector build) or not (plain C)
DEPTHWISE_SHAPES = [(5, 9, 16), (9, 5, 32), (7, 23, 64), (4, 3, 16), (1, 1, 32), (6, 10, 12), (3, 30, 96)]


@pytest.mark.parametrize("shape", DEPTHWISE_SHAPES)
@pytest.mark.parametrize("affine", [False, True])
def test_depthwise_layernorm(path, shape, affine):
    rng = np.random.default_rng(sum(shape))
    channels = shape[2]
    x, kernel, bias = random(rng, shape), random(rng, (7, 7, channels), 0.2), random(rng, channels)
    norm = (random(rng, channels), random(rng, channels)) if affine else (None, None)
    expected = reference_depthwise_layernorm(x, kernel, bias, *norm)
    whole = decoderkernel.depthwise7x7_layernorm(x, kernel, bias, norm_weight=norm[0], norm_bias=norm[1])
    np.testing.assert_allclose(whole, expected, **TOLERANCE)
    out = np.full_like(x, np.nan)
    for top, bottom in bands(shape[0]):
        decoderkernel.depthwise7x7_layernorm(x, kernel, bias, out[top:bottom], top, norm_weight=norm[0],
                                             norm_bias=norm[1])
    np.testing.assert_allclose(out, expected, **TOLERANCE)


def test_gelu_accuracy(path):
    """Within a few float32 roundings of the exact GELU everywhere, tails included (no NaN or overflow)."""
    x = np.concatenate([np.linspace(-30, 30, 40001), [0.0, -0.0, 1e-30, -1e-30, 80.0, -80.0, 1e4, -1e4]])
    x = x.astype(np.float32)
    y = decoderkernel.bias_gelu_(x.reshape(1, -1).copy()).reshape(-1)
    np.testing.assert_allclose(y, exact_gelu(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(5, 64), (7, 37), (3, 128), (3, 5)])
def test_bias_gelu_rows(path, shape):
    """bias + GELU on rows start .. stop - 1 only, columns not a multiple of any vector width included."""
    rng = np.random.default_rng(shape[1])
    x, bias = random(rng, shape, 3.0), random(rng, shape[1])
    start, stop = 1, shape[0] - 1
    out = decoderkernel.bias_gelu_(x.copy(), bias, start, stop)
    np.testing.assert_array_equal(out[:start], x[:start])
    np.testing.assert_array_equal(out[stop:], x[stop:])
    np.testing.assert_allclose(out[start:stop], exact_gelu(x[start:stop] + bias.astype(np.float64)), **TOLERANCE)
    np.testing.assert_allclose(decoderkernel.bias_gelu_(x.copy()), exact_gelu(x), **TOLERANCE)


# (H, W, Cin, Cout, gelu): the post-filter's 3 -> 32 -> 32 -> 3, and other shapes of each form
CONV_SHAPES = [(5, 9, 3, 32, True), (7, 6, 32, 32, True), (5, 9, 32, 3, False), (4, 4, 32, 3, True),
               (6, 13, 16, 16, False), (3, 2, 5, 7, True), (1, 17, 32, 48, False), (9, 25, 32, 32, False)]


@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_conv3x3(path, shape):
    h, w, inputs, outputs, gelu = shape
    rng = np.random.default_rng(h * w + inputs + outputs)
    x = random(rng, (h, w, inputs))
    weight = random(rng, (3, 3, inputs, outputs), 1 / math.sqrt(9 * inputs))
    bias = random(rng, outputs, 0.1)
    expected = reference_conv3x3(x, weight, bias, gelu)
    np.testing.assert_allclose(decoderkernel.conv3x3(x, weight, bias, gelu=gelu), expected, **TOLERANCE)
    out = np.full((h, w, outputs), np.nan, np.float32)
    for top, bottom in bands(h):
        decoderkernel.conv3x3(x, weight, bias, out[top:bottom], top, gelu=gelu)
    np.testing.assert_allclose(out, expected, **TOLERANCE)


def test_conv3x3_band_input():
    """A band of input rows as the whole input (what the numpy decoder's post-filter does): output rows away
    from the band's edges are those of the whole image."""
    rng = np.random.default_rng(3)
    x, weight, bias = random(rng, (12, 10, 32)), random(rng, (3, 3, 32, 32), 0.06), random(rng, 32)
    whole = decoderkernel.conv3x3(x, weight, bias, gelu=True)
    band = decoderkernel.conv3x3(x[4:9], weight, bias, first_row=1, rows=3, gelu=True)
    np.testing.assert_array_equal(band, whole[5:8])


def test_threads_share_rows():
    """Two Python threads computing halves of the rows at once (the kernels release the GIL) give what one
    call gives."""
    rng = np.random.default_rng(4)
    x, kernel, bias = random(rng, (40, 33, 64)), random(rng, (7, 7, 64), 0.2), random(rng, 64)
    whole = decoderkernel.depthwise7x7_layernorm(x, kernel, bias)
    out = np.empty_like(x)
    threads = [threading.Thread(target=decoderkernel.depthwise7x7_layernorm,
                                args=(x, kernel, bias, out[top:top + 20], top)) for top in (0, 20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    np.testing.assert_array_equal(out, whole)


def test_arguments_are_checked():
    rng = np.random.default_rng(5)
    x, kernel, bias = random(rng, (5, 6, 16)), random(rng, (7, 7, 16)), random(rng, 16)
    bad_calls = [
        lambda: decoderkernel.depthwise7x7_layernorm(x.astype(np.float64), kernel, bias),
        lambda: decoderkernel.depthwise7x7_layernorm(x[:, ::2], kernel, bias),
        lambda: decoderkernel.depthwise7x7_layernorm(x, kernel[:, :, :8], bias),
        lambda: decoderkernel.depthwise7x7_layernorm(x, kernel, bias[:8]),
        lambda: decoderkernel.depthwise7x7_layernorm(x, kernel, bias, first_row=3, rows=3),
        lambda: decoderkernel.depthwise7x7_layernorm(x, kernel, bias, np.empty((2, 6, 8), np.float32)),
        lambda: decoderkernel.depthwise7x7_layernorm(x, kernel, bias, x[1:3]),
        lambda: decoderkernel.depthwise7x7_layernorm(x, kernel, bias, norm_weight=bias),
        lambda: decoderkernel.bias_gelu_(x.reshape(30, 16), bias[:4]),
        lambda: decoderkernel.bias_gelu_(x.reshape(30, 16), start=3, stop=31),
        lambda: decoderkernel.bias_gelu_(np.zeros(4, np.int32)),
        lambda: decoderkernel.conv3x3(x, random(rng, (3, 3, 8, 4)), random(rng, 4)),
        lambda: decoderkernel.conv3x3(x, random(rng, (3, 3, 16, 4)), random(rng, 5)),
        lambda: decoderkernel.conv3x3(x, random(rng, (3, 3, 16, 4)), random(rng, 4), first_row=-1),
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()
    read_only = x.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError):
        decoderkernel.depthwise7x7_layernorm(x, kernel, bias, read_only)


def test_c_module_checks_its_arguments():
    """Called directly (past the wrapper's checks), the C module raises rather than reading out of bounds."""
    module = decoderkernel._decoderkernel
    x, kernel, bias = (np.zeros(shape, np.float32) for shape in ((4, 5, 16), (7, 7, 16), (16,)))
    out = np.zeros((4, 5, 16), np.float32)
    bad_calls = [
        (module.depthwise_layernorm, (x, kernel, bias, out, 1, None, None, 1e-6)),  # rows 1 .. 4 of 4
        (module.depthwise_layernorm, (x, kernel, bias, out[:, :4], 0, None, None, 1e-6)),
        (module.depthwise_layernorm, (x, kernel.astype(np.float64), bias, out, 0, None, None, 1e-6)),
        (module.depthwise_layernorm, (x.tolist(), kernel, bias, out, 0, None, None, 1e-6)),
        (module.depthwise_layernorm, (x, kernel, bias, x, 0, None, None, 1e-6)),  # out is x
        (module.bias_gelu, (out.reshape(20, 16), bias[:8], 0, 20)),
        (module.bias_gelu, (out.reshape(20, 16), None, 5, 21)),
        (module.conv3x3, (x, np.zeros((3, 3, 16, 4), np.float32), bias, out, 0, False)),
        (module.conv3x3, (x, np.zeros((3, 3, 8, 16), np.float32), bias, out, 0, False)),
        (module.conv3x3, (x, np.zeros((3, 3, 16, 16), np.float32), bias, out[:2], 3, False)),
        (module._use_path, ("no such build",)),
    ]
    for function, arguments in bad_calls:
        with pytest.raises(ValueError):
            function(*arguments)


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> the nearest bfloat16 (ties to even), as float32."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.astype(np.uint32).view(np.float32)


def test_pack_bf16_layout():
    """Each block of 16 columns and 32 rows is a tile whose row r holds rows 2r and 2r + 1 in pairs."""
    matrix = random(np.random.default_rng(6), (64, 96))
    packed = decoderkernel.pack_bf16(matrix)
    values = (packed.astype(np.uint32) << 16).view(np.float32)
    tiles = values.reshape(96 // 16, 64 // 32, 16, 16, 2)  # [column block, row block, r, column, pair]
    unpacked = tiles.transpose(1, 2, 4, 0, 3).reshape(64, 96)
    np.testing.assert_array_equal(unpacked, to_bf16(matrix))
    with pytest.raises(ValueError):
        decoderkernel.pack_bf16(random(np.random.default_rng(6), (48, 32)))


@pytest.mark.skipif(not decoderkernel.bf16_available(), reason="no AMX bfloat16 tiles here")
@pytest.mark.parametrize("positions,channels", [(64, 32), (77, 64), (5, 96), (300, 128)])
def test_mlp_bf16(positions, channels):
    """residual + gelu(y @ fc1 + b1) @ fc2 + b2, with y and the hidden values in bfloat16 and float32 sums, and
    the GELU to within 5e-5 (`test_rounded_gelu`): against the float64 reference on the bfloat16-rounded operands,
    the differences are hidden values that round the other way to bfloat16 (a step's share each), a tenth of
    float32's distance from it on average."""
    rng = np.random.default_rng(7)
    c = channels
    y, residual = random(rng, (positions, c)), random(rng, (positions, c))
    fc1, fc2 = random(rng, (c, 4 * c), c ** -0.5), random(rng, (4 * c, c), (4 * c) ** -0.5)
    bias1, bias2 = random(rng, 4 * c, 0.1), random(rng, c, 0.1)
    out = decoderkernel.mlp_bf16(y, decoderkernel.pack_bf16(fc1), bias1, decoderkernel.pack_bf16(fc2), bias2, residual)
    hidden = exact_gelu(to_bf16(y).astype(np.float64) @ to_bf16(fc1) + bias1)
    expected = residual + to_bf16(hidden.astype(np.float32)).astype(np.float64) @ to_bf16(fc2) + bias2
    float32 = residual + exact_gelu(y.astype(np.float64) @ fc1 + bias1) @ fc2 + bias2
    error = np.abs(out - expected)
    assert np.quantile(error, 0.99) < 2e-3 and error.max() < 5e-3
    assert np.abs(float32 - expected).mean() > 5 * error.mean()
    in_place = residual.copy()
    decoderkernel.mlp_bf16(y, decoderkernel.pack_bf16(fc1), bias1, decoderkernel.pack_bf16(fc2), bias2, in_place,
                           in_place)
    np.testing.assert_array_equal(in_place, out)
    band = decoderkernel.mlp_bf16(y[3:], decoderkernel.pack_bf16(fc1), bias1, decoderkernel.pack_bf16(fc2), bias2,
                                  residual[3:])
    np.testing.assert_array_equal(band, out[3:])


@pytest.mark.skipif(not decoderkernel.bf16_available(), reason="no AMX bfloat16 tiles here")
def test_mlp_bf16_arguments_are_checked():
    rng = np.random.default_rng(8)
    y, fc1, fc2 = random(rng, (40, 32)), random(rng, (32, 128)), random(rng, (128, 32))
    b1, b2 = random(rng, 128), random(rng, 32)
    p1, p2 = decoderkernel.pack_bf16(fc1), decoderkernel.pack_bf16(fc2)
    module = decoderkernel._decoderkernel
    bad_calls = [
        lambda: decoderkernel.mlp_bf16(y, p2[:-1], b1, p2, b2, y.copy()),
        lambda: decoderkernel.mlp_bf16(y, p1, b1[:64], p2, b2, y.copy()),
        lambda: decoderkernel.mlp_bf16(y, p1, b1, p2, b2, y[:39].copy()),
        lambda: decoderkernel.mlp_bf16(y, p1, b1, p2, b2, y.copy(), out=y),
        lambda: module.mlp_bf16(y, p1[:100], b1, p2, b2, y.copy(), y.copy()),
        lambda: module.mlp_bf16(y, p1, b1, p2, b2, y.copy(), y),  # out is y
        lambda: module.mlp_bf16(y[:, :16].copy(), p1, b1, p2, b2, y.copy(), y.copy()),
        lambda: module.pack_bf16(fc1, np.empty(10, np.uint16)),
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()


@pytest.mark.skipif(not decoderkernel.bf16_available(), reason="no AMX bfloat16 tiles here")
@pytest.mark.parametrize("shape,channels,band", [((6, 37, 32), 32, None), ((9, 70, 32), 64, (2, 4)),
                                                 ((5, 32, 64), 32, None), ((7, 40, 32), 3, (1, 5))])
def test_conv3x3_bf16(shape, channels, band):
    """As the float64 reference on the bfloat16-rounded input and weight, to float32 summation (a hundredth of
    float32's distance from it) and the rounded GELU's 5e-5, in bands of rows too, with and without GELU; widths
    that are not a multiple of the 32 positions a block computes; 3 outputs (the columns padded to 32)."""
    rng = np.random.default_rng(9)
    x = random(rng, shape)
    weight, bias = random(rng, (3, 3, shape[2], channels), (9 * shape[2]) ** -0.5), random(rng, channels, 0.1)
    packed, padded_bias = decoderkernel.pack_conv3x3_bf16(weight, bias)
    first, rows = band or (0, shape[0])
    for gelu in (False, True):
        out = decoderkernel.conv3x3_bf16(x, packed, padded_bias, first_row=first, rows=rows, gelu=gelu,
                                         outputs=channels)
        assert out.shape == (rows, shape[1], channels)
        expected = reference_conv3x3(to_bf16(x), to_bf16(weight), bias, gelu)[first:first + rows]
        float32 = reference_conv3x3(x, weight, bias, gelu)[first:first + rows]
        error = np.abs(out - expected).max()
        assert error < (6e-5 if gelu else 2e-6) and np.abs(float32 - expected).max() > 100 * error


@pytest.mark.skipif(not decoderkernel.bf16_available(), reason="no AMX bfloat16 tiles here")
def test_conv3x3_bf16_arguments_are_checked():
    rng = np.random.default_rng(10)
    x, bias = random(rng, (4, 5, 32)), random(rng, 32)
    packed = decoderkernel.pack_bf16(random(rng, (288, 32)))
    module = decoderkernel._decoderkernel
    bad_calls = [
        lambda: decoderkernel.conv3x3_bf16(x, packed[:-32], bias),
        lambda: decoderkernel.conv3x3_bf16(random(rng, (4, 5, 16)), packed, bias),
        lambda: decoderkernel.conv3x3_bf16(x, packed, bias[:16]),
        lambda: decoderkernel.conv3x3_bf16(x, packed, bias, first_row=2, rows=3),
        lambda: module.conv3x3_bf16(x, packed, bias, np.zeros((4, 5, 32), np.float32), 1, False),  # rows 1 .. 4
        lambda: module.conv3x3_bf16(x, packed[:100], bias, np.zeros((4, 5, 32), np.float32), 0, False),
        lambda: module.conv3x3_bf16(x, packed, bias, x, 0, False),  # out is x
        lambda: module.conv3x3_bf16(random(rng, (4, 5, 16)), packed, bias, np.zeros((4, 5, 32), np.float32), 0, 0),
        lambda: module.conv3x3_bf16(x, packed, bias, np.zeros((4, 5, 40), np.float32), 0, False),  # 40 > 32 columns
        lambda: decoderkernel.conv3x3_bf16(x, packed, bias, outputs=33),  # more outputs than columns
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()


@pytest.mark.skipif(not decoderkernel.bf16_available(), reason="no AMX bfloat16 tiles here")
def test_mlp_in_three_bf16_passes_is_nearly_float32():
    """With the weights' remainders, each product is split into three bfloat16 products (the encoder's MLPs):
    within 5e-5 of the float64 answer, hundreds of times closer than one pass; the remainders' tiles hold
    bf16(w - bf16(w))."""
    rng = np.random.default_rng(11)
    for positions, c in ((77, 64), (40, 128)):
        y, residual = random(rng, (positions, c)), random(rng, (positions, c))
        fc1, fc2 = random(rng, (c, 4 * c), c ** -0.5), random(rng, (4 * c, c), (4 * c) ** -0.5)
        bias1, bias2 = random(rng, 4 * c, 0.1), random(rng, c, 0.1)
        packed = [decoderkernel.pack_bf16(m) for m in (fc1, fc2)]
        rests = [decoderkernel.pack_bf16(m, remainder=True) for m in (fc1, fc2)]
        exact = residual + exact_gelu(y.astype(np.float64) @ fc1 + bias1) @ fc2 + bias2
        one = decoderkernel.mlp_bf16(y, packed[0], bias1, packed[1], bias2, residual)
        three = decoderkernel.mlp_bf16(y, packed[0], bias1, packed[1], bias2, residual, fc1_rest=rests[0],
                                       fc2_rest=rests[1])
        assert np.abs(three - exact).max() < 5e-5 and np.abs(one - exact).max() > 100 * np.abs(three - exact).max()
    values = (rests[0].astype(np.uint32) << 16).view(np.float32)
    unpacked = values.reshape(4 * c // 16, c // 32, 16, 16, 2).transpose(1, 2, 4, 0, 3).reshape(c, 4 * c)
    np.testing.assert_array_equal(unpacked, to_bf16(fc1 - to_bf16(fc1)))
    with pytest.raises(ValueError):
        decoderkernel.mlp_bf16(y, packed[0], bias1, packed[1], bias2, residual, fc1_rest=rests[0])


@pytest.mark.skipif(not decoderkernel.bf16_available(), reason="no AMX bfloat16 tiles here")
def test_rounded_gelu():
    """The one-pass bfloat16 paths' GELU (no division, no exponential) is within 5e-5 of the exact one from -8 to
    8, seen through a 3x3 convolution that passes its centre tap's channels through (exact in bfloat16 for
    bfloat16 inputs)."""
    x = np.linspace(-8, 8, 32 * 64, dtype=np.float32).reshape(1, 64, 32)
    weight = np.zeros((3, 3, 32, 32), np.float32)
    weight[1, 1] = np.eye(32)
    out = decoderkernel.conv3x3_bf16(x, decoderkernel.pack_bf16(weight.reshape(288, 32)), np.zeros(32, np.float32),
                                     gelu=True)
    error = np.abs(out - exact_gelu(to_bf16(x)))
    assert error.max() < 5e-5 and error.max() > 1e-7  # rounded, not exact


@pytest.mark.skipif(not decoderkernel.bf16_available(), reason="no AMX bfloat16 tiles here")
@pytest.mark.parametrize("shape,outputs,band,three", [((5, 37, 64), 64, None, False), ((6, 33, 32), 3, (2, 3), True),
                                                      ((4, 8, 96), 40, None, True), ((3, 11, 32), 8, (1, 2), False)])
def test_upsample_bf16(shape, outputs, band, three):
    """LayerNorm + 2x2 stride-2 transposed conv against float64: each position's four pixels where they belong,
    rows outside the band untouched; one pass within bfloat16's rounding, three passes a hundred times closer."""
    rng = np.random.default_rng(11)
    height, width, channels = shape
    x = random(rng, shape, 2.0) + 0.5
    matrix, bias = random(rng, (channels, 4 * outputs), channels ** -0.5), random(rng, 4 * outputs, 0.1)
    padded, padded_bias = decoderkernel.pad_columns(matrix, bias)
    assert padded.shape[1] % 32 == 0 and padded_bias.shape == (padded.shape[1],)
    packed = decoderkernel.pack_bf16(padded)
    rest = decoderkernel.pack_bf16(padded, remainder=True) if three else None
    first, rows = band or (0, height)
    out = np.full((2 * height, 2 * width, outputs), np.nan, np.float32)
    decoderkernel.upsample_bf16(x, packed, padded_bias, out, first, rows, rest)
    x64 = x.astype(np.float64)
    normed = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
    expected = (normed @ matrix + bias).reshape(height, width, 2, 2, outputs).transpose(0, 2, 1, 3, 4)
    expected = expected.reshape(2 * height, 2 * width, outputs)
    inside = slice(2 * first, 2 * (first + rows))
    assert np.isnan(np.delete(out, np.r_[inside], axis=0)).all()
    error = np.abs(out[inside] - expected[inside]).max()
    assert error < (3e-4 if three else 3e-2)
    if not three:  # as rounding the normalised input and the matrix to bfloat16 gives it
        rounded = (to_bf16(normed.astype(np.float32)) @ to_bf16(matrix) + bias).reshape(
            height, width, 2, 2, outputs).transpose(0, 2, 1, 3, 4).reshape(2 * height, 2 * width, outputs)
        assert np.abs(out[inside] - rounded[inside]).max() < error / 10


@pytest.mark.skipif(not decoderkernel.bf16_available(), reason="no AMX bfloat16 tiles here")
def test_upsample_bf16_arguments_are_checked():
    rng = np.random.default_rng(12)
    x = random(rng, (4, 5, 32))
    padded, bias = decoderkernel.pad_columns(random(rng, (32, 12)), random(rng, 12))
    packed = decoderkernel.pack_bf16(padded)
    out = np.zeros((8, 10, 3), np.float32)
    bad_calls = [
        lambda: decoderkernel.upsample_bf16(x, packed[:-32], bias, out),
        lambda: decoderkernel.upsample_bf16(random(rng, (4, 5, 16)), packed, bias, out),
        lambda: decoderkernel.upsample_bf16(x, packed, bias, np.zeros((8, 9, 3), np.float32)),  # not 2W wide
        lambda: decoderkernel.upsample_bf16(x, packed, bias, np.zeros((8, 10, 9), np.float32)),  # 36 > 32 columns
        lambda: decoderkernel.upsample_bf16(x, packed, bias, out, first_row=3, rows=2),
        lambda: decoderkernel.upsample_bf16(x, packed, bias, out, packed_rest=packed[:64]),
        lambda: decoderkernel.upsample_bf16(x, packed, bias, x),  # out is x (and the wrong shape)
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()

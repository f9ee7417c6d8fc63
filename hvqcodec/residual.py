"""The residual layer: what the autoencoder's picture leaves out, coded in the pixel domain (the ladder's top).

The autoencoder's picture stops improving near its decoder's ceiling (about 31-32 dB on Kodak) however many
refinement stages are coded, while a transform coder keeps gaining about 6 dB per bit and pixel. So the top of
the quality ladder codes the difference image - picture: an orthonormal colour transform, an 8x8 DCT, one
quantiser step, and a range coder. Equal steps for every coefficient are what minimises squared error at a
given rate in an orthonormal transform (and close to what does so with a dead zone), but MS-SSIM and the eye weigh
a picture's coarse structure above its finest texture and brightness above colour: a tilt makes the step grow
with the frequency band, steeper in the two colour channels (step * (256 + slope * band) / 256, one slope for
brightness, one for colour). On hvq-vr8's calibration crops a tilt of (40, 80) saves 12% of the bits at equal
MS-SSIM for 1.5% more at equal PSNR; hvq-vr12 has a steeper (80, 112) (benchmarks/residual_tilt.py,
docs/ladder-experiments.md). The decoder reads the slopes from the stream, so the ladder may pick any.

Coding order and context: the coefficients go pass by pass, one pass per (colour channel, diagonal frequency
band i + j), coarse first. A pass's probabilities come from an activity measure of what earlier passes
decoded (the block's own lower bands, its four neighbours', the earlier channels' whole block) through a
per-pass offset and slope that the encoder picks and writes (two bytes a pass). Every probability is therefore
a function of integers already decoded, never of the decoded picture: the picture's floats may differ in a
last bit between devices, which then changes a pixel by that bit, never the stream (docs/DESIGN.md, the
exactness rule). The probability tables are integers, built with IEEE-exact operations only (+, *, /, sqrt),
so every platform builds the same ones.

Stream layout: u8 quantiser step (1..255); in a tilted stream (container version 4) u8 brightness slope and u8
colour slope (a flat stream, version 3, has neither: both 0); per pass two bytes (offset, slope; offset EMPTY =
every coefficient of the pass is zero and nothing is coded); then the range coder's 32-bit words, little-endian.
This module needs numpy and constriction only (no torch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import constriction
import numpy as np

BLOCK = 8
BANDS = 2 * BLOCK - 1  # diagonals i + j of an 8x8 block
CHANNELS = 3
PASSES = CHANNELS * BANDS
LARGEST = 24  # magnitudes 0..LARGEST have their own symbol
ESCAPE = LARGEST + 1  # larger magnitudes: this symbol, then an Elias-gamma code of the excess
SYMBOLS = ESCAPE + 1
ESCAPE_BITS = 16  # escape lengths 1..16 bits
SCALES = 56  # the distribution family: geometric tails of scale t0 * sqrt(2)^s
MAX_SLOPE = 8  # scale index = offset + slope * activity class // 2
EMPTY = 255
MAX_STEP = 255
FREQ_BITS = 16
# Rounding offset of the encoder's quantiser (0.5 = nearest): a dead zone that drops coefficients barely over
# half a step, cheaper in bits than they are worth in squared error.
ROUNDING = 0.35
# Activity classes: how many of these thresholds the activity reaches (0..15).
_THRESHOLDS = np.array([1 << n for n in range(15)], dtype=np.int64)
_HEADER_BYTES = 1 + 2 * PASSES
TILT_BYTES = 2  # brightness and colour slope, in a tilted stream
FLAT = (0, 0)


def is_tilted(tilt: tuple[int, int]) -> bool:
    """Whether a residual with this tilt is written in the tilted layout (a version 4 file): any slope > 0."""
    return tuple(tilt) != FLAT


class ResidualError(ValueError):
    """A residual stream that cannot be decoded (damaged or not made by this coder)."""


def _orthonormal_rows(rows: list[list[float]]) -> np.ndarray:
    matrix = np.array(rows, dtype=np.float64)
    return matrix / np.sqrt((matrix ** 2).sum(axis=1, keepdims=True))


# Rows: brightness, red-blue, green against red+blue; orthonormal, so squared error is the same in RGB.
_COLOUR = _orthonormal_rows([[1, 1, 1], [1, 0, -1], [1, -2, 1]])
_DCT = np.array([[math.sqrt((1 if k == 0 else 2) / BLOCK) * math.cos(math.pi * (2 * i + 1) * k / (2 * BLOCK))
                  for i in range(BLOCK)] for k in range(BLOCK)])
_BAND = np.add.outer(np.arange(BLOCK), np.arange(BLOCK))  # (8, 8) diagonal index of each coefficient


@lru_cache(maxsize=1)
def frequency_tables() -> np.ndarray:
    """(SCALES, SYMBOLS) int64 frequencies, each row summing to 2^FREQ_BITS, every symbol at least 1.

    Row s: P(0) = 1 - r, P(m) = r (1 - rho) rho^(m-1) for m >= 1, with rho = t / (1 + t), r = sqrt(rho) and
    t = 2^-14 * sqrt(2)^s; the escape symbol takes the tail. Only +, -, *, / and sqrt: exact in IEEE
    arithmetic, so the integers are the same everywhere."""
    total = 1 << FREQ_BITS
    rows = []
    t = 1.0 / 16384.0
    for _ in range(SCALES):
        rho = t / (1.0 + t)
        r = math.sqrt(rho)
        probabilities = [1.0 - r]
        power = 1.0
        for _m in range(1, LARGEST + 1):
            probabilities.append(r * (1.0 - rho) * power)
            power *= rho
        probabilities.append(r * power)  # m > LARGEST
        freq = [int(p * (total - SYMBOLS)) + 1 for p in probabilities]
        freq[int(np.argmax(freq))] += total - sum(freq)
        rows.append(freq)
        t *= math.sqrt(2.0)
    return np.array(rows, dtype=np.int64)


@lru_cache(maxsize=1)
def _models() -> list:
    family = constriction.stream.model.Categorical
    scale = 1.0 / (1 << FREQ_BITS)  # exact: the probabilities are dyadic
    return [family(row * scale, perfect=False) for row in frequency_tables().astype(np.float64)]


@lru_cache(maxsize=1)
def _code_lengths() -> np.ndarray:
    """-log2 p of each (scale, symbol): only the encoder's choices use these, never the coding itself."""
    return FREQ_BITS - np.log2(frequency_tables().astype(np.float64))


_HALF = constriction.stream.model.Categorical(np.array([0.5, 0.5]), perfect=False)
_ESCAPE_LENGTH = constriction.stream.model.Categorical(np.full(ESCAPE_BITS, 1.0 / ESCAPE_BITS), perfect=False)


@dataclass
class EncodedResidual:
    data: bytes
    bits: float  # the coded size in bits (range coder words and the stream's own header)


def _to_blocks(plane: np.ndarray) -> np.ndarray:
    """(H, W) -> (H/8, W/8, 8, 8)."""
    height, width = plane.shape
    return plane.reshape(height // BLOCK, BLOCK, width // BLOCK, BLOCK).transpose(0, 2, 1, 3)


def _from_blocks(blocks: np.ndarray) -> np.ndarray:
    rows, cols = blocks.shape[:2]
    return blocks.transpose(0, 2, 1, 3).reshape(rows * BLOCK, cols * BLOCK)


def _pad(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    return np.pad(image, ((0, -height % BLOCK), (0, -width % BLOCK), (0, 0)), mode="edge")


def _activity_class(magnitudes: np.ndarray, channel: int, band: int) -> np.ndarray:
    """(rows, cols) activity class 0..15 of each block for pass (channel, band), from the magnitudes
    (CHANNELS, rows, cols, 8, 8) of earlier passes only (later ones are masked out, so the encoder, which
    knows them all, and the decoder, which does not yet, compute the same)."""
    lower = (magnitudes[channel] * (_BAND < band)).sum(axis=(2, 3))
    padded = np.pad(lower, 1)
    neighbours = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    activity = 2 * lower + neighbours
    if channel:
        activity = activity + magnitudes[:channel].sum(axis=(0, 3, 4))
    return np.searchsorted(_THRESHOLDS, activity, side="right")


def _scale_index(classes: np.ndarray, offset: int, slope: int) -> np.ndarray:
    return np.minimum(offset + slope * classes // 2, SCALES - 1)


def _order(scales: np.ndarray) -> np.ndarray:
    """Coding order within a pass: grouped by distribution (one coder call each), raster order inside."""
    return np.argsort(scales, kind="stable")


def _choose(classes: np.ndarray, symbols: np.ndarray) -> tuple[int, int]:
    """The (offset, slope) that codes this pass's symbols in the fewest bits."""
    histogram = np.zeros((len(_THRESHOLDS) + 1, SYMBOLS))
    np.add.at(histogram, (classes, symbols), 1)
    lengths = _code_lengths()
    best = (math.inf, 0, 0)
    offsets = np.arange(SCALES)[:, None]
    for slope in range(MAX_SLOPE + 1):
        index = np.minimum(offsets + slope * np.arange(histogram.shape[0])[None] // 2, SCALES - 1)
        bits = np.einsum("okq,kq->o", lengths[index], histogram)
        offset = int(np.argmin(bits))
        if bits[offset] < best[0] - 1e-9:
            best = (float(bits[offset]), offset, slope)
    return best[1], best[2]


def _pass_coefficients(channel: int, band: int, rows: int, cols: int) -> tuple[np.ndarray, ...]:
    """Indices (channel, row, col, i, j) of the pass's coefficients, block-major raster order."""
    i, j = np.nonzero(_BAND == band)
    count = len(i)
    block_rows, block_cols = np.divmod(np.arange(rows * cols), cols)
    return (np.full(rows * cols * count, channel), np.repeat(block_rows, count), np.repeat(block_cols, count),
            np.tile(i, rows * cols), np.tile(j, rows * cols))


def _pass_classes(quantised: np.ndarray, channel: int, band: int) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """A pass's coefficient indices and each one's activity class (its block's), from the magnitudes decoded
    so far (`_activity_class`): the same for the encoder and the decoder."""
    rows, cols = quantised.shape[1:3]
    where = _pass_coefficients(channel, band, rows, cols)
    per_block = len(where[0]) // (rows * cols)
    return where, np.repeat(_activity_class(quantised, channel, band).ravel(), per_block)


def _groups(scales: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, stop, scale) of each run of equal scales in a pass's coding order (one coder call each)."""
    bounds = np.flatnonzero(np.diff(scales)) + 1
    return [(start, stop, int(scales[start])) for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(scales)])]


def add_residual_tiles(picture: np.ndarray, streams: list[bytes], tile_size: int, tilted: bool = False) -> None:
    """Decode each tile's residual stream (tiles in container order) onto the (H, W, 3) picture, in place;
    `tilted`: the streams have the tilted layout (a version 4 file's)."""
    from .container import tile_grid

    height, width = picture.shape[:2]
    for (top, left, h, w), stream in zip(tile_grid(width, height, tile_size), streams):
        picture[top:top + h, left:left + w] = decode_residual(stream, picture[top:top + h, left:left + w], tilted)


def steps(step: int, tilt: tuple[int, int] = FLAT) -> np.ndarray:
    """(CHANNELS, 1, 1, 8, 8) quantiser step of each coefficient: step * (256 + slope * band) / 256, the
    brightness slope tilt[0] for channel 0 and the colour slope tilt[1] for the others (exact in float64)."""
    if not 1 <= step <= MAX_STEP:
        raise ValueError(f"residual step {step} is not in 1..{MAX_STEP}")
    if not all(0 <= slope <= 255 for slope in tilt):
        raise ValueError(f"residual tilt {tilt} is not in 0..255")
    slopes = np.array([tilt[0]] + [tilt[1]] * (CHANNELS - 1), dtype=np.float64)
    return (step * (256.0 + slopes[:, None, None] * _BAND) / 256.0)[:, None, None]


def quantise(image: np.ndarray, picture: np.ndarray, step: int, tilt: tuple[int, int] = FLAT) -> np.ndarray:
    """image - picture ((h, w, 3) uint8 each) -> signed quantised coefficients (CHANNELS, rows, cols, 8, 8)."""
    table = steps(step, tilt)
    difference = _pad(image).astype(np.float64) - _pad(picture).astype(np.float64)
    colour = difference @ _COLOUR.T
    coefficients = np.stack([_DCT @ _to_blocks(colour[..., c]) @ _DCT.T for c in range(CHANNELS)])
    magnitudes = np.floor(np.abs(coefficients) / table + ROUNDING).astype(np.int64)
    return np.where(coefficients < 0, -magnitudes, magnitudes)


def add_residual(picture: np.ndarray, quantised: np.ndarray, step: int, tilt: tuple[int, int] = FLAT) -> np.ndarray:
    """picture plus the residual that signed quantised coefficients describe -> (h, w, 3) uint8."""
    height, width = picture.shape[:2]
    coefficients = quantised.astype(np.float64) * steps(step, tilt)
    colour = np.stack([_from_blocks(_DCT.T @ coefficients[c] @ _DCT) for c in range(CHANNELS)], axis=-1)
    difference = (colour @ _COLOUR)[:height, :width]
    return np.clip(np.rint(picture.astype(np.float64) + difference), 0, 255).astype(np.uint8)


def encode_residual(image: np.ndarray, picture: np.ndarray, step: int, tilt: tuple[int, int] = FLAT
                    ) -> EncodedResidual:
    """Code image - picture ((h, w, 3) uint8 each) with quantiser step `step` (1..255) and `tilt` (brightness
    and colour slope, 0..255; FLAT writes the flat layout, anything else the tilted one); decode_residual
    gives add_residual(picture, quantise(image, picture, step, tilt), step, tilt)."""
    signed = quantise(image, picture, step, tilt)
    quantised, signs = np.abs(signed), signed < 0
    encoder = constriction.stream.queue.RangeEncoder()
    header = bytearray([step] + (list(tilt) if is_tilted(tilt) else []))
    for channel in range(CHANNELS):
        for band in range(BANDS):
            where, classes = _pass_classes(quantised, channel, band)
            magnitudes = quantised[where]
            if not magnitudes.any():
                header += bytes([EMPTY, 0])
                continue
            symbols = np.minimum(magnitudes, ESCAPE)
            offset, slope = _choose(classes, symbols)
            header += bytes([offset, slope])
            _encode_pass(encoder, magnitudes, signs[where], _scale_index(classes, offset, slope))
    words = encoder.get_compressed().astype("<u4").tobytes()
    return EncodedResidual(bytes(header) + words, 8.0 * (len(header) + len(words)))


def _encode_pass(encoder, magnitudes: np.ndarray, signs: np.ndarray, scales: np.ndarray) -> None:
    order = _order(scales)
    magnitudes, scales = magnitudes[order], scales[order]
    symbols = np.minimum(magnitudes, ESCAPE).astype(np.int32)
    for start, stop, scale in _groups(scales):
        encoder.encode(symbols[start:stop], _models()[scale])
    excess = magnitudes[symbols == ESCAPE] - ESCAPE + 1  # >= 1
    if excess.size:
        lengths = (np.frexp(excess.astype(np.float64))[1] - 1).astype(np.int64)  # floor(log2), exact
        encoder.encode(lengths.astype(np.int32), _ESCAPE_LENGTH)
        encoder.encode(_low_bits(excess, lengths), _HALF)
    encoder.encode(signs[order][magnitudes > 0].astype(np.int32), _HALF)


def _low_bits(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The `lengths` low bits of each value (the leading one implied), most significant first, concatenated."""
    starts = np.cumsum(lengths) - lengths
    shifts = np.repeat(lengths, lengths) - 1 - (np.arange(int(lengths.sum())) - np.repeat(starts, lengths))
    return ((np.repeat(values, lengths) >> shifts) & 1).astype(np.int32)


def decode_residual(data: bytes, picture: np.ndarray, tilted: bool = False) -> np.ndarray:
    """picture ((h, w, 3) uint8) plus the residual coded in `data` -> (h, w, 3) uint8; `tilted`: the stream
    has the tilted layout (a version 4 file's)."""
    extra = TILT_BYTES if tilted else 0
    if len(data) < _HEADER_BYTES + extra or (len(data) - _HEADER_BYTES - extra) % 4:
        raise ResidualError("residual stream has a wrong length")
    step = data[0]
    if step == 0:
        raise ResidualError("residual stream has step 0")
    tilt = (data[1], data[2]) if tilted else FLAT
    passes = 1 + extra  # where the pass headers start
    height, width = picture.shape[:2]
    rows, cols = -(-height // BLOCK), -(-width // BLOCK)
    quantised = np.zeros((CHANNELS, rows, cols, BLOCK, BLOCK), dtype=np.int64)
    negative = np.zeros(quantised.shape, dtype=bool)
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4", offset=_HEADER_BYTES + extra)
                                                     .astype(np.uint32))
    for index in range(PASSES):
        channel, band = divmod(index, BANDS)
        offset, slope = data[passes + 2 * index], data[passes + 1 + 2 * index]
        if offset == EMPTY:
            continue
        if offset >= SCALES or slope > MAX_SLOPE:
            raise ResidualError(f"residual stream has a bad pass header ({offset}, {slope})")
        where, classes = _pass_classes(quantised, channel, band)
        scales = _scale_index(classes, offset, slope)
        order = _order(scales)
        symbols = np.empty(len(scales), dtype=np.int64)
        for start, stop, scale in _groups(scales[order]):
            symbols[start:stop] = decoder.decode(_models()[scale], stop - start)
        magnitudes = symbols.copy()
        escaped = np.flatnonzero(symbols == ESCAPE)
        if escaped.size:
            lengths = decoder.decode(_ESCAPE_LENGTH, escaped.size).astype(np.int64)
            bits = decoder.decode(_HALF, int(lengths.sum())).astype(np.int64)
            magnitudes[escaped] = _from_bits(bits, lengths) + ESCAPE - 1
        nonzero = magnitudes > 0
        sign_bits = decoder.decode(_HALF, int(nonzero.sum())).astype(bool)
        in_order = tuple(axis[order] for axis in where)
        quantised[in_order] = magnitudes
        negative[tuple(axis[nonzero] for axis in in_order)] = sign_bits
    return add_residual(picture, np.where(negative, -quantised, quantised), step, tilt)


def _from_bits(bits: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Inverse of _low_bits: values with an implied leading one."""
    values = np.ones(len(lengths), dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    for position in range(int(lengths.max(initial=0))):
        longer = lengths > position
        values[longer] = values[longer] * 2 + bits[starts[longer] + position]
    return values

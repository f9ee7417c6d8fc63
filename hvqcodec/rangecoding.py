"""Range coding of code grids, without torch: the stream decoder, the two decoding loops (a level's wavefronts,
a refinement stage's groups) and their encoding counterparts, which the torch codec (`entropy`, `codec`) and the
runtime without torch (`runtime`, `npcoding`, DESIGN section 8) both run, each on its own state and prior objects
(constriction's queue coder: decode order = encode order).

The streams are constriction's (its queue range coder, Categorical(perfect=False) models of our exact rows): where
the C module is built, `_stepkernel` codes them itself (`_rangecoder.h`, the same words and symbols, hvqcodec 0.24:
without constriction's set-up per call, and a level's wavefronts in one C call, `npprior.LevelState.decode`);
constriction otherwise, and always for the residual layer's models. HVQ_RANGE_CODER=constriction takes constriction
(to compare)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import os

import constriction
import numpy as np

try:
    from . import _stepkernel as _c_coder
except ImportError:  # built without the C module
    _c_coder = None

# Positions per batch of a refinement stage's prior (encoder and decoder): a 1024 x 1024 tile's stage would
# otherwise hold several (65536, K) float64 tables at once, about 0.5 GB; 2048 rather than 8192 keeps them in
# cache (a quarter less time for kodim01's three stages).
STAGE_CHUNK = 2048
# Positions per batch in the encoder's parallel pass over a level: bounds memory, changes no result; small enough
# that the (chunk, K) float64 intermediates stay in cache (1024: about 15% faster than 8192 here).
ENCODE_CHUNK = 1024


@dataclass
class EncodedLevel:
    data: bytes
    cross_entropy_bits: float  # -sum log2 p(code) under the integer prior


def spans(total: int, chunk: int) -> list[tuple[int, int]]:
    """[start, stop) of consecutive runs of at most `chunk` of `total` positions."""
    return [(start, min(start + chunk, total)) for start in range(0, total, chunk)]


def family() -> "constriction.stream.model.Categorical":
    # perfect=False always, explicitly: the quantisation of our (exact, dyadic) probabilities is then fixed.
    return constriction.stream.model.Categorical(perfect=False)


# Once a range decoder has read its last word, its state holds at most 64 bits: decoding more information than
# that (plus slack for constriction's own rounding of the probabilities) means reading past the stream's end.
EXHAUSTED_BITS_MAX = 96


def c_coder() -> bool:
    """Whether streams are coded in C here (the C module is built, HVQ_RANGE_CODER is not "constriction")."""
    return _c_coder is not None and os.environ.get("HVQ_RANGE_CODER", "") != "constriction"


class CStreamDecoder:
    """StreamDecoder's C twin (`_stepkernel.stream_decoder`): the same symbols, the same error for a stream read
    past its end (charged symbol by symbol rather than batch by batch), and a `handle` that `npprior.LevelState`
    decodes whole levels with."""

    def __init__(self, data: bytes) -> None:
        self.handle = _c_coder.stream_decoder(bytes(data))

    def decode(self, family, probabilities: np.ndarray) -> np.ndarray:
        probabilities = np.ascontiguousarray(probabilities, dtype=np.float64)
        count, codes = probabilities.shape
        symbols = np.empty(count, dtype=np.int64)
        _c_coder.decode_rows(self.handle, probabilities.ctypes.data, count, codes, symbols.ctypes.data)
        return symbols


class StreamEncoder:
    """A queue range encoder: `add(symbols, probabilities)` -> their information in bits, `data()` -> the stream's
    bytes so far (little-endian 32-bit words). In C where `c_coder()`, else constriction's: the same words."""

    def __init__(self) -> None:
        self.handle = _c_coder.stream_encoder() if c_coder() else None
        self.constriction = None if self.handle is not None else constriction.stream.queue.RangeEncoder()

    def add(self, symbols: np.ndarray, probabilities: np.ndarray) -> float:
        probabilities = np.ascontiguousarray(probabilities, dtype=np.float64)
        if self.handle is not None:
            symbols = np.ascontiguousarray(symbols, dtype=np.int64)
            return _c_coder.encode_rows(self.handle, symbols.ctypes.data, probabilities.ctypes.data, len(symbols),
                                        probabilities.shape[1])
        symbols = np.ascontiguousarray(symbols, dtype=np.int32)
        self.constriction.encode(symbols, family(), probabilities)
        return float(-np.log2(probabilities[np.arange(len(symbols)), symbols]).sum())

    def add_counts(self, symbols: np.ndarray, cumulative: np.ndarray, frequencies: np.ndarray, codes: int) -> float:
        """Appends symbols given by their exact frequencies and the frequencies below them (uint32; rows of `codes`
        codes summing to 2^20); their information in bits. In C only (`c_coder()`)."""
        symbols = np.ascontiguousarray(symbols, dtype=np.int64)
        cumulative, frequencies = (np.ascontiguousarray(a, dtype=np.uint32) for a in (cumulative, frequencies))
        if self.handle is None or not symbols.shape == cumulative.shape == frequencies.shape:
            raise ValueError("add_counts: the C coder and one frequency and cumulative per symbol are needed")
        return _c_coder.encode_counts(self.handle, symbols.ctypes.data, cumulative.ctypes.data,
                                      frequencies.ctypes.data, len(symbols), codes)

    def data(self) -> bytes:
        if self.handle is not None:
            return _c_coder.stream_bytes(self.handle)
        return self.constriction.get_compressed().astype("<u4").tobytes()


class StreamDecoder:
    """A range decoder over one stream that fails as soon as it reads past the stream's end.

    constriction pads a finished stream with zeros and keeps decoding; for a damaged or hostile file that is
    garbage at full cost. Here every batch decoded after the last word was consumed is charged its information
    content, and more than the final state can hold is an error at once.
    """

    def __init__(self, data: bytes) -> None:
        if len(data) % 4:
            raise ValueError("range-coded stream length is not a multiple of 4")
        self.decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
        self.bits_after_end = 0.0

    def decode(self, family, probabilities: np.ndarray) -> np.ndarray:
        exhausted = self.decoder.maybe_exhausted()
        symbols = self.decoder.decode(family, probabilities)
        if exhausted:
            chosen = probabilities[np.arange(len(symbols)), symbols]
            self.bits_after_end += float(-np.log2(np.maximum(chosen, 1e-300)).sum())
            if self.bits_after_end > EXHAUSTED_BITS_MAX:
                raise ValueError("stream ends before its codes do (truncated or corrupt)")
        return symbols


def stream_decoder(source) -> StreamDecoder:
    """A decoder for a stream's bytes; anything else with the same decode(family, probabilities) method (the
    sampler) is used as it is, so sampling runs through the very same loops as decoding."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return CStreamDecoder(bytes(source)) if c_coder() else StreamDecoder(bytes(source))
    return source


class WavefrontState(Protocol):
    """What the level loop needs of a level's state (intprior.LevelState, npprior.LevelState)."""
    fronts: list[tuple[int, int]]

    def probabilities(self, start: int, stop: int) -> np.ndarray: ...
    def segments(self, start: int) -> list[tuple[int, int, int]]: ...
    def paint(self, start: int, stop: int, codes: np.ndarray) -> None: ...


def decode_fronts(state: WavefrontState, decoders: Sequence, paint=None) -> None:
    """Decode every wavefront of a level's state in turn, each tile's positions from its own decoder, painting the
    codes in (`paint(start, stop, codes)`, default the state's: a caller on another device converts first)."""
    categorical = family()
    paint = paint or state.paint
    for start, stop in state.fronts:
        probabilities = state.probabilities(start, stop)
        symbols = np.empty(stop - start, dtype=np.int64)
        for tile, a, b in state.segments(start):
            symbols[a - start:b - start] = decoders[tile].decode(categorical, probabilities[a - start:b - start])
        paint(start, stop, symbols)


def decode_groups(prior, decoder, context, positions: int, chunk: int = STAGE_CHUNK) -> list[np.ndarray]:
    """A refinement stage's groups from one stream: each group's codes (positions,) int64 in raster order,
    `chunk` positions at a time, the group after the first predicted from the one before (`prior.group_context`)."""
    categorical = family()
    return _run_groups(prior, context, positions, chunk,
                       lambda group, a, b, probabilities: decoder.decode(categorical, probabilities))


# choose(group, start, stop, probabilities (stop - start, K)) -> the codes of those positions of the group
GroupStep = Callable[[int, int, int, np.ndarray], np.ndarray]


def _run_groups(prior, context, positions: int, chunk: int, step: GroupStep) -> list[np.ndarray]:
    """The refinement stage's loop, decoding and encoding alike: group after group, each `chunk` positions at a
    time in raster order, the group after the first predicted from the one before (`prior.group_context`)."""
    previous, groups = None, []
    for group in range(prior.groups):
        context = prior.group_context(context, group, previous)
        codes = np.empty(positions, dtype=np.int64)
        for a, b in spans(positions, chunk):
            codes[a:b] = step(group, a, b, prior.group_probabilities(context[a:b], group))
        groups.append(codes)
        previous = _as_context_index(context, codes)
    return groups


def new_encoder() -> StreamEncoder:
    return StreamEncoder()


def encode_probabilities(encoder: StreamEncoder, symbols: np.ndarray, probabilities: np.ndarray) -> float:
    """Appends symbols (P,) with their probabilities (P, K), the frequencies / FREQ_TOTAL, to a queue encoder;
    returns their information in bits."""
    return encoder.add(symbols, probabilities)


def finish(encoder: StreamEncoder, bits: float) -> EncodedLevel:
    """A queue encoder's stream as bytes (little-endian 32-bit words)."""
    return EncodedLevel(encoder.data(), bits)


def encode_ordered(state: WavefrontState, symbols: np.ndarray, chunk: int = ENCODE_CHUNK) -> EncodedLevel:
    """A level's known codes, in decoding order and painted onto `state` already, into one stream: `chunk`
    positions at a time (memory stays at one chunk's (chunk, K) table however large the grid), each position's
    probabilities from the canvas as the decoder will have painted it."""
    encoder, bits = new_encoder(), 0.0
    for start, stop in spans(len(symbols), chunk):
        bits += encode_probabilities(encoder, symbols[start:stop], state.probabilities(start, stop))
    return finish(encoder, bits)


def encode_groups(prior, context, positions: int, choose: GroupStep, chunk: int = STAGE_CHUNK
                  ) -> tuple[list[np.ndarray], EncodedLevel]:
    """A refinement stage into one stream, in `decode_groups`'s order: choose(group, start, stop, probabilities)
    gives the codes of those positions (known ones, or chosen under these probabilities: a group's probabilities
    depend only on codes already chosen). Returns each group's codes (positions,) and the stream."""
    encoder, bits = new_encoder(), 0.0

    def step(group: int, start: int, stop: int, probabilities: np.ndarray) -> np.ndarray:
        nonlocal bits
        codes = choose(group, start, stop, probabilities)
        bits += encode_probabilities(encoder, codes, probabilities)
        return codes

    groups = _run_groups(prior, context, positions, chunk, step)
    return groups, finish(encoder, bits)


def _as_context_index(context, codes: np.ndarray):
    """The codes as the prior indexes with them: numpy for a numpy context, a tensor for a tensor's."""
    if isinstance(context, np.ndarray):
        return codes
    import torch

    return torch.from_numpy(codes)

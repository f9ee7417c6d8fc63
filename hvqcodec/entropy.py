"""Range coding of code grids with the integer priors (constriction's queue coder, decode order = encode order)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import constriction
import numpy as np
import torch

from .intprior import FREQ_TOTAL, IntLevelPrior, LevelState

# Positions per batch in the encoder's parallel pass: bounds memory on large grids, changes no result.
ENCODE_CHUNK = 8192


def _family() -> "constriction.stream.model.Categorical":
    # perfect=False always, explicitly: the quantisation of our (exact, dyadic) probabilities is then fixed.
    return constriction.stream.model.Categorical(perfect=False)


def _probabilities(freq: torch.Tensor) -> np.ndarray:
    return (freq.cpu().double() / FREQ_TOTAL).numpy()


@dataclass
class EncodedLevel:
    data: bytes
    cross_entropy_bits: float  # -sum log2 p(code) under the integer prior


def level_frequencies(prior: IntLevelPrior, codes: torch.Tensor, upper_codes: Sequence[torch.Tensor],
                      chunk: int = ENCODE_CHUNK) -> tuple[torch.Tensor, LevelState]:
    """Frequencies (h*w, K) of every position of a known grid, in wavefront order, in a parallel pass."""
    state = LevelState(prior, [tuple(codes.shape)], [upper_codes])
    total = state.order.numel()
    state.paint(0, total, codes.to(prior.device).flatten()[state.order])
    freq = torch.cat([state.frequencies(s, min(s + chunk, total)) for s in range(0, total, chunk)])
    return freq, state


def encode_level(prior: IntLevelPrior, codes: torch.Tensor, upper_codes: Sequence[torch.Tensor]) -> EncodedLevel:
    """Code grid (h, w) -> range-coded bytes (little-endian 32-bit words)."""
    freq, state = level_frequencies(prior, codes, upper_codes)
    symbols = state.canvas[state.centres]
    chosen = freq.gather(1, symbols[:, None]).double()
    bits = float(-(torch.log2(chosen / FREQ_TOTAL)).sum())
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(symbols.cpu().numpy().astype(np.int32), _family(), _probabilities(freq))
    return EncodedLevel(encoder.get_compressed().astype("<u4").tobytes(), bits)


def decode_level(prior: IntLevelPrior, streams: Sequence[bytes], sizes: Sequence[tuple[int, int]],
                 upper_codes: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """Range-coded streams of several tiles -> their code grids, all tiles advancing one wavefront per step."""
    decoders = []
    for data in streams:
        if len(data) % 4:
            raise ValueError("range-coded stream length is not a multiple of 4")
        decoders.append(constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32)))
    state = LevelState(prior, sizes, upper_codes)
    family = _family()
    for start, stop in state.fronts:
        probabilities = _probabilities(state.frequencies(start, stop))
        symbols = np.empty(stop - start, dtype=np.int64)
        for tile, a, b in state.segments(start):
            symbols[a - start:b - start] = decoders[tile].decode(family, probabilities[a - start:b - start])
        state.paint(start, stop, torch.from_numpy(symbols).to(prior.device))
    return state.codes()

"""Range coding of code grids with the integer priors (constriction's queue coder, decode order = encode order)."""
from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch

from .intprior import IntLevelPrior, IntStagePrior, LevelState, coder_probabilities
from .rangecoding import (ENCODE_CHUNK, EXHAUSTED_BITS_MAX, STAGE_CHUNK, EncodedLevel,  # noqa: F401 (part of
                          StreamDecoder, decode_fronts, decode_groups, encode_groups, encode_ordered,  # this
                          encode_probabilities, family, finish, new_encoder, spans,  # module's interface)
                          stream_decoder)
# Positions per decoding step (on average) from which the wavefront loop keeps all intra-op threads: measured
# with 2 threads, one or two 1024-pixel tiles (up to ~130 positions a step) decode faster on one thread, four
# (~260) faster on two.
PARALLEL_STEP_POSITIONS = 192


def _known_state(prior: IntLevelPrior, codes: torch.Tensor, upper_codes: Sequence[torch.Tensor],
                 state: LevelState | None = None) -> tuple[LevelState, torch.Tensor]:
    """A level's state with a known grid painted in (the encoder's view), and its codes in decoding order.
    `state`: one made earlier for the same upper codes and grid size, painted over (its conditioning, the
    costly part, depends on the upper codes only)."""
    if state is None:
        state = LevelState(prior, [tuple(codes.shape)], [upper_codes])
    symbols = codes.to(prior.device).flatten()[state.order]
    state.paint(0, symbols.numel(), symbols)
    return state, symbols


def _chunks(state: LevelState, chunk: int) -> list[tuple[int, int]]:
    """[start, stop) of consecutive runs of at most `chunk` positions, in decoding order."""
    return spans(state.order.numel(), chunk)


def level_frequencies(prior: IntLevelPrior, codes: torch.Tensor, upper_codes: Sequence[torch.Tensor],
                      chunk: int = ENCODE_CHUNK) -> tuple[torch.Tensor, LevelState]:
    """Frequencies (h*w, K) of every position of a known grid, in wavefront order, in a parallel pass."""
    state, _ = _known_state(prior, codes, upper_codes)
    freq = torch.cat([state.frequencies(a, b) for a, b in _chunks(state, chunk)])
    return freq, state


def candidate_frequencies(prior: IntLevelPrior, codes: torch.Tensor, upper_codes: Sequence[torch.Tensor],
                          candidates: torch.Tensor, chunk: int = ENCODE_CHUNK) -> tuple[torch.Tensor, LevelState]:
    """Frequencies (h*w, n) of n candidate codes per position (`candidates` (h*w, n), raster order), each
    position's context being the known grid `codes`: a parallel pass, chunk by chunk (bounded memory). Also
    the level's state, for `encode_level` to reuse once the codes are chosen."""
    state, _ = _known_state(prior, codes, upper_codes)
    in_order = candidates.to(prior.device)[state.order]
    picked = torch.empty(in_order.shape, dtype=torch.float64, device=prior.device)
    for start, stop in _chunks(state, chunk):
        picked[start:stop] = state.frequencies(start, stop).gather(1, in_order[start:stop]).double()
    raster = torch.empty_like(picked)
    raster[state.order] = picked
    return raster, state


def _encode_chunk(encoder, symbols: torch.Tensor, freq: torch.Tensor) -> float:
    """Appends symbols (P,) with their frequencies (P, K) to a queue encoder; returns their information in bits."""
    return encode_probabilities(encoder, symbols.cpu().numpy(), coder_probabilities(freq))


def _range_encode(symbols: torch.Tensor, freq: torch.Tensor) -> EncodedLevel:
    """Symbols (P,) with their frequencies (P, K) -> range-coded bytes in one call (the reference the chunked
    encoders must equal)."""
    encoder = new_encoder()
    return finish(encoder, _encode_chunk(encoder, symbols, freq))


@contextlib.contextmanager
def one_thread():
    """Run the enclosed torch work on one intra-op thread, then restore the thread count. A decoding step's
    operations are small (a wavefront of a few dozen positions), so a second thread only adds a
    synchronisation per operation, and each one waits for a core whenever another program is busy
    (`benchmarks/busy_machine.py`). The conditioning, the refinement stages and the autoencoder keep their
    threads."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def encode_level(prior: IntLevelPrior, codes: torch.Tensor, upper_codes: Sequence[torch.Tensor],
                 chunk: int = ENCODE_CHUNK, state: LevelState | None = None) -> EncodedLevel:
    """Code grid (h, w) -> range-coded bytes (little-endian 32-bit words).

    Frequencies are computed and coded chunk by chunk, in decoding order, so memory stays at one chunk's
    (chunk, K) table however large the grid (a 1024 x 1024 tile's bottom level would need 270 MB at once).
    `state`: the level's state from `candidate_frequencies` with the same upper codes (saves its conditioning)."""
    state, symbols = _known_state(prior, codes, upper_codes, state)
    return encode_ordered(state, symbols.cpu().numpy().astype(np.int32), chunk)


def stage_frequencies(prior: IntStagePrior, codes: Sequence[torch.Tensor], stage_codes: torch.Tensor) -> torch.Tensor:
    """Frequencies (G, h*w, K) of a known refinement stage (G, h, w) given one tile's earlier code grids."""
    context, previous, freqs = prior.context(codes), None, []
    for group in range(prior.groups):
        context = prior.group_context(context, group, previous)
        freqs.append(torch.cat([prior.group_head(context[a:b], group) for a, b in spans(context.shape[0], STAGE_CHUNK)]))
        previous = stage_codes[group].flatten()
    return torch.stack(freqs)


def encode_stage(prior: IntStagePrior, codes: Sequence[torch.Tensor], stage_codes: torch.Tensor,
                 frequencies: torch.Tensor | None = None) -> EncodedLevel:
    """A refinement stage's codes (G, h, w) -> range-coded bytes: group after group, each in raster order,
    chunk by chunk (a queue coder: the same bytes as one call).

    frequencies: the stage's (G, h*w, K) frequencies if the caller has them already (entropy-constrained
    selection computes exactly these while it chooses the codes)."""
    if frequencies is None:  # the decoder's own loop (`rangecoding.encode_groups`), the codes known
        known = [group.flatten().cpu().numpy() for group in stage_codes]
        _, stream = encode_groups(prior, prior.context(codes), known[0].size,
                                  lambda group, start, stop, _: known[group][start:stop], STAGE_CHUNK)
        return stream
    encoder, bits = new_encoder(), 0.0
    for group in range(prior.groups):
        symbols = stage_codes[group].flatten()
        for a, b in spans(symbols.numel(), STAGE_CHUNK):
            bits += _encode_chunk(encoder, symbols[a:b], frequencies[group, a:b])
    return finish(encoder, bits)


def decode_stage(prior: IntStagePrior, data, codes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Range-coded bytes of one tile's refinement stage -> its codes (G, h, w)."""
    h, w = codes[2].shape[-2:]
    groups = decode_groups(prior, stream_decoder(data), prior.context(codes), h * w, STAGE_CHUNK)
    return torch.stack([torch.from_numpy(group).view(h, w) for group in groups]).to(codes[2].device)


def decode_level(prior: IntLevelPrior, streams: Sequence[bytes], sizes: Sequence[tuple[int, int]],
                 upper_codes: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """Range-coded streams of several tiles -> their code grids, all tiles advancing one wavefront per step.

    A step of one or two tiles is a few dozen positions: its operations run on one thread (`one_thread`).
    Several tiles in lockstep make steps of hundreds of positions, which the threads share with profit
    (a 12-megapixel image's levels with 2 threads took about two thirds of the one-thread time)."""
    decoders = [stream_decoder(data) for data in streams]
    state = LevelState(prior, sizes, upper_codes)
    # With the C step function a step's torch work is only painting the codes in: one thread always (woken for
    # that, torch's OpenMP threads would then spin beside the C function's helper thread).
    serial = (state.order.numel() < PARALLEL_STEP_POSITIONS * max(1, len(state.fronts))
              or (prior.kernel is not None and prior.temperature_milli == 1000))
    cpu = prior.device.type == "cpu"
    with one_thread() if cpu and serial else contextlib.nullcontext():
        decode_fronts(state, decoders, None if cpu else
                      lambda start, stop, symbols: state.paint(start, stop, torch.from_numpy(symbols).to(prior.device)))
    return state.codes()

"""The range coder in C (`_stepkernel`'s stream coders, hvqcodec/_rangecoder.h): the very words constriction
writes and the very symbols it reads, for rows of exact frequencies; a level's wavefronts decoded and encoded in
one C call give the Python loops' codes and bytes; a truncated or garbage stream is an error, not endless
garbage."""
from __future__ import annotations

import constriction
import numpy as np
import pytest

from hvqcodec import npprior, rangecoding, stepkernel, tensorfile
from hvqcodec.manifest import model_entry
from hvqcodec.wavefront import level_blocks

pytestmark = pytest.mark.skipif(not rangecoding.c_coder(), reason="the C module is not built")

TOTAL = 1 << 20


def frequency_rows(rng: np.random.Generator, count: int, codes: int) -> np.ndarray:
    """(count, codes) exact integer frequencies >= 1 summing to 2^20, of several shapes: flat, peaked, one code
    with almost everything, random."""
    rows = np.empty((count, codes), dtype=np.int64)
    for r in range(count):
        kind = r % 4
        if kind == 0:
            weights = np.ones(codes)
        elif kind == 1:
            weights = rng.dirichlet(np.full(codes, 0.05)) + 1e-300
        elif kind == 2:
            weights = np.zeros(codes)
            weights[rng.integers(codes)] = 1.0
        else:
            weights = rng.random(codes) ** 3
        row = 1 + np.floor(weights / weights.sum() * (TOTAL - codes)).astype(np.int64)
        row += np.bincount(rng.integers(codes, size=TOTAL - row.sum()), minlength=codes)
        rows[r] = row
    assert (rows >= 1).all() and (rows.sum(1) == TOTAL).all()
    return rows


def constriction_words(symbols: np.ndarray, probabilities: np.ndarray) -> bytes:
    encoder = constriction.stream.queue.RangeEncoder()
    if len(symbols):
        encoder.encode(symbols.astype(np.int32), rangecoding.family(), probabilities)
    return encoder.get_compressed().astype("<u4").tobytes()


@pytest.mark.parametrize("codes", [2, 3, 17, 256, 512, 1000])
@pytest.mark.parametrize("count", [0, 1, 5, 3000])
def test_same_words_and_symbols_as_constriction(codes, count):
    rng = np.random.default_rng(codes * 7919 + count)
    rows = frequency_rows(rng, count, codes)
    probabilities = rows / TOTAL
    # Likely codes mostly, the least likely ones often (many renormalisations and carries).
    symbols = np.where(rng.random(count) < 0.3, rows.argmin(1),
                       (rng.random((count, 1)) * TOTAL < rows.cumsum(1)).argmax(1)).astype(np.int64)
    encoder = rangecoding.StreamEncoder()
    assert encoder.handle is not None
    bits = encoder.add(symbols[:count // 2], probabilities[:count // 2])
    bits += encoder.add(symbols[count // 2:], probabilities[count // 2:])
    data = encoder.data()
    assert data == constriction_words(symbols, probabilities)
    expected_bits = -np.log2(probabilities[np.arange(count), symbols]).sum()
    assert bits == pytest.approx(expected_bits, rel=1e-12, abs=1e-9)
    decoder = rangecoding.stream_decoder(data)
    assert isinstance(decoder, rangecoding.CStreamDecoder)
    decoded = decoder.decode(rangecoding.family(), probabilities) if count else np.empty(0, dtype=np.int64)
    assert np.array_equal(decoded, symbols)
    reference = rangecoding.StreamDecoder(data)
    assert np.array_equal(reference.decode(rangecoding.family(), probabilities), symbols)


def test_an_encoder_goes_on_after_its_bytes_are_taken():
    rng = np.random.default_rng(1)
    rows = frequency_rows(rng, 200, 64)
    symbols = rng.integers(64, size=200)
    encoder = rangecoding.StreamEncoder()
    encoder.add(symbols[:100], rows[:100] / TOTAL)
    assert encoder.data() == constriction_words(symbols[:100], rows[:100] / TOTAL)
    encoder.add(symbols[100:], rows[100:] / TOTAL)
    assert encoder.data() == constriction_words(symbols, rows / TOTAL)


def test_constriction_can_be_chosen(monkeypatch):
    monkeypatch.setenv("HVQ_RANGE_CODER", "constriction")
    assert not rangecoding.c_coder()
    assert rangecoding.StreamEncoder().handle is None
    assert isinstance(rangecoding.stream_decoder(b""), rangecoding.StreamDecoder)


@pytest.mark.parametrize("cut", ["truncated", "garbage", "empty"])
def test_a_damaged_stream_fails_soon(cut):
    """Reading on past a stream's end is charged its information: EXHAUSTED_BITS_MAX bits at most, then the same
    error as the Python decoder's."""
    rng = np.random.default_rng(2)
    rows = np.full((4000, 512), TOTAL // 512)  # 9 bits a code: the error comes after 11 codes past the end
    symbols = rng.integers(512, size=4000)
    data = constriction_words(symbols, rows / TOTAL)
    damaged = {"truncated": data[:len(data) // 2 // 4 * 4], "empty": b"",
               "garbage": rng.integers(0, 256, size=len(data) // 8 * 4, dtype=np.uint8).tobytes()}[cut]
    decoder = rangecoding.stream_decoder(damaged)
    with pytest.raises(ValueError, match="stream ends before its codes do"):
        for start in range(0, 4000, 100):
            decoder.decode(rangecoding.family(), rows[start:start + 100] / TOTAL)
    with pytest.raises(ValueError, match="multiple of 4"):
        rangecoding.stream_decoder(data[:-1])


def shipped_level(level: int, threads: int = 1) -> npprior.LevelPrior:
    entry = model_entry(None)
    payload = tensorfile.load(entry.path)
    config = {**payload["prior_config"], **(entry.coding or {})}
    block = level_blocks(config["coding_block"])[level]
    return npprior.LevelPrior(payload["prior_tables"], level, config["causal_blocks"], config["cond_blocks"], block,
                              threads)


@pytest.mark.skipif(not stepkernel.int8_available(), reason="the level loops run on the int8 path")
@pytest.mark.parametrize("threads", [1, 2])
def test_level_loops_in_c_are_the_python_loops(threads):
    """Two tiles of the shipped model's mid level (codes from a random upper grid): encode_level's bytes are
    encode_ordered's (constriction), and encode_reusing's from frequencies known under other codes (computed again
    where a neighbour changed), decode_level paints the codes back (with a helper thread on wavefronts of
    HELPER_MIN_POSITIONS (32) or more where threads is 2: the first tile's 12 coding blocks give fronts of up to 135),
    and the candidates' probabilities are the full table's."""
    prior = shipped_level(1, threads)
    rng = np.random.default_rng(3)
    sizes = [(48, 128), (16, 8)]
    uppers = [[rng.integers(prior.codebook_size, size=(h // 2, w // 2))] for h, w in sizes]
    grids = [rng.integers(prior.codebook_size, size=size) for size in sizes]
    streams = []
    for size, upper, grid in zip(sizes, uppers, grids):
        state = npprior.LevelState(prior, [size], [upper])
        symbols = grid.reshape(-1)[state.order]
        state.paint(0, len(symbols), symbols)
        ours = state.encode(symbols)
        theirs = rangecoding.encode_ordered(state, symbols)
        assert ours.data == theirs.data and ours.cross_entropy_bits == pytest.approx(theirs.cross_entropy_bits)
        candidates = rng.integers(prior.codebook_size, size=(len(symbols), 5))
        table = state.probabilities(0, len(symbols))
        below = np.empty(candidates.shape, np.uint32)
        assert np.array_equal(state.candidate_probabilities(0, candidates, below),
                              np.take_along_axis(table, candidates, 1))
        frequencies = np.rint(table * TOTAL).astype(np.int64)
        assert np.array_equal(below, np.take_along_axis(frequencies.cumsum(1) - frequencies, candidates, 1))
        # The same stream from frequencies known under other codes, computed again where a neighbour changed.
        other = np.where(rng.random(len(symbols)) < 0.2, rng.integers(prior.codebook_size, size=len(symbols)),
                         symbols)
        state.paint(0, len(symbols), other)
        known_below = np.empty((len(symbols), 1), np.uint32)
        known = np.rint(state.candidate_probabilities(0, symbols[:, None], known_below)[:, 0] * TOTAL)
        state.paint(0, len(symbols), symbols)
        stale = state.stale_positions(other != symbols)
        assert 0 < stale.mean() < 1
        reused = state.encode_reusing(symbols, known_below[:, 0], known.astype(np.uint32), stale)
        assert reused.data == ours.data and reused.cross_entropy_bits == ours.cross_entropy_bits
        streams.append(ours.data)
    state = npprior.LevelState(prior, sizes, uppers)
    state.decode([rangecoding.stream_decoder(data) for data in streams])
    assert all(np.array_equal(a, b) for a, b in zip(state.codes(), grids))
    # A stream cut short fails, as the Python loop does.
    state = npprior.LevelState(prior, sizes, uppers)
    with pytest.raises(ValueError, match="stream ends before its codes do"):
        state.decode([rangecoding.stream_decoder(streams[0][:8]), rangecoding.stream_decoder(streams[1])])


def test_a_first_word_no_interval_holds_is_an_error():
    """The one stream constriction refuses outright (its first quantile past 2^24): a ValueError here."""
    data = np.array([0xFFFFFFFF, 0xFF000000], dtype="<u4").tobytes()
    with pytest.raises(ValueError, match="stream ends before its codes do"):
        rangecoding.stream_decoder(data).decode(rangecoding.family(), np.full((1, 4), 0.25))

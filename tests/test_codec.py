import io

import numpy as np
import pytest
import torch
from PIL import Image

import hvqcodec
from hvqcodec import container
from hvqcodec.codec import Codec
from hvqcodec.entropy import StreamDecoder, candidate_frequencies, decode_level, encode_level, level_frequencies
from hvqcodec.intprior import FREQ_TOTAL, LevelState, block_shape

from conftest import synthetic_image


def random_photo(seed, height, width):
    """Smooth structure plus noise, so codes vary."""
    base = synthetic_image(seed, height, width).astype(np.int16)
    noise = np.random.default_rng(seed).integers(-20, 21, size=base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("height,width", [(1, 1), (17, 33), (48, 80)])
def test_round_trip_codes_and_pixels(tiny_codec, height, width):
    rgb = random_photo(height * width, height, width)
    result = tiny_codec.compress(Image.fromarray(rgb))
    decoded = tiny_codec.decompress(result.data)
    codes = tiny_codec.encode_codes(rgb)
    assert len(decoded.codes) == 1
    for got, expected in zip(decoded.codes[0], codes):
        assert torch.equal(got, expected)
    assert decoded.image.size == (width, height) and decoded.image.mode == "RGB"
    assert np.array_equal(np.asarray(decoded.image), tiny_codec.decode_codes(codes, height, width))
    assert decoded.warnings == []


def test_file_bits_match_cross_entropy_and_header_is_small(tiny_codec):
    rgb = random_photo(1, 128, 192)
    result = tiny_codec.compress(Image.fromarray(rgb))
    assert result.header_bytes <= 64
    for nbytes, bits in zip(result.level_bytes, result.cross_entropy_bits):
        # The range coder adds at most one 32-bit word of flush plus a sliver per symbol.
        assert bits / 8 <= nbytes <= bits / 8 * 1.01 + 8


def test_progress_follows_tiles_and_streams(tiny_codec):
    """compress reports each tile as it is coded; decompress each stream (all tiles together), then each
    tile's picture; the reports do not change the bytes or the picture."""
    rgb = random_photo(4, 70, 50)
    tiny_codec.tile_size = 32
    plain = tiny_codec.compress(Image.fromarray(rgb))
    calls = []
    reported = tiny_codec.compress(Image.fromarray(rgb), progress=lambda done, total: calls.append((done, total)))
    assert reported.data == plain.data
    assert calls == [(done, 6) for done in range(1, 7)]
    calls.clear()
    decoded = tiny_codec.decompress(plain.data, progress=lambda done, total: calls.append((done, total)))
    streams = container.read_header(plain.data).levels
    assert calls == [(done, streams + 6) for done in range(1, streams + 7)]
    assert np.array_equal(np.asarray(decoded.image), np.asarray(tiny_codec.decompress(plain.data).image))


def test_tiles_round_trip(tiny_codec):
    rgb = random_photo(2, 70, 50)
    tiny_codec.tile_size = 32  # small tiles, so that a small image has several
    result = tiny_codec.compress(Image.fromarray(rgb))
    header = container.read_header(result.data)
    assert (header.tile_size, header.num_tiles) == (32, 6)
    decoded = tiny_codec.decompress(result.data)
    assert decoded.image.size == (50, 70)
    tile = rgb[32:64, 32:50]
    assert np.array_equal(np.asarray(decoded.image)[32:64, 32:50],
                          tiny_codec.decode_codes(tiny_codec.encode_codes(tile), 32, 18))
    # The codes compress reports are the ones decoded: the same picture without range decoding, any prefix.
    assert result.tile_size == 32 and len(result.codes) == 6
    assert all(torch.equal(a, b) for coded, read in zip(result.codes, decoded.codes) for a, b in zip(coded, read))
    assert np.array_equal(tiny_codec.reconstruct(result.codes, 50, 70, 32), np.asarray(decoded.image))
    preview = tiny_codec.decompress(result.data, levels=2).image
    assert np.array_equal(tiny_codec.reconstruct([c[:2] for c in result.codes], 50, 70, 32), np.asarray(preview))


def _frequencies_by_wavefront(prior, codes, upper):
    state = LevelState(prior, [tuple(codes.shape)], [upper])
    in_order = codes.flatten()[state.order]
    out = []
    for start, stop in state.fronts:
        out.append(state.frequencies(start, stop))
        state.paint(start, stop, in_order[start:stop])
    assert torch.equal(state.codes()[0], codes)
    return torch.cat(out)


def test_wavefronts_are_causal_and_complete(tiny_codec):
    prior = tiny_codec.prior.levels[2]
    state = LevelState(prior, [(3, 4), (2, 6)], [[torch.zeros(1, 1, dtype=torch.long)] * 2] * 2)
    assert sorted(state.order.tolist()) == list(range(24))
    # Within a wavefront every position's causal neighbours were painted on earlier wavefronts.
    painted = torch.zeros_like(state.canvas, dtype=torch.bool)
    painted[state.canvas == prior.codebook_size] = True  # sentinels (separators, borders) read as "absent"
    painted[state.centres] = False
    for start, stop in state.fronts:
        assert bool(painted[state.neighbours[start:stop]].all())
        painted[state.centres[start:stop]] = True


@pytest.mark.parametrize("fixture", ["tiny_codec", "ladder_codec"])  # the second with sub-position conditioning
def test_tiles_in_lockstep_equal_tiles_alone(request, fixture):
    tiny_codec = request.getfixturevalue(fixture)
    rgb_tiles = [random_photo(7, 40, 56), random_photo(8, 24, 32)]
    streams, expected, sizes, uppers = [], [], [], []
    for rgb in rgb_tiles:
        codes = tiny_codec.encode_codes(rgb)
        encoded = encode_level(tiny_codec.prior.levels[2], codes[2], codes[:2])
        alone = decode_level(tiny_codec.prior.levels[2], [encoded.data], [tuple(codes[2].shape)], [codes[:2]])
        assert torch.equal(alone[0], codes[2])
        streams.append(encoded.data)
        expected.append(codes[2])
        sizes.append(tuple(codes[2].shape))
        uppers.append(codes[:2])
    together = decode_level(tiny_codec.prior.levels[2], streams, sizes, uppers)
    assert all(torch.equal(a, b) for a, b in zip(together, expected))


def test_encode_level_reuses_the_selection_pass_state(tiny_codec):
    """The encoder codes the bottom level with the state its entropy-constrained selection made for other codes
    (the nearest ones): painted over, it gives exactly the bytes of a fresh state, and the candidates'
    frequencies are those of a full parallel pass over the context grid."""
    prior = tiny_codec.prior.levels[2]
    codes = tiny_codec.encode_codes(random_photo(5, 40, 56))
    context = torch.randint(0, prior.codebook_size, codes[2].shape, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(context, codes[2])
    candidates = torch.stack([context.flatten(), codes[2].flatten()], 1)
    picked, state = candidate_frequencies(prior, context, codes[:2], candidates)
    full, order_state = level_frequencies(prior, context, codes[:2])
    raster = torch.empty_like(full)
    raster[order_state.order] = full
    assert torch.equal(picked, raster.gather(1, candidates).double())
    assert encode_level(prior, codes[2], codes[:2], state=state).data == encode_level(prior, codes[2], codes[:2]).data


def test_wavefront_loop_runs_on_one_thread_and_restores_the_count(tiny_codec, monkeypatch):
    """The decoder's steps run on one intra-op thread (small operations: a second thread only synchronises),
    and the caller's thread count comes back afterwards, also when decoding fails; steps of many positions
    (tiles in lockstep) keep the threads."""
    import hvqcodec.entropy as entropy

    codes = tiny_codec.encode_codes(random_photo(3, 32, 48))
    encoded = encode_level(tiny_codec.prior.levels[2], codes[2], codes[:2])

    class Recording:
        def __init__(self, data):
            self.decoder, self.threads = StreamDecoder(data), set()

        def decode(self, family, probabilities):
            self.threads.add(torch.get_num_threads())
            return self.decoder.decode(family, probabilities)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        recording = Recording(encoded.data)
        decoded = decode_level(tiny_codec.prior.levels[2], [recording], [tuple(codes[2].shape)], [codes[:2]])
        assert torch.equal(decoded[0], codes[2])
        assert recording.threads == {1} and torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="stream ends before its codes do"):  # fails inside the loop
            decode_level(tiny_codec.prior.levels[2], [b"\x00" * 4], [tuple(codes[2].shape)], [codes[:2]])
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(entropy, "PARALLEL_STEP_POSITIONS", 1)  # as if the steps were large
        level = tiny_codec.prior.levels[2]
        if level.kernel is not None:  # the C step function: torch only paints, on one thread, however large
            recording = Recording(encoded.data)
            decoded = decode_level(level, [recording], [tuple(codes[2].shape)], [codes[:2]])
            assert torch.equal(decoded[0], codes[2]) and recording.threads == {1}
            monkeypatch.setattr(level, "kernel", None)
        recording = Recording(encoded.data)  # the torch step function shares large steps between the threads
        decoded = decode_level(level, [recording], [tuple(codes[2].shape)], [codes[:2]])
        assert torch.equal(decoded[0], codes[2]) and recording.threads == {2}
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("fixture", ["tiny_codec", "ladder_codec"])  # the second with sub-position conditioning
def test_parallel_equals_wavefront_and_threads_and_permutation(request, fixture):
    tiny_codec = request.getfixturevalue(fixture)
    codes = tiny_codec.encode_codes(random_photo(3, 64, 96))
    assert [prior.cond_positions for prior in tiny_codec.prior.levels[1:]] == [1 if fixture == "tiny_codec" else 4] * 2
    for level, prior in enumerate(tiny_codec.prior.levels):
        upper = codes[:level]
        parallel, state = level_frequencies(prior, codes[level], upper)
        assert parallel.dtype == torch.float64 and torch.equal(parallel, parallel.floor())  # integers
        assert torch.all(parallel >= 1) and torch.all(parallel.sum(1) == FREQ_TOTAL)
        assert torch.equal(parallel, _frequencies_by_wavefront(prior, codes[level], upper))
        assert torch.equal(parallel, level_frequencies(prior, codes[level], upper, chunk=7)[0])
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            single = level_frequencies(prior, codes[level], upper)[0]
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(parallel, single)
        # A permuted batch of positions gives each position the same frequencies.
        perm = torch.randperm(parallel.shape[0], generator=torch.Generator().manual_seed(level))
        permuted = prior.frequencies(state.canvas, state.neighbours[perm], state.upper[perm], state.cond)
        assert torch.equal(parallel[perm], permuted)


def test_previews_and_truncation(tiny_codec):
    rgb = random_photo(4, 64, 64)
    result = tiny_codec.compress(Image.fromarray(rgb))
    codes = tiny_codec.encode_codes(rgb)
    for levels in (1, 2):
        decoded = tiny_codec.decompress(result.data, levels=levels)
        assert decoded.levels == levels
        assert np.array_equal(np.asarray(decoded.image), tiny_codec.decode_codes(codes[:levels], 64, 64))
    header = container.read_header(result.data)
    cut = header.header_size + sum(header.stream_lengths[0]) + sum(header.stream_lengths[1]) + 2
    decoded = tiny_codec.decompress(result.data[:cut])
    assert decoded.levels == 2 and "truncated" in decoded.warnings[0]
    assert np.array_equal(np.asarray(decoded.image), tiny_codec.decode_codes(codes[:2], 64, 64))


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P"])
def test_image_modes_round_trip(tiny_codec, mode):
    rgb = random_photo(5, 33, 21)
    image = Image.fromarray(rgb).convert(mode)
    if mode in ("RGBA", "LA"):
        alpha = np.random.default_rng(0).integers(0, 256, size=(33, 21), dtype=np.uint8)
        image.putalpha(Image.fromarray(alpha))
    decoded = tiny_codec.decompress(tiny_codec.compress(image).data).image
    assert decoded.size == image.size
    assert decoded.mode == {"P": "RGB"}.get(mode, mode)
    if mode in ("RGBA", "LA"):
        assert np.array_equal(np.asarray(decoded)[..., -1], alpha)  # alpha is lossless


def test_api_functions(tiny_models_dir):
    rgb = random_photo(6, 40, 40)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    data = hvqcodec.compress(buffer.getvalue())
    assert data == hvqcodec.compress(Image.fromarray(rgb))  # deterministic
    image = hvqcodec.decompress(data)
    assert image.size == (40, 40)


def test_model_without_priors_is_refused(tiny_models_dir):
    from hvqcodec.errors import ModelError
    from hvqcodec.zoo import load_bundle

    bundle = load_bundle("tiny")
    bundle.prior_tables = None
    with pytest.raises(ModelError, match="no trained priors"):
        Codec(bundle)


@pytest.mark.parametrize("block", [0, 4, 5, (4, 6), (3, 0), (0, 5)])
def test_coding_blocks_are_causal_lockstep_and_exact(tiny_codec, block):
    """With a coding block (N a side, or rows x columns with 0 for a tile's whole height or width), the causal
    context stops at block edges, every block of a tile advances in the same step (columns + 3 (rows - 1)
    steps), and coding stays exact: parallel pass = wavefront = decoder, tiles together = tiles alone."""
    prior = tiny_codec.prior.levels[2]
    prior.block = block
    try:
        sizes = [(12, 16), (7, 9)]
        state = LevelState(prior, sizes, [[torch.zeros(1, 1, dtype=torch.long)] * 2] * 2)
        assert sorted(state.order.tolist()) == list(range(12 * 16 + 7 * 9))
        painted = torch.zeros_like(state.canvas, dtype=torch.bool)
        painted[state.canvas == prior.codebook_size] = True
        painted[state.centres] = False
        for start, stop in state.fronts:
            assert bool(painted[state.neighbours[start:stop]].all())
            painted[state.centres[start:stop]] = True
        shapes = [block_shape(block, h, w) for h, w in sizes]
        assert len(state.fronts) == max(min(bw, w) + 3 * (min(bh, h) - 1) for (bh, bw), (h, w) in zip(shapes, sizes))
        assert len(state.fronts) == {0: 16 + 3 * 11, 4: 4 + 3 * 3, 5: 5 + 3 * 4, (4, 6): 6 + 3 * 3,
                                     (3, 0): 16 + 3 * 2, (0, 5): 5 + 3 * 11}[block]
        # No causal neighbourhood reaches into another block or tile: every neighbour is a sentinel cell or a
        # position of the same tile and block.
        owner = torch.full_like(state.canvas, -1)
        owner[state.centres] = state.tiles * 1000 + state.blocks
        read = owner[state.neighbours]
        assert bool(((read == -1) | (read == owner[state.centres][:, None])).all())
        (bh, bw), (h, w) = shapes[0], sizes[0]
        assert int(state.blocks.max()) == (-(-h // bh)) * (-(-w // bw)) - 1
        streams, expected, grids, uppers = [], [], [], []
        for seed, height, width in ((11, 48, 64), (12, 28, 36)):
            codes = tiny_codec.encode_codes(random_photo(seed, height, width))
            parallel, _ = level_frequencies(prior, codes[2], codes[:2])
            assert torch.equal(parallel, _frequencies_by_wavefront(prior, codes[2], codes[:2]))
            encoded = encode_level(prior, codes[2], codes[:2])
            streams.append(encoded.data)
            expected.append(codes[2])
            grids.append(tuple(codes[2].shape))
            uppers.append(codes[:2])
            alone = decode_level(prior, [encoded.data], [grids[-1]], [codes[:2]])
            assert torch.equal(alone[0], codes[2])
        together = decode_level(prior, streams, grids, uppers)
        assert all(torch.equal(a, b) for a, b in zip(together, expected))
    finally:
        prior.block = 0


def test_coding_block_changes_the_stream_and_comes_from_the_model(tmp_path, monkeypatch):
    """The block fixes the symbol order, so it is a property of the model (its hashed prior config), not of a
    call."""
    from hvqcodec import codec as codec_module
    from conftest import TINY_CONFIG, TINY_PRIOR, export_tiny

    folder = tmp_path / "models"
    export_tiny(folder, "tiny-blocked", TINY_CONFIG, dict(TINY_PRIOR, coding_block=4))
    monkeypatch.setenv("HVQCODEC_MODELS", str(folder))
    codec_module.load_codec.cache_clear()
    try:
        blocked = codec_module.load_codec("tiny-blocked", "cpu")
        assert [level.block for level in blocked.prior.levels] == [(4, 4)] * 3
        rgb = random_photo(13, 64, 96)
        result = blocked.compress(Image.fromarray(rgb))
        decoded = blocked.decompress(result.data)
        assert all(torch.equal(a, b) for a, b in zip(decoded.codes[0], blocked.encode_codes(rgb)))
        for level in blocked.prior.levels:
            level.block = 0
        assert blocked.compress(Image.fromarray(rgb)).data != result.data
    finally:
        codec_module.load_codec.cache_clear()


def test_export_sets_a_coding_block_per_level(tmp_path, monkeypatch):
    """`models export --coding-block` fixes each level's block into the model (the trained weights and tables are
    the same): a whole top, 4 x 4 mid blocks and 4 x 8 bottom blocks; files round-trip and differ from the
    same priors coded in whole tiles."""
    from hvqcodec import codec as codec_module
    from hvqcodec.priors import parse_coding_block
    from conftest import TINY_CONFIG, TINY_PRIOR, export_tiny

    folder = tmp_path / "models"
    monkeypatch.setenv("HVQCODEC_MODELS", str(folder))
    export_tiny(folder, "tiny-whole", TINY_CONFIG, TINY_PRIOR)
    export_tiny(folder, "tiny-levels", TINY_CONFIG, TINY_PRIOR, coding_block=parse_coding_block("0,4,4x8"))
    codec_module.load_codec.cache_clear()
    try:
        whole, levels = (codec_module.load_codec(name, "cpu") for name in ("tiny-whole", "tiny-levels"))
        assert [level.block for level in levels.prior.levels] == [(0, 0), (4, 4), (4, 8)]
        assert zoo_entry(folder, "tiny-levels")["priors"]["config"]["coding_block"] == [[0, 0], [4, 4], [4, 8]]
        rgb = random_photo(14, 80, 112)
        result = levels.compress(Image.fromarray(rgb))
        decoded = levels.decompress(result.data)
        codes = levels.encode_codes(rgb)
        assert all(torch.equal(a, b) for a, b in zip(decoded.codes[0], codes))
        # The same codes and tables; only the mid and bottom symbol orders (and so their streams) differ.
        streams = [[encode_level(codec.prior.levels[i], codes[i], codes[:i]).data for i in range(3)]
                   for codec in (whole, levels)]
        assert streams[0][0] == streams[1][0] and streams[0][1] != streams[1][1] and streams[0][2] != streams[1][2]
    finally:
        codec_module.load_codec.cache_clear()


def zoo_entry(folder, name: str) -> dict:
    from hvqcodec.zoo import read_manifest

    return read_manifest(folder)["models"][name]


@pytest.mark.parametrize("spec, message", [("-1", "use N, RxC"), ("1,2", "one entry per level"),
                                           ("4x", "use N, RxC"), ("70000", "from 0 to 65536")])
def test_coding_block_spec_errors(spec, message):
    from hvqcodec.priors import parse_coding_block

    with pytest.raises(ValueError, match=message):
        parse_coding_block(spec)


def test_chunked_level_encoding_gives_the_same_bytes(tiny_codec):
    """The encoder codes a level chunk by chunk (bounded memory): the stream is the one coded in one call."""
    from hvqcodec.entropy import _range_encode

    codes = tiny_codec.encode_codes(random_photo(14, 80, 112))
    for level, prior in enumerate(tiny_codec.prior.levels):
        freq, state = level_frequencies(prior, codes[level], codes[:level])
        whole = _range_encode(state.canvas[state.centres], freq)
        for chunk in (1, 7, 10_000):
            part = encode_level(prior, codes[level], codes[:level], chunk=chunk)
            assert part.data == whole.data
            assert part.cross_entropy_bits == pytest.approx(whole.cross_entropy_bits, rel=1e-9)


@pytest.mark.parametrize("temperature_milli", [1000, 700, 1300])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_logits_to_frequencies_is_integer_arithmetic(temperature_milli, dtype):
    """The float path (division included; logits in float64 for 16-bit tables, float32 for 8-bit ones) gives
    exactly what Python's integers give, the remainder to the first most probable code."""
    from hvqcodec.intprior import EXP_MAX, FREQ_TOTAL, logits_to_frequencies, lookup_tables

    exp_table = lookup_tables()["exp"]
    generator = torch.Generator().manual_seed(0)
    logits = torch.randint(-(1 << 15), 1 << 15, (40, 512), generator=generator)
    logits[:10] = torch.randint(-300, 300, (10, 512), generator=generator)  # many codes near the top
    logits[10, :5] = logits[10].max()  # ties for the most probable code
    logits[11] = 7  # all equal
    logits[12, -3:] = logits[12].max()  # ties at the end
    logits[13, 100] = logits[13].max() + 1  # 1 above the rest: a tie once the temperature floors the distances
    freq = logits_to_frequencies(logits.to(dtype), exp_table.double(), temperature_milli)
    k = logits.shape[1]
    for row, values in zip(freq.tolist(), logits.tolist()):
        top = max(values)
        weights = [int(exp_table[min((top - v) * 1000 // temperature_milli, EXP_MAX)]) for v in values]
        expected = [w * (FREQ_TOTAL - k) // sum(weights) + 1 for w in weights]
        expected[values.index(top)] += FREQ_TOTAL - sum(expected)
        assert row == expected


@pytest.mark.parametrize("h, w", [(7, 5), (40, 300), (3, 2100)])  # bands of several rows, of one row, one row wider than a band
def test_banded_3x3_blocks_equal_one_unfold_pass(ladder_codec, monkeypatch, h, w):
    """The 3x3 gated blocks (conditioning and stage contexts) gather their columns band by band, tap-major;
    every position gets exactly the integers of one F.unfold pass over the whole grid with the stored weights."""
    import torch.nn.functional as F

    import hvqcodec.intprior as intprior
    from hvqcodec.intprior import ACT_MAX

    prior = ladder_codec.prior.stages[0]
    monkeypatch.setattr(intprior, "BAND_POSITIONS", 64)
    x = torch.randint(-3000, 3000, (h * w, prior.channels)).to(prior.dtype)
    columns = F.unfold(x.t().reshape(1, -1, h, w), 3, padding=1)[0].t()  # (channel, tap) order, as stored
    pre = prior.linear("block0.in", columns)
    expected = (x + prior.product("block0.out", prior.gate(pre, "block0.out"))).clamp_(-ACT_MAX, ACT_MAX)
    assert torch.equal(prior.conv3x3_block("block0", x, h, w), expected)


def test_decoder_precision_choice(monkeypatch):
    """auto picks bfloat16 exactly where it is native; the variable or the caller may force either; anything
    else is a one-line error naming the choices."""
    from hvqcodec import device as device_module
    from hvqcodec.errors import HvqError

    cpu = torch.device("cpu")
    monkeypatch.delenv("HVQCODEC_DECODER_PRECISION", raising=False)
    for native in (True, False):
        monkeypatch.setattr(device_module, "native_bf16", lambda _device, native=native: native)
        assert device_module.decoder_low_precision(cpu) is native
        assert device_module.decoder_low_precision(cpu, "float32") is False
        assert device_module.decoder_low_precision(cpu, "bfloat16") is True
    monkeypatch.setenv("HVQCODEC_DECODER_PRECISION", "bfloat16")
    assert device_module.decoder_low_precision(cpu) is True
    monkeypatch.setenv("HVQCODEC_DECODER_PRECISION", "half")
    with pytest.raises(HvqError, match="decoder precision 'half'.*expected auto, float32, bfloat16"):
        device_module.decoder_low_precision(cpu)


def test_bfloat16_decoder_changes_pixels_not_codes(tiny_models_dir):
    """The same file through a float32 and a bfloat16 decoder: the same codes; pixels close (a random tiny
    model, so only roughly: the shipped model's bound is in test_shipped)."""
    from hvqcodec.codec import load_codec

    rgb = random_photo(31, 64, 96)
    exact, fast = load_codec("tiny", "cpu", "float32"), load_codec("tiny", "cpu", "bfloat16")
    data = exact.compress(Image.fromarray(rgb)).data
    ours, theirs = fast.decompress(data), exact.decompress(data)
    assert all(torch.equal(a, b) for a, b in zip(ours.codes[0], theirs.codes[0]))
    difference = np.abs(np.asarray(ours.image, dtype=np.int16) - np.asarray(theirs.image, dtype=np.int16))
    assert difference.mean() < 2 and difference.max() <= 16

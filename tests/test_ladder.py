"""The quality ladder: refinement stages, their parallel priors, entropy-constrained selection, quality."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import hvqcodec
from hvqcodec import container
from hvqcodec.autoencoder import AutoencoderConfig, HierarchicalVQVAE
from hvqcodec.codec import OperatingPoint, quality_point
from hvqcodec.entropy import stage_frequencies
from hvqcodec.intprior import FREQ_TOTAL, IntPrior, export_prior
from hvqcodec.priors import HierarchicalPrior, PriorConfig

from conftest import LADDER_CONFIG, LADDER_PRIOR, TINY_LADDER, fit_prior, synthetic_image


def photo(seed=0, height=70, width=90):
    base = synthetic_image(seed, height, width).astype(np.int16)
    noise = np.random.default_rng(seed).integers(-15, 16, size=base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@torch.no_grad()
def test_refinement_stages_are_residuals_and_every_prefix_decodes():
    torch.manual_seed(0)
    model = HierarchicalVQVAE(AutoencoderConfig(**LADDER_CONFIG))
    images = torch.rand(2, 3, 32, 48)
    with torch.enable_grad():
        model.train()(images)  # data-initialised codebooks
    model.eval()
    codes = model.encode(images)
    assert [tuple(c.shape) for c in codes] == [(2, 2, 3), (2, 4, 6), (2, 8, 12), (2, 2, 8, 12), (2, 2, 8, 12)]
    # Each stage quantises what the stages before it left over: the residual shrinks stage by stage.
    top, mid, latent = model.encode_latent(images)
    assert torch.equal(top, codes[0]) and torch.equal(mid, codes[1])
    total = model.quantisers[2].lookup(codes[2])
    errors = [float((latent - total).pow(2).mean())]
    for refiner, stage_codes in zip(model.refiners, codes[3:]):
        total = total + refiner.lookup(stage_codes)
        errors.append(float((latent - total).pow(2).mean()))
    assert errors[0] > errors[1] > errors[2]
    for n in range(1, 6):
        assert model.decode(codes[:n]).shape == (2, 3, 32, 48)
    with pytest.raises(ValueError):
        model.decode(codes + codes[-1:])


def test_refinement_dropout_keeps_a_prefix_per_sample():
    torch.manual_seed(0)
    model = HierarchicalVQVAE(AutoencoderConfig(**dict(LADDER_CONFIG, keep_all_refine=0.0))).train()
    counts = model._refine_counts(torch.zeros(4000, 3, 16, 16))
    assert set(counts.tolist()) == {0, 1}  # never all stages when keep_all_refine is 0
    model.eval()
    assert model._refine_counts(torch.zeros(3, 3, 16, 16)).tolist() == [2, 2, 2]


@pytest.mark.parametrize("streams", [1, 2, 3, 4, 5])
def test_round_trip_at_every_stream_count(ladder_codec, streams):
    rgb = photo(streams)
    point = OperatingPoint(streams)
    result = ladder_codec.compress(Image.fromarray(rgb), point=point)
    assert container.read_header(result.data).levels == streams
    decoded = ladder_codec.decompress(result.data)
    codes = ladder_codec.encode_codes(rgb, point)
    assert len(decoded.codes[0]) == streams
    for got, expected in zip(decoded.codes[0], codes):
        assert torch.equal(got, expected)
    assert np.array_equal(np.asarray(decoded.image), ladder_codec.decode_codes(codes, 70, 90))


def test_stage_streams_cost_what_the_integer_prior_says(ladder_codec):
    result = ladder_codec.compress(Image.fromarray(photo(1, 96, 128)), point=OperatingPoint(5))
    for nbytes, bits in zip(result.level_bytes[3:], result.cross_entropy_bits[3:]):
        # constriction re-quantises the probabilities slightly, so a stream may even come out a hair smaller.
        assert bits / 8 * 0.99 <= nbytes <= bits / 8 * 1.01 + 8


def test_entropy_constrained_selection_trades_bits_for_distortion(ladder_codec):
    rgb = photo(2, 96, 128)
    sizes, errors = [], []
    for lam in (0.0, 0.05, 1.0):
        point = OperatingPoint(5, lam)
        result = ladder_codec.compress(Image.fromarray(rgb), point=point)
        decoded = ladder_codec.decompress(result.data)
        codes = ladder_codec.encode_codes(rgb, point)
        assert all(torch.equal(a, b) for a, b in zip(decoded.codes[0], codes))  # any chosen code decodes exactly
        sizes.append(sum(result.cross_entropy_bits))
        errors.append(float(np.mean((np.asarray(decoded.image, dtype=float) - rgb) ** 2)))
    assert sizes[0] > sizes[1] > sizes[2]
    # Bits bought back with lambda cost distortion in latent space; in pixels a random tiny decoder is too
    # noisy a judge, so only the rate side is asserted strictly.


def test_truncated_file_decodes_its_complete_stages(ladder_codec):
    rgb = photo(3)
    result = ladder_codec.compress(Image.fromarray(rgb), point=OperatingPoint(5))
    header = container.read_header(result.data)
    body_start = header.header_size
    cut = body_start + sum(sum(lengths) for lengths in header.stream_lengths[:4])
    with pytest.warns(UserWarning, match="truncated"):
        image = hvqcodec.decompress(result.data[:cut])
    codes = ladder_codec.encode_codes(rgb, OperatingPoint(5))
    assert np.array_equal(np.asarray(image), ladder_codec.decode_codes(codes[:4], 70, 90))
    assert np.array_equal(np.asarray(ladder_codec.decompress(result.data, levels=4).image), np.asarray(image))


def test_quality_is_monotone_in_size(ladder_codec):
    rgb = Image.fromarray(photo(4, 96, 128))
    sizes = [len(hvqcodec.compress(rgb, model="tiny-ladder", quality=q)) for q in (1, 10, 30, 50, 70, 90, 100)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_quality_point_lookup():
    assert quality_point(TINY_LADDER, 1) == OperatingPoint(1, 0.0)
    assert quality_point(TINY_LADDER, 49) == OperatingPoint(3, 0.0)
    assert quality_point(TINY_LADDER, 100) == OperatingPoint(5, 0.0)
    with pytest.raises(ValueError):
        quality_point(TINY_LADDER, 0)


def test_integer_stage_prior_matches_float_prior_after_training():
    """The exported integer stage prior costs within 1% of the float prior's cross-entropy."""
    torch.manual_seed(0)
    model = HierarchicalVQVAE(AutoencoderConfig(**LADDER_CONFIG))
    images = torch.stack([torch.from_numpy(photo(s, 64, 64)).permute(2, 0, 1).float() / 255 for s in range(8)])
    model.train()(images)
    model.eval()
    codes = model.encode(images)
    prior = HierarchicalPrior(PriorConfig(codebook_sizes=(16, 16, 16), refine_stages=2, refine_groups=2,
                                          refine_codebook_size=8, **LADDER_PRIOR))
    float_bits = fit_prior(prior, codes, slice(3, None), steps=60)[3:]
    int_prior = IntPrior(1, 1, export_prior(prior), "cpu", refine_stages=2, refine_groups=2, stage_blocks=1)
    for stage in range(2):
        bits = 0.0
        for n in range(images.shape[0]):
            tile = [c[n] for c in codes]
            freq = stage_frequencies(int_prior.stages[stage], tile, tile[3 + stage])
            chosen = freq.gather(2, tile[3 + stage].flatten(1)[..., None])
            bits += float(-torch.log2(chosen.double() / FREQ_TOTAL).sum())
        assert abs(bits / float_bits[stage] - 1) < 0.01, (stage, bits, float_bits[stage])


def test_calibrated_ladder_is_monotone_and_bpp_search_fits(ladder_codec, tmp_path):
    from hvqcodec.ladder import (RESIDUAL_TILT, build_ladder, candidate_points, compress_to_bpp, measure_points,
                                 psnr_uint8)

    images = [photo(s, 48, 64) for s in range(2)]
    points = candidate_points(5, (0.0, 0.01), stage_lambdas=(0.0,), residual_steps=(12, 6))
    measured = measure_points(ladder_codec, images, points)
    assert len(measured) == 2 + 3 * 2 + 4  # the residual on 3 and 4 streams
    assert all(p.residual_tilt == RESIDUAL_TILT for p in points if p.residual_step)
    # A residual point's figures are its whole file's and its decoded picture's.
    for point, entry in zip(points, measured):
        if point.residual_step:
            files = [ladder_codec.compress(Image.fromarray(rgb), point=point).data for rgb in images]
            assert entry["bpp"] == pytest.approx(np.mean([8 * len(f) / (48 * 64) for f in files]))
            assert entry["psnr"] == pytest.approx(np.mean([psnr_uint8(np.asarray(
                ladder_codec.decompress(f).image), rgb) for f, rgb in zip(files, images)]))
    ladder = build_ladder(measured)
    assert ladder[0]["quality"] == 1 and ladder[-1]["quality"] == 100
    assert ladder[-1]["residual_step"] == 6  # a random tiny decoder: the residual is the best top
    assert ladder[-1]["residual_tilt"] == list(RESIDUAL_TILT)
    bpps = [e["calibration_bpp"] for e in ladder]
    psnrs = [e["calibration_psnr"] for e in ladder]
    assert bpps == sorted(bpps) and psnrs == sorted(psnrs)
    ladder_codec.ladder = ladder
    source = Image.fromarray(photo(7, 48, 64))
    sizes = {e["quality"]: ladder_codec.compress(source, e["quality"]).bpp for e in ladder}
    target = sorted(sizes.values())[len(sizes) // 2] + 1e-9
    result, quality = compress_to_bpp(ladder_codec, source, target)
    assert result.bpp <= target
    assert all(bpp > target for q, bpp in sizes.items() if q > quality)
    assert result.data == ladder_codec.compress(source, quality).data
    tiny, quality = compress_to_bpp(ladder_codec, source, 1e-6)  # nothing fits: the smallest point
    assert quality == 1
    # The Python API's bpp= is the same search (the cached codec, so the same calibrated ladder).
    assert hvqcodec.compress(source, model="tiny-ladder", device="cpu", bpp=target) == result.data
    with pytest.warns(UserWarning, match="even quality 1 takes"):
        assert hvqcodec.compress(source, model="tiny-ladder", device="cpu", bpp=1e-6) == tiny.data
    for bad in ({"bpp": 0.0}, {"bpp": 0.5, "quality": 50}):
        with pytest.raises(ValueError, match="bpp"):
            hvqcodec.compress(source, model="tiny-ladder", device="cpu", **bad)
    # The command line passes the same note on.
    from click.testing import CliRunner

    from hvqcodec.cli import main

    path = tmp_path / "source.png"
    source.save(path)
    result = CliRunner().invoke(main, ["compress", str(path), "--model", "tiny-ladder", "--device", "cpu",
                                       "--bpp", "0.000001"])
    assert result.exit_code == 0, result.output
    assert f"warning: {path}: even quality 1 takes" in " ".join(result.output.split())


def test_bench_gives_one_point_per_ladder_entry(ladder_codec):
    from hvqcodec.bench import measure_hvq

    points = measure_hvq(ladder_codec, photo(5, 64, 96))
    assert [p["quality"] for p in points] == [e["quality"] for e in TINY_LADDER]
    assert [p["levels"] for p in points] == [e["streams"] for e in TINY_LADDER]
    # A prefix point costs exactly what a file of its streams alone costs, give or take the header's varints.
    rgb = Image.fromarray(photo(5, 64, 96))
    for point, entry in zip(points, TINY_LADDER):
        alone = ladder_codec.compress(rgb, point=OperatingPoint(entry["streams"], entry["lambda"]))
        assert 0 <= point["bpp"] * 64 * 96 / 8 - len(alone.data) <= 2 * (5 - entry["streams"])
    # A residual entry: its whole file and the picture with the residual added, on top of the same streams.
    ladder_codec.ladder = TINY_LADDER + [{"quality": 95, "streams": 4, "lambda": 0.0, "stage_lambda": 0.0,
                                          "residual_step": 16}]
    top = measure_hvq(ladder_codec, photo(5, 64, 96))[-1]
    alone = ladder_codec.compress(rgb, point=OperatingPoint(4, 0.0, 0.0, 0.0, 16))
    assert (top["quality"], top["levels"], top["bpp"]) == (95, 5, 8 * len(alone.data) / (64 * 96))
    decoded = np.asarray(ladder_codec.decompress(alone.data).image)
    assert top["psnr"] == pytest.approx(10 * np.log10(255 ** 2 / np.mean((decoded - photo(5, 64, 96).astype(float)) ** 2)))
    assert top["psnr"] > points[-1]["psnr"]


def test_bench_with_effort_compresses_every_entry_as_compress_does(ladder_codec):
    """With encoder effort a point's file is refined for its own streams, so it is not a prefix of a larger
    one: the bench compresses every entry alone, exactly as `compress -q --effort` does."""
    from hvqcodec.bench import measure_hvq

    rgb = photo(5, 64, 96)
    points = measure_hvq(ladder_codec, rgb, effort=3)
    assert [p["quality"] for p in points] == [e["quality"] for e in TINY_LADDER]
    for point, entry in zip(points, TINY_LADDER):
        alone = ladder_codec.compress(Image.fromarray(rgb), quality=entry["quality"], effort=3)
        assert point["bytes"] == len(alone.data)


def test_operating_points_round_trip_through_ladder_entries():
    assert OperatingPoint.from_entry({"streams": 4, "lambda": 0.01}) == OperatingPoint(4, 0.01)
    point = OperatingPoint(5, 0.003, 0.001)
    assert point.to_entry() == {"streams": 5, "lambda": 0.003, "stage_lambda": 0.001}
    assert OperatingPoint.from_entry({"quality": 7, **point.to_entry()}) == point
    assert OperatingPoint(5, 0.003).stage_weight == 0.003 and point.stage_weight == 0.001
    ladder = TINY_LADDER + [{"quality": 95, "streams": 5, "lambda": 0.0, "stage_lambda": 0.02}]
    assert quality_point(ladder, 96) == OperatingPoint(5, 0.0, 0.02)


def test_candidates_pair_bottom_and_stage_weights():
    from hvqcodec.ladder import candidate_points

    points = candidate_points(5, (0.0, 0.01, 0.1), (0.0, 0.002))
    assert points[:5] == [OperatingPoint(1), OperatingPoint(2)] + [OperatingPoint(3, lam) for lam in (0.0, 0.01, 0.1)]
    assert OperatingPoint(4, 0.01, 0.002) in points and OperatingPoint(5, 0.0, 0.0) in points
    assert OperatingPoint(4, 0.1, 0.0) not in points  # the strongest bottom weights only without stages
    assert len(points) == 5 + 2 * 2 * 2


def test_stage_weight_trades_stage_bits_and_keeps_lower_streams(ladder_codec):
    rgb = photo(6, 96, 128)
    results = [ladder_codec.compress(Image.fromarray(rgb), point=OperatingPoint(5, 0.0, lam)) for lam in (0.0, 0.5)]
    # Only the stages change: the levels are the nearest codes either way.
    assert results[0].level_bytes[:3] == results[1].level_bytes[:3]
    assert sum(results[1].cross_entropy_bits[3:]) < sum(results[0].cross_entropy_bits[3:])
    decoded = ladder_codec.decompress(results[1].data)
    assert all(torch.equal(a, b) for a, b in
               zip(decoded.codes[0], ladder_codec.encode_codes(rgb, OperatingPoint(5, 0.0, 0.5))))


def test_trained_stage_lambdas_select_codes_by_rate(tmp_path, monkeypatch):
    """A model trained with refine_lambdas chooses its stage codes by distance + lambda * bits, in encode() and
    in the codec (conditional bits there), and every file still decodes to the codes it was made from."""
    from hvqcodec import codec as codec_module
    from conftest import export_tiny

    config = dict(LADDER_CONFIG, refine_lambdas=[0.0, 0.0])
    model = HierarchicalVQVAE(AutoencoderConfig(**config)).eval()
    torch.manual_seed(0)
    model.train()(torch.rand(4, 3, 64, 64))
    model.eval()
    images = torch.rand(2, 3, 64, 64)
    plain = model.encode(images)
    for refiner in model.refiners:
        for quantiser in refiner.quantisers:
            quantiser.rate_lambda = 1e4
    weighted = model.encode(images)
    assert all(torch.equal(a, b) for a, b in zip(plain[:3], weighted[:3]))
    for stage_codes, refiner in zip(weighted[3:], model.refiners):
        most_used = torch.stack([q.cluster_size.argmax() for q in refiner.quantisers])
        assert torch.equal(stage_codes, most_used[None, :, None, None].expand_as(stage_codes))
    with pytest.raises(ValueError, match="refine_lambdas"):
        HierarchicalVQVAE(AutoencoderConfig(**dict(LADDER_CONFIG, refine_lambdas=[0.1])))

    folder = tmp_path / "models"
    export_tiny(folder, "tiny-ecvq", dict(LADDER_CONFIG, refine_lambdas=[0.3, 0.3]), LADDER_PRIOR)
    monkeypatch.setenv("HVQCODEC_MODELS", str(folder))
    codec_module.load_codec.cache_clear()
    try:
        trained = codec_module.load_codec("tiny-ecvq", "cpu")
        assert trained.trained_stage_lambdas == (0.3, 0.3)
        rgb = photo(8, 64, 96)
        result = trained.compress(Image.fromarray(rgb), point=OperatingPoint(5))
        nearest_bits = sum(ladder_bits(trained, rgb))
        assert sum(result.cross_entropy_bits[3:]) < nearest_bits
        decoded = trained.decompress(result.data)
        assert all(torch.equal(a, b) for a, b in zip(decoded.codes[0], trained.encode_codes(rgb, OperatingPoint(5))))
    finally:
        codec_module.load_codec.cache_clear()


def ladder_bits(codec, rgb):
    """Stage bits of the nearest codes under the codec's stage priors."""
    from hvqcodec.entropy import encode_stage

    x = torch.tensor(rgb).permute(2, 0, 1)[None].float().div(255)
    codes = [c[0] for c in codec.autoencoder.encode(x)]
    lambdas = [q.rate_lambda for r in codec.autoencoder.refiners for q in r.quantisers]
    assert all(lam > 0 for lam in lambdas)
    for r in codec.autoencoder.refiners:
        for q in r.quantisers:
            q.rate_lambda = 0.0
    try:
        codes = [c[0] for c in codec.autoencoder.encode(x)]
    finally:
        for r, lam in zip((q for r in codec.autoencoder.refiners for q in r.quantisers), lambdas):
            r.rate_lambda = lam
    return [encode_stage(codec.prior.stages[s], codes, codes[3 + s]).cross_entropy_bits for s in range(2)]


def test_ladder_keeps_previews_and_the_concave_hull():
    from hvqcodec.ladder import build_ladder

    measured = [
        {"streams": 1, "lambda": 0.0, "bpp": 0.03, "psnr": 20.0},
        {"streams": 2, "lambda": 0.0, "bpp": 0.10, "psnr": 21.0},  # under the line, but a preview: kept
        {"streams": 3, "lambda": 0.0, "bpp": 0.40, "psnr": 27.0},
        {"streams": 3, "lambda": 0.1, "bpp": 0.38, "psnr": 26.0},
        {"streams": 4, "lambda": 0.03, "bpp": 0.60, "psnr": 27.1},  # Pareto, but under the hull: dropped
        {"streams": 4, "lambda": 0.0, "stage_lambda": 0.001, "bpp": 0.70, "psnr": 29.0},
        {"streams": 5, "lambda": 0.0, "bpp": 1.00, "psnr": 29.5},
        {"streams": 5, "lambda": 0.0, "stage_lambda": 0.003, "bpp": 0.90, "psnr": 28.9},  # dominated
    ]
    ladder = build_ladder(measured)
    assert [(e["streams"], e["calibration_bpp"]) for e in ladder] == [(1, 0.03), (2, 0.1), (3, 0.38), (3, 0.4),
                                                                      (4, 0.7), (5, 1.0)]
    assert [e["quality"] for e in ladder] == [1, 21, 41, 60, 80, 100]
    assert ladder[4]["stage_lambda"] == 0.001 and "stage_lambda" not in ladder[5]


def test_ladder_fills_wide_gaps_between_residual_points():
    """Residual points a hair under a long chord come back where the hull would jump more than MAX_BPP_GAP in
    bpp (nearest the gap's middle first); points of codes alone never do."""
    from hvqcodec.ladder import MAX_BPP_GAP, build_ladder

    def residual(bpp: float, psnr: float, step: int) -> dict:
        return {"streams": 3, "lambda": 0.0, "residual_step": step, "residual_tilt": [40, 80], "bpp": bpp,
                "psnr": psnr}

    measured = [
        {"streams": 1, "lambda": 0.0, "bpp": 0.03, "psnr": 20.0},
        {"streams": 2, "lambda": 0.0, "bpp": 0.10, "psnr": 21.0},
        {"streams": 3, "lambda": 0.0, "bpp": 0.40, "psnr": 27.0},
        {"streams": 4, "lambda": 0.0, "bpp": 0.60, "psnr": 27.1},  # codes alone under the hull: stays out
        residual(1.00, 32.0, 24),
        residual(1.20, 32.9, 20),  # a hair under the chord from 1.0 to 2.0
        residual(1.45, 34.0, 16),
        residual(1.70, 35.2, 13),
        residual(2.00, 37.0, 11),
    ]
    ladder = build_ladder(measured)
    assert [e["calibration_bpp"] for e in ladder] == [0.03, 0.1, 0.4, 1.0, 1.2, 1.45, 1.7, 2.0]
    assert all(b["calibration_bpp"] <= MAX_BPP_GAP * a["calibration_bpp"] for a, b in zip(ladder[3:], ladder[4:]))
    assert ladder[-1]["residual_tilt"] == [40, 80] and ladder[3]["quality"] == 76 and ladder[-1]["quality"] == 100
    assert [e["calibration_bpp"] for e in build_ladder(measured[:5] + measured[6:])] == \
        [0.03, 0.1, 0.4, 1.0, 1.45, 1.7, 2.0]  # no 1.2: nothing to fill
    # Where the hull's neighbours are close enough, a point under their chord stays dropped.
    close = measured[:5] + [residual(1.1, 32.4, 22), residual(1.2, 33.0, 20)]
    assert [e["calibration_bpp"] for e in build_ladder(close)] == [0.03, 0.1, 0.4, 1.0, 1.2]


def test_measured_points_share_one_file_per_weights(ladder_codec):
    """A point with fewer streams is measured on the prefix of a larger file: the same pixels as a file made for
    it alone, and its size within the header's varints."""
    from hvqcodec.ladder import measure_points, psnr_uint8

    rgb = photo(9, 48, 64)
    points = [OperatingPoint(5, 0.0, 0.2), OperatingPoint(3, 0.05), OperatingPoint(4, 0.0, 0.2)]
    measured = measure_points(ladder_codec, [rgb], points)
    assert [(m["streams"], m["lambda"]) for m in measured] == [(5, 0.0), (3, 0.05), (4, 0.0)]
    for point, m in zip(points, measured):
        alone = ladder_codec.compress(Image.fromarray(rgb), point=point)
        pixels = np.asarray(ladder_codec.decompress(alone.data).image)
        assert m["psnr"] == psnr_uint8(pixels, rgb)
        assert 0 <= m["bpp"] * 48 * 64 / 8 - len(alone.data) <= 2 * (5 - point.streams)


def test_variable_rate_bottom_codes(tmp_path, monkeypatch):
    """A model trained with bottom_lambdas draws one bottom weight per training sample, encodes with the weight
    asked for (per image), and the codec codes points with a bottom weight bit-exactly, with fewer bottom bits
    for a larger weight."""
    from hvqcodec import codec as codec_module
    from hvqcodec.ladder import candidate_points
    from conftest import export_tiny

    config = dict(LADDER_CONFIG, bottom_lambdas=[0.0, 0.5])
    torch.manual_seed(0)
    model = HierarchicalVQVAE(AutoencoderConfig(**config)).train()
    drawn = model._bottom_lambdas(torch.zeros(2000, 3, 16, 16))
    assert set(drawn.tolist()) == {0.0, 0.5}
    model(torch.rand(4, 3, 64, 64))
    model.eval()
    assert model._bottom_lambdas(torch.zeros(3, 3, 16, 16)) is None
    images = torch.rand(2, 3, 64, 64)
    nearest, coarse = model.encode(images), model.encode(images, 1e4)
    assert torch.equal(coarse[2], torch.full_like(coarse[2], int(model.quantisers[2].cluster_size.argmax())))
    mixed = model.encode(images, torch.tensor([0.0, 1e4]))
    assert torch.equal(mixed[2][0], nearest[2][0]) and torch.equal(mixed[2][1], coarse[2][1])

    points = candidate_points(5, (0.0,), (0.0,), bottom_lambdas=(0.0, 0.5))
    assert OperatingPoint(3, 0.0, None, 0.5) in points and OperatingPoint(5, 0.0, 0.0, 0.5) in points
    assert OperatingPoint.from_entry(OperatingPoint(4, 0.0, 0.0, 0.5).to_entry()) == OperatingPoint(4, 0.0, 0.0, 0.5)
    assert "bottom_lambda" not in OperatingPoint(4).to_entry()

    folder = tmp_path / "models"
    export_tiny(folder, "tiny-vr", config, LADDER_PRIOR)
    monkeypatch.setenv("HVQCODEC_MODELS", str(folder))
    codec_module.load_codec.cache_clear()
    try:
        codec = codec_module.load_codec("tiny-vr", "cpu")
        rgb = photo(9, 64, 96)
        results = {}
        for point in (OperatingPoint(5), OperatingPoint(5, 0.0, None, 0.2), OperatingPoint(5, 0.01, None, 0.2)):
            results[point] = codec.compress(Image.fromarray(rgb), point=point)
            decoded = codec.decompress(results[point].data)
            assert all(torch.equal(a, b) for a, b in zip(decoded.codes[0], codec.encode_codes(rgb, point)))
        plain, weighted = results[OperatingPoint(5)], results[OperatingPoint(5, 0.0, None, 0.2)]
        assert weighted.level_bytes[:2] == plain.level_bytes[:2]  # top and mid unchanged
        assert weighted.cross_entropy_bits[2] < plain.cross_entropy_bits[2]
        x = torch.tensor(rgb).permute(2, 0, 1)[None].float().div(255)
        assert torch.equal(codec.encode_codes(rgb, OperatingPoint(3, 0.0, None, 0.2))[2],
                           codec.autoencoder.encode(x, 0.2)[2][0])
    finally:
        codec_module.load_codec.cache_clear()


def test_stage_streams_chunk_by_chunk_are_the_one_call_streams(ladder_codec, monkeypatch):
    """Refinement stages are coded and decoded in chunks of positions (bounded memory on large tiles): the
    bytes are those of one call, and the decoder's codes those the encoder chose, whatever the chunk."""
    from hvqcodec import entropy

    rgb = photo(5, 96, 128)
    for point in (OperatingPoint(5), OperatingPoint(5, 0.05)):
        codes = ladder_codec.encode_codes(rgb, point)
        for stage, prior in enumerate(ladder_codec.prior.stages):
            freq = stage_frequencies(prior, codes, codes[3 + stage])
            whole = entropy._range_encode(codes[3 + stage].flatten(), freq.flatten(0, 1))
            for chunk in (7, 100):
                monkeypatch.setattr(entropy, "STAGE_CHUNK", chunk)
                part = entropy.encode_stage(prior, codes, codes[3 + stage])
                assert part.data == whole.data
                assert torch.equal(entropy.decode_stage(prior, part.data, codes[:3 + stage]), codes[3 + stage])
                assert torch.equal(stage_frequencies(prior, codes, codes[3 + stage]), freq)
            monkeypatch.setattr(entropy, "STAGE_CHUNK", 8192)
        monkeypatch.setattr("hvqcodec.codec.STAGE_CHUNK", 7)
        chunked = ladder_codec.compress(Image.fromarray(rgb), point=point).data
        monkeypatch.setattr("hvqcodec.codec.STAGE_CHUNK", 8192)
        assert chunked == ladder_codec.compress(Image.fromarray(rgb), point=point).data


def test_effort_refines_the_latent_and_files_stay_plain(ladder_codec):
    """Encoder-side refinement: the refined latent decodes closer to the image than the encoder's own, its
    file decodes with the ordinary decoder to exactly the codes chosen, and effort 0 changes nothing."""
    from hvqcodec.refine import refine_bottom_latent

    rgb = photo(6, 64, 80)
    model = ladder_codec.autoencoder
    x = torch.tensor(rgb).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        top, mid, latent = model.encode_latent(x)
        context = model.bottom_context(top, mid)

    def error(z):
        with torch.no_grad():
            return float(((model._decode_bottom(z, context) - x) ** 2).mean())

    refined = refine_bottom_latent(model, x, top, mid, latent, steps=20, stages=2, rate_weight=0.0, lr=0.1)
    assert error(refined) < 0.9 * error(latent)
    assert torch.equal(refine_bottom_latent(model, x, top, mid, latent, steps=0, stages=2), latent)
    plain = ladder_codec.compress(Image.fromarray(rgb), point=OperatingPoint(5))
    assert ladder_codec.compress(Image.fromarray(rgb), point=OperatingPoint(5), effort=0).data == plain.data
    for point in (OperatingPoint(5), OperatingPoint(4, 0.05), OperatingPoint(2)):
        result = ladder_codec.compress(Image.fromarray(rgb), point=point, effort=5)
        decoded = ladder_codec.decompress(result.data)
        assert all(torch.equal(a, b) for a, b in zip(decoded.codes[0], result.codes[0]))
        assert np.array_equal(np.asarray(decoded.image), ladder_codec.decode_codes(result.codes[0], 64, 80))
    assert ladder_codec.compress(Image.fromarray(rgb), point=OperatingPoint(2), effort=5).data == \
        ladder_codec.compress(Image.fromarray(rgb), point=OperatingPoint(2)).data  # no bottom level: nothing to refine
    with pytest.raises(ValueError, match="effort"):
        ladder_codec.compress(Image.fromarray(rgb), effort=-1)


def test_residual_points_take_the_top_quarter_of_qualities():
    """The codes-alone points before the first residual point spread over 1-75, the rest over 76-100; a code
    point the hull keeps above a residual one stays in its bpp order."""
    from hvqcodec.ladder import RESIDUAL_QUALITY, build_ladder

    measured = [
        {"streams": 1, "lambda": 0.0, "bpp": 0.03, "psnr": 20.0},
        {"streams": 2, "lambda": 0.0, "bpp": 0.10, "psnr": 21.0},
        {"streams": 3, "lambda": 0.0, "bpp": 0.40, "psnr": 27.0},
        {"streams": 4, "lambda": 0.0, "bpp": 0.60, "psnr": 28.5},
        {"streams": 3, "lambda": 0.0, "residual_step": 40, "bpp": 0.80, "psnr": 29.8},
        {"streams": 6, "lambda": 0.0, "bpp": 1.00, "psnr": 30.0},  # under the hull of the residual points
        {"streams": 3, "lambda": 0.0, "residual_step": 20, "bpp": 1.20, "psnr": 32.0},
        {"streams": 3, "lambda": 0.0, "residual_step": 10, "bpp": 2.00, "psnr": 36.0},
    ]
    ladder = build_ladder(measured)
    assert [e["calibration_bpp"] for e in ladder] == [0.03, 0.1, 0.4, 0.6, 0.8, 1.2, 2.0]
    assert [e["quality"] for e in ladder] == [1, 26, 50, 75, RESIDUAL_QUALITY, 88, 100]
    assert [e.get("residual_step") for e in ladder] == [None] * 4 + [40, 20, 10]
    assert quality_point(ladder, 75).residual_step == 0 and quality_point(ladder, 76).residual_step == 40

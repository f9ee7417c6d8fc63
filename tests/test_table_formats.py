"""The priors' two integer table formats: 8-bit (float32) and 16-bit (float64), both exact."""
import pytest
import torch

from hvqcodec import intprior
from hvqcodec.autoencoder import AutoencoderConfig, HierarchicalVQVAE
from hvqcodec.entropy import encode_level, encode_stage, level_frequencies, stage_frequencies
from hvqcodec.intprior import IntPrior, export_prior, tables_dtype
from hvqcodec.priors import HierarchicalPrior, PriorConfig

from conftest import LADDER_CONFIG, LADDER_PRIOR, export_tiny, fit_prior, synthetic_image

STAGE_ARGS = dict(refine_stages=2, refine_groups=2, stage_blocks=1)


@pytest.fixture(scope="module")
def trained():
    """A tiny autoencoder's codes of 8 photos, and a prior trained on them for a few steps."""
    torch.manual_seed(0)
    model = HierarchicalVQVAE(AutoencoderConfig(**LADDER_CONFIG))
    images = torch.stack([torch.from_numpy(synthetic_image(s, 64, 64)).permute(2, 0, 1).float() / 255
                          for s in range(8)])
    model.train()(images)
    model.eval()
    with torch.no_grad():
        codes = model.encode(images)
    prior = HierarchicalPrior(PriorConfig(codebook_sizes=(16, 16, 16), refine_stages=2, refine_groups=2,
                                          refine_codebook_size=8, **LADDER_PRIOR))
    float_bits = fit_prior(prior, codes, slice(None), steps=60)
    return codes, prior, float_bits


def integer_prior(tables, dtype=None, monkeypatch=None) -> IntPrior:
    if dtype is not None:
        monkeypatch.setattr(intprior, "tables_dtype", lambda tables: dtype)
    return IntPrior(1, 1, tables, "cpu", **STAGE_ARGS)


def all_frequencies(int_prior: IntPrior, codes) -> list[torch.Tensor]:
    """Every stream's frequencies for every crop: the levels in a parallel pass, the stages group by group."""
    out = []
    for n in range(codes[0].shape[0]):
        tile = [c[n] for c in codes]
        out += [level_frequencies(int_prior.levels[level], tile[level], tile[:level])[0] for level in range(3)]
        out += [stage_frequencies(int_prior.stages[s], tile, tile[3 + s]) for s in range(2)]
    return out


def integer_bits(int_prior: IntPrior, codes) -> list[float]:
    """Total bits of each stream under the integer prior (the coder's own count, `cross_entropy_bits`)."""
    totals = [0.0] * 5
    for n in range(codes[0].shape[0]):
        tile = [c[n] for c in codes]
        for level in range(3):
            totals[level] += encode_level(int_prior.levels[level], tile[level], tile[:level]).cross_entropy_bits
        for s in range(2):
            totals[3 + s] += encode_stage(int_prior.stages[s], tile, tile[3 + s]).cross_entropy_bits
    return totals


def test_formats_follow_calibration_and_cost_within_one_percent(trained):
    codes, prior, float_bits = trained
    wide, narrow = export_prior(prior), export_prior(prior, codes)
    assert tables_dtype(wide) == torch.float64 and tables_dtype(narrow) == torch.float32
    assert wide["level2.head.weight"].dtype == torch.int16 and narrow["level2.head.weight"].dtype == torch.int8
    assert int(narrow["level2.head.weight"].abs().max()) <= 127
    for name, tables in (("16-bit", wide), ("8-bit", narrow)):
        bits = integer_bits(integer_prior(tables), codes)
        for stream, (got, want) in enumerate(zip(bits, float_bits)):
            assert abs(got / want - 1) < 0.01, (name, stream, got, want)


def test_float32_gives_exactly_the_float64_integers(trained, monkeypatch):
    """The 8-bit tables computed in float32 and in float64 (exact for any of these integers) agree in every
    frequency: no float32 sum was ever rounded."""
    codes, prior, _ = trained
    tables = export_prior(prior, codes)
    single = all_frequencies(integer_prior(tables), codes)
    double = all_frequencies(integer_prior(tables, torch.float64, monkeypatch), codes)
    assert all(torch.equal(a, b) for a, b in zip(single, double))


def test_reduced_precision_matmul_modes_give_the_same_integers(trained):
    """bf16 / TF32 float32-matmul modes keep float32 accumulation, and 8-bit integers are exact in both."""
    codes, prior, _ = trained
    tables = export_prior(prior, codes)
    reference = all_frequencies(integer_prior(tables), codes)
    backend = torch.backends.mkldnn.matmul
    saved = backend.fp32_precision
    try:
        for mode in ("bf16", "tf32"):
            backend.fp32_precision = mode
            got = all_frequencies(integer_prior(tables), codes)
            assert all(torch.equal(a, b) for a, b in zip(got, reference)), mode
    finally:
        backend.fp32_precision = saved


def test_tables_that_could_round_in_float32_are_refused(trained):
    codes, prior, _ = trained
    tables = dict(export_prior(prior, codes))
    tables["level1.head.bias"] = tables["level1.head.bias"].clone()
    tables["level1.head.bias"][0] = 1 << 24
    with pytest.raises(ValueError, match="float32-exact"):
        integer_prior(tables)


def test_sixteen_bit_models_still_code(tmp_path, monkeypatch):
    """A model exported with 16-bit tables (models up to hvq-vr3) round-trips bit-exactly."""
    from hvqcodec import codec

    from hvqcodec.zoo import ModelError, load_bundle_file, read_manifest

    folder = tmp_path / "models"
    export_tiny(folder, "tiny16", LADDER_CONFIG, LADDER_PRIOR, table_bits=16)
    export_tiny(folder, "tiny8", LADDER_CONFIG, LADDER_PRIOR)
    # Weights files say which tables they hold: a release that reads only version 1 refuses 8-bit tables.
    files = {name: folder / entry["file"] for name, entry in read_manifest(folder)["models"].items()}
    versions = {name: torch.load(path, weights_only=True)["version"] for name, path in files.items()}
    assert versions == {"tiny16": 1, "tiny8": 2}
    payload = torch.load(files["tiny8"], weights_only=True)
    payload["version"] = 3
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(ModelError, match="weights format version 3 is not supported"):
        load_bundle_file(tmp_path / "future.pt")
    monkeypatch.setenv("HVQCODEC_MODELS", str(folder))
    codec.load_codec.cache_clear()
    try:
        loaded = codec.load_codec("tiny16", "cpu")
        assert loaded.prior.levels[0].dtype == torch.float64
        image = synthetic_image(3, 48, 64)
        result = loaded.compress(image)
        decoded = loaded.decompress(result.data)
        assert all(torch.equal(a, b) for a, b in zip(decoded.codes[0], result.codes[0]))
    finally:
        codec.load_codec.cache_clear()


def test_export_without_calibration_codes_is_one_clear_error(tmp_path):
    from click.testing import CliRunner

    from hvqcodec.cli import main

    priors = tmp_path / "run" / "checkpoint.pt"
    priors.parent.mkdir()
    priors.write_bytes(b"")
    result = CliRunner().invoke(main, ["models", "export", str(priors), "--name", "x", "--priors", str(priors),
                                       "--models-dir", str(tmp_path / "models")])
    assert result.exit_code != 0
    assert "no calibration codes for 8-bit tables" in result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(not intprior.int8_matmul_works("cpu"), reason="no int8 matmul in this torch build")
def test_int8_matmuls_give_the_float32_integers(trained, monkeypatch):
    """Products through int8 matmuls (int32 sums) and through float32 addmm give the same frequencies, whatever
    the row count at which the int8 route starts (the int8 route forced on: CPUs without VNNI leave it off)."""
    codes, prior, _ = trained
    tables = export_prior(prior, codes)
    monkeypatch.setattr(intprior, "int8_matmul_available", lambda device_type: True)
    results = []
    for rows in (1, 10 ** 9):
        monkeypatch.setattr(intprior, "INT8_MIN_ROWS", rows)
        int_prior = integer_prior(tables)
        assert int_prior.levels[2].layers["head"][4] is not None
        results.append(all_frequencies(int_prior, codes))
    monkeypatch.setattr(intprior, "int8_matmul_available", lambda device_type: False)
    int_prior = integer_prior(tables)
    assert int_prior.levels[2].layers["head"][4] is None
    results.append(all_frequencies(int_prior, codes))
    assert all(torch.equal(a, b) for other in results[1:] for a, b in zip(results[0], other))


def test_int8_route_only_with_int8_instructions(monkeypatch):
    """The int8 route is taken only where the CPU has VNNI or AMX: without them torch._int_mm is a slow
    fallback (a Kodak decode 4x slower)."""
    monkeypatch.setattr(intprior, "int8_matmul_works", lambda device_type: True)
    for vnni, amx, expected in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda vnni=vnni: vnni)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        intprior.int8_matmul_available.cache_clear()
        assert intprior.int8_matmul_available("cpu") is expected
    monkeypatch.delattr(torch.cpu, "_is_vnni_supported")
    intprior.int8_matmul_available.cache_clear()
    assert intprior.int8_matmul_available("cpu") is False
    intprior.int8_matmul_available.cache_clear()


def test_eight_bit_export_bounds_every_accumulator():
    """A layer with huge biases or many large weights still exports tables whose sums stay float32-exact;
    a layer whose products alone could pass 2^24 is refused."""
    from hvqcodec.intprior import FLOAT32_EXACT, NARROW_MAX, quantise_linear

    weight = torch.randn(16, 64)
    tables = quantise_linear(weight, torch.full((16,), 1e6), input_shift=3)
    assert tables["weight"].dtype == torch.int8 and 64 <= int(tables["weight"].abs().max()) <= NARROW_MAX
    shift = tables["shift"].double()
    half = torch.where(shift > 0, 2 ** (shift - 1), torch.zeros_like(shift))
    worst = NARROW_MAX * tables["weight"].double().abs().sum(1) + tables["bias"].double().abs() + half
    assert bool((worst < FLOAT32_EXACT).all())
    with pytest.raises(ValueError, match="too many inputs"):
        quantise_linear(torch.ones(4, 4096), None, input_shift=3)


def test_priors_too_wide_for_eight_bits_are_exported_with_sixteen(tmp_path):
    """A masked layer of 1,056 inputs whose 8-bit weights are all 127 could sum past 2^24: export keeps the
    16-bit format for such priors (weights version 1) instead of failing or computing inexactly."""
    from hvqcodec import zoo
    from conftest import TINY_CONFIG, calibration_codes

    torch.manual_seed(0)
    autoencoder = HierarchicalVQVAE(AutoencoderConfig(**TINY_CONFIG))
    autoencoder.train()(torch.rand(2, 3, 64, 64))
    prior = HierarchicalPrior(PriorConfig(codebook_sizes=TINY_CONFIG["codebook_sizes"], channels=88,
                                          causal_blocks=1, cond_blocks=1))
    with torch.no_grad():
        prior.levels[0].masked.weight.fill_(127 / 64)
    checkpoint = {"config": autoencoder.config.to_dict(), "model": autoencoder.state_dict(), "step": 0,
                  "history": [], "options": {}}
    priors = {"config": prior.config.to_dict(), "model": prior.state_dict(), "step": 0, "history": [], "options": {},
              "autoencoder": {"fingerprint": zoo.autoencoder_fingerprint(autoencoder)}}
    entry = zoo.export_model(checkpoint, "wide", tmp_path, priors_checkpoint=priors,
                             calibration_codes=calibration_codes(autoencoder))
    assert entry["priors"]["table_bits"] == 16
    payload = torch.load(tmp_path / entry["file"], weights_only=True)
    assert payload["version"] == 1 and tables_dtype(payload["prior_tables"]) == torch.float64

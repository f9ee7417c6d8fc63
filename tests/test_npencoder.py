"""The torch-free encoder (hvqcodec/npencoder.py) against torch's float32 `HierarchicalVQVAE.encode_latent` and
`EMAQuantiser.candidates`: a tiny random model (with the C kernels and in plain numpy) and the shipped model on a
small image; threads; the candidates' order among ties; and that it imports no torch."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hvqcodec import npdecoder, npencoder, stepkernel
from hvqcodec.autoencoder import AutoencoderConfig, HierarchicalVQVAE
from hvqcodec.names import PAD_MULTIPLE
from hvqcodec.npencoder import NumpyEncoder
from hvqcodec.quantiser import NEAREST_CHUNK
from test_npdecoder import KERNELS, SMALL_CONFIG, float16_state, randomised

DATA = Path(__file__).parent / "data"
ECVQ_CANDIDATES = 8  # codec.ECVQ_CANDIDATES (codec imports more than this test needs)


pytestmark = pytest.mark.usefixtures("torch_on_one_thread")


@pytest.fixture(scope="module")
def small_model() -> HierarchicalVQVAE:
    model = randomised(SMALL_CONFIG, seed=3)
    with torch.no_grad():  # a positive codebook usage, as a trained one, so that code bits are defined
        for quantiser in model.quantisers:
            quantiser.cluster_size.copy_(torch.rand(quantiser.codebook_size).mul(100).half().float())
    return model


@pytest.fixture(scope="module")
def shipped_model() -> HierarchicalVQVAE:
    from hvqcodec.zoo import load_bundle

    return load_bundle().autoencoder


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour ramps plus noise (pure noise would leave the tiny model's latents all alike)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.stack([a * x + b * y + c for a, b, c in rng.uniform(-0.5, 1.0, (3, 3))], -1)
    image += rng.normal(0, 0.1, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def source_image() -> np.ndarray:
    return np.array(Image.open(DATA / "v1-source.png").convert("RGB"))  # 64x48


def torch_input(rgb: np.ndarray) -> torch.Tensor:
    """As `Codec.encode_codes` makes it."""
    return torch.tensor(rgb).permute(2, 0, 1)[None].float().div(255)


def torch_encode_latent(model: HierarchicalVQVAE, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with torch.no_grad():
        top, mid, latent = model.encode_latent(torch_input(rgb))
    return top[0].numpy(), mid[0].numpy(), latent[0].permute(1, 2, 0).numpy()


def torch_latent_for(model: HierarchicalVQVAE, rgb: np.ndarray, top: np.ndarray, mid: np.ndarray) -> np.ndarray:
    """torch's bottom latent given these top and mid codes (encode_latent's own where the codes are its)."""
    from hvqcodec.autoencoder import pad_to_multiple

    with torch.no_grad():
        f1 = model.features(pad_to_multiple(torch_input(rgb)))[0]
        c1 = model.bottom_context(torch.from_numpy(top)[None], torch.from_numpy(mid)[None])
        return model.pre_quant[2](torch.cat([f1, c1], 1))[0].permute(1, 2, 0).numpy()


def assert_encodes_as_torch(encoder: NumpyEncoder, model: HierarchicalVQVAE, rgb: np.ndarray) -> None:
    """Top and mid codes equal to torch's in >= 99.9% of positions (a near-tie may fall the other way), the
    latent within 1e-4 of torch's for the same codes (encode_latent's own where all codes agree)."""
    top, mid, latent = encoder.encode_latent(rgb, threads=1)
    reference_top, reference_mid, reference_latent = torch_encode_latent(model, rgb)
    assert top.dtype == mid.dtype == np.int64 and latent.dtype == np.float32
    assert top.shape == reference_top.shape and mid.shape == reference_mid.shape
    assert latent.shape == reference_latent.shape
    assert np.mean(top == reference_top) >= 0.999 and np.mean(mid == reference_mid) >= 0.999
    assert float(np.abs(latent - torch_latent_for(model, rgb, top, mid)).max()) < 1e-4
    if np.array_equal(top, reference_top) and np.array_equal(mid, reference_mid):
        assert float(np.abs(latent - reference_latent).max()) < 1e-4


def assert_candidates_as_torch(encoder: NumpyEncoder, model: HierarchicalVQVAE, latent: np.ndarray,
                               count: int, bottom_lambda: float) -> None:
    """Costs within 1e-5 of EMAQuantiser.candidates' on the same latent, indices equal in >= 99.9% of entries,
    and where one differs, a near-tie: the two codes' costs (float64) within 1e-5."""
    quantiser = model.quantisers[2]
    flat = torch.from_numpy(latent.reshape(-1, latent.shape[-1]))
    lambdas = flat.new_full((flat.shape[0],), bottom_lambda) if bottom_lambda > 0 else None
    with torch.no_grad():
        reference_costs, reference = (t.numpy() for t in quantiser.candidates(flat, count, lambdas))
    costs, indices = encoder.candidates(latent, count, bottom_lambda, threads=1)
    assert costs.dtype == np.float32 and indices.dtype == np.int64 and indices.shape == reference.shape
    assert float(np.abs(costs - reference_costs).max()) < 1e-5
    assert np.mean(indices == reference) >= 0.999
    rows, ranks = np.nonzero(indices != reference)
    if rows.size:
        x = flat.numpy().astype(np.float64)[rows]
        codebook = quantiser.codebook.numpy().astype(np.float64)
        bits = quantiser.code_bits().numpy().astype(np.float64) if bottom_lambda > 0 else 0 * codebook[:, 0]

        def exact(codes):
            return ((x - codebook[codes]) ** 2).sum(1) + bottom_lambda * bits[codes]

        assert float(np.abs(exact(indices[rows, ranks]) - exact(reference[rows, ranks])).max()) < 1e-5
    nearest = encoder.nearest(2, latent, bottom_lambda, threads=1)
    assert nearest.shape == latent.shape[:-1]
    if count == 1:
        assert np.mean(nearest.reshape(-1) == reference[:, 0]) >= 0.999


@pytest.mark.parametrize("kernels", KERNELS)
def test_small_random_model_encodes_as_torch(small_model, kernels):
    encoder = NumpyEncoder(small_model.config.to_dict(), float16_state(small_model), kernels=kernels)
    for height, width in ((40, 70), (32, 48), (1, 17)):  # padded, exact multiples, one row
        assert_encodes_as_torch(encoder, small_model, random_image(height, width, seed=height))
    encoder.close()


def test_small_random_model_candidates(small_model):
    encoder = NumpyEncoder(small_model.config.to_dict(), float16_state(small_model))
    latent = torch_encode_latent(small_model, random_image(40, 70))[2]
    for count in (1, 3, ECVQ_CANDIDATES, 16):
        for bottom_lambda in (0.0, 0.5):
            assert_candidates_as_torch(encoder, small_model, latent, count, bottom_lambda)


def test_shipped_model_encodes_as_torch(shipped_model):
    encoder = NumpyEncoder(shipped_model.config.to_dict(), float16_state(shipped_model))
    rgb = source_image()
    assert_encodes_as_torch(encoder, shipped_model, rgb)
    latent = torch_encode_latent(shipped_model, rgb)[2]
    for count in (1, ECVQ_CANDIDATES):
        for bottom_lambda in (0.0, 0.02):  # 0.02: a bottom_lambda of the shipped ladder
            assert_candidates_as_torch(encoder, shipped_model, latent, count, bottom_lambda)
    for level in (0, 1):  # the top and mid quantisers' own codes for latents of their size
        rng = np.random.default_rng(level)
        vectors = rng.normal(0, 0.5, (5, 7, shipped_model.config.code_dim)).astype(np.float32)
        with torch.no_grad():
            reference = shipped_model.quantisers[level](torch.from_numpy(vectors).permute(2, 0, 1)[None]).codes[0]
        assert np.array_equal(encoder.nearest(level, vectors, threads=1), reference.numpy())


@pytest.mark.parametrize("kernels", KERNELS)
def test_threads_give_identical_results(small_model, kernels, monkeypatch):
    """Small bands, so that every layer's rows and the codebook searches are shared out over the threads."""
    monkeypatch.setattr(npdecoder, "CHUNK_POSITIONS", 24)
    monkeypatch.setattr(npencoder, "BAND_POSITIONS", 20)
    monkeypatch.setattr(npencoder, "NEAREST_CHUNK", 7)
    rgb = random_image(56, 72, seed=5)
    with NumpyEncoder(small_model.config.to_dict(), float16_state(small_model), kernels=kernels) as encoder:
        results = [encoder.encode_latent(rgb, threads=threads) for threads in (1, 2, 3)]
        for other in results[1:]:
            assert all(np.array_equal(a, b) for a, b in zip(results[0], other))
        latent = results[0][2]
        one, two = (encoder.candidates(latent, ECVQ_CANDIDATES, 0.5, threads=t) for t in (1, 2))
        assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])
        assert np.array_equal(encoder.nearest(2, latent, threads=2), encoder.nearest(2, latent, threads=1))


def test_timer_hears_every_part(small_model):
    heard: dict[str, float] = {}

    def timer(name: str, seconds: float) -> None:
        heard[name] = heard.get(name, 0.0) + seconds

    NumpyEncoder(small_model.config.to_dict(), float16_state(small_model)).encode_latent(
        random_image(32, 32), threads=1, timer=timer)
    assert set(npencoder.PARTS) <= set(heard)
    assert all(seconds >= 0 for seconds in heard.values())


def test_smallest_orders_ties_by_index():
    table = np.float32([[3, 1, 2, 1, 0, 1, 5],  # a tie across the edge of the 3 smallest: columns 1 and 3
                        [1, 1, 1, 1, 1, 1, 1],
                        [9, 8, 7, 6, 5, 4, 3],
                        [2, 2, 0, 2, 2, 2, 2]])
    costs, indices = npencoder.smallest(table, 3)
    assert indices.tolist() == [[4, 1, 3], [0, 1, 2], [6, 5, 4], [2, 0, 1]]
    assert costs.tolist() == [[0, 1, 1], [1, 1, 1], [3, 4, 5], [0, 2, 2]]
    assert npencoder.smallest(table, 1)[1][:, 0].tolist() == [4, 0, 6, 2]
    assert npencoder.smallest(table, 7)[1][0].tolist() == [4, 1, 3, 5, 2, 0, 6]
    # The same as torch's order (stepkernel.smallest, topk's fallback) on random ties.
    rng = np.random.default_rng(0)
    ties = rng.integers(0, 6, (200, 40)).astype(np.float32)
    reference = np.argsort(ties, axis=1, kind="stable")[:, :8]
    assert np.array_equal(npencoder.smallest(ties, 8)[1], reference)


def test_constants_in_step_with_torch():
    assert npencoder.PAD_MULTIPLE == PAD_MULTIPLE
    assert npencoder.NEAREST_CHUNK == NEAREST_CHUNK
    assert list(npencoder.ENCODER_DEPTHS_DEFAULT) == AutoencoderConfig().to_dict()["encoder_depths"]


def test_refuses_what_does_not_fit(small_model):
    state, config = float16_state(small_model), small_model.config.to_dict()
    with pytest.raises(ValueError, match="encoder_depths"):
        NumpyEncoder({**config, "encoder_depths": [1, 1]}, state)
    with pytest.raises(ValueError, match="has no"):
        NumpyEncoder({**config, "encoder_depths": [2, 1, 1]}, state)
    with pytest.raises(ValueError, match="does not implement"):
        NumpyEncoder({**config, "encoder_attention": True}, state)
    encoder = NumpyEncoder(config, state)
    for bad in (np.zeros((16, 16, 3), np.float32), np.zeros((16, 16), np.uint8), np.zeros((0, 16, 3), np.uint8)):
        with pytest.raises(ValueError):
            encoder.encode_latent(bad)
    with pytest.raises(ValueError, match="threads"):
        encoder.encode_latent(random_image(16, 16), threads=0)
    latent = np.zeros((4, 4, SMALL_CONFIG["code_dim"]), np.float32)
    with pytest.raises(ValueError):
        encoder.candidates(latent, 0)
    with pytest.raises(ValueError):
        encoder.candidates(latent[..., :3], 2)
    with pytest.raises(ValueError, match="level"):
        encoder.nearest(3, latent)


def test_imports_no_torch():
    code = "import sys, hvqcodec.npencoder; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.skipif(not stepkernel.available(), reason="the C module is not built")
@pytest.mark.parametrize("codes,dim,count,lambdas", [(512, 32, 8, 0.0), (512, 32, 1, 0.0), (512, 32, 8, 0.5),
                                                     (96, 8, 3, 0.0), (37, 5, 4, 0.2), (4096, 16, 8, 0.0)])
def test_code_search_in_c_is_numpy_s(codes, dim, count, lambdas):
    """stepkernel.nearest_codes (the runtime's code search with the C kernels) against distances + smallest:
    costs within float32 rounding, the same codes in the same order, ties (duplicated codewords, duplicated
    rows) broken towards the lower code, bits added where lambdas > 0; a row with a NaN as numpy ranks it."""
    rng = np.random.default_rng(codes + count)
    vectors = rng.normal(size=(codes, dim)).astype(np.float32)
    vectors[codes // 2:codes // 2 + 4] = vectors[1]  # equal distances to several codes
    bits = rng.uniform(1, 12, size=codes).astype(np.float32)
    codebook = npencoder.Codebook.of(vectors, bits)
    rows = (vectors[rng.integers(codes, size=3000)] + rng.normal(0, 0.1, (3000, dim))).astype(np.float32)
    rows[:50] = vectors[1]  # exact ties between the duplicated codewords
    rows[60, 2] = np.nan
    costs, indices = stepkernel.nearest_codes(rows, codebook.minus_doubled_transposed, codebook.squared_norms,
                                              bits, lambdas, count)
    expected_costs, expected = npencoder.smallest(npencoder.distances(rows, codebook, lambdas), count)
    finite = np.isfinite(expected_costs).all(1)
    assert not finite[60] and finite.sum() == 2999
    assert np.array_equal(indices[finite], expected[finite])
    np.testing.assert_allclose(costs[finite], expected_costs[finite], rtol=1e-5, atol=1e-4)
    if count >= 5 and lambdas == 0:
        assert indices[0, :5].tolist() == sorted(indices[0, :5].tolist())  # the five equal codes, lowest first

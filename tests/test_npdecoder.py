"""The torch-free runtime's decoder (hvqcodec/npdecoder.py) against torch's float32 `HierarchicalVQVAE.decode`:
a tiny random model with every optional part on (refinement stages, detail head, deeper /2 stage, post-filter),
every prefix of the streams, with the C kernels and in plain numpy; the shipped model on a small image; threads;
`to_uint8` against torch's rounding; the configs it refuses; and that it imports no torch."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hvqcodec import decoderkernel, npdecoder
from hvqcodec.autoencoder import AutoencoderConfig, HierarchicalVQVAE
from hvqcodec.npdecoder import NumpyDecoder, to_uint8

DATA = Path(__file__).parent / "data"

SMALL_CONFIG = dict(widths=(16, 16, 32), encoder_depths=(1, 1, 1), decoder_depths=(1, 1, 2), code_dim=8,
                    codebook_sizes=(16, 16, 16), refine_stages=2, refine_groups=2, refine_codebook_size=8,
                    detail_head=True, half_depth=2, post_filter=(8, 3))

KERNELS = [pytest.param(True, id="C kernels", marks=pytest.mark.skipif(
    not decoderkernel.available(), reason="hvqcodec._decoderkernel is not built here")),
    pytest.param(False, id="plain numpy")]


def randomised(config: dict, seed: int = 0) -> HierarchicalVQVAE:
    """A model whose every parameter is random (no zero-initialised detail head, post-filter or near-zero layer
    scales), rounded to float16 as the shipped files are, in eval mode."""
    model = HierarchicalVQVAE(AutoencoderConfig(**config)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            noise = torch.randn(value.shape, generator=generator)
            if name.endswith("codebook") or name == "absent":
                value.copy_(noise)
            elif value.ndim > 1:  # convolutions and Linears: unit gain
                value.copy_(noise / math.sqrt(value[0].numel()))
            elif name.endswith("gamma"):
                value.copy_(0.5 * noise)
            elif name.endswith("weight"):  # LayerNorms
                value.copy_(1 + 0.2 * noise)
            else:  # biases
                value.copy_(0.1 * noise)
            value.copy_(value.half().float())
    return model


def float16_state(model: HierarchicalVQVAE) -> dict[str, np.ndarray]:
    """The state as the runtime reads it from an exported file: float16 numpy arrays."""
    return {k: v.half().numpy() for k, v in model.state_dict().items() if v.is_floating_point()}


def random_codes(config: dict, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    top, mid, bottom = config["codebook_sizes"]
    return ([rng.integers(0, top, (h, w)), rng.integers(0, mid, (2 * h, 2 * w)),
             rng.integers(0, bottom, (4 * h, 4 * w))]
            + [rng.integers(0, config["refine_codebook_size"], (config["refine_groups"], 4 * h, 4 * w))
               for _ in range(config["refine_stages"])])


def torch_decode(model: HierarchicalVQVAE, codes: list[np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        picture = model.decode([torch.from_numpy(c)[None] for c in codes], low_precision=False)
    return picture[0].permute(1, 2, 0).numpy()


def torch_uint8(picture: np.ndarray) -> np.ndarray:
    """Codec.decode_codes' rounding."""
    return torch.from_numpy(picture).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()


def assert_agrees(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    assert float(np.abs(ours - reference).max()) < 1e-4
    ours8, reference8 = to_uint8(ours), torch_uint8(reference)
    assert np.mean(ours8 == reference8) >= 0.999
    assert int(np.abs(ours8.astype(np.int16) - reference8).max()) <= 1


pytestmark = pytest.mark.usefixtures("torch_on_one_thread")


@pytest.fixture(scope="module")
def small_model() -> HierarchicalVQVAE:
    return randomised(SMALL_CONFIG)


@pytest.mark.parametrize("kernels", KERNELS)
def test_every_prefix_matches_torch_on_a_small_random_model(small_model, kernels):
    codes = random_codes(SMALL_CONFIG, 2, 3)  # a 32x48-pixel tile
    decoder = NumpyDecoder(small_model.config.to_dict(), float16_state(small_model), kernels=kernels)
    assert decoder.num_streams == 5
    pictures = []
    for streams in range(1, 6):
        ours = decoder.decode(codes[:streams], threads=1)
        assert ours.shape == (32, 48, 3)
        assert_agrees(ours, torch_decode(small_model, codes[:streams]))
        pictures.append(ours)
    # Each stream changes the picture (the 'absent' vectors and the stages are really used).
    assert all(not np.array_equal(a, b) for a, b in zip(pictures, pictures[1:]))
    decoder.close()


@pytest.mark.parametrize("kernels", KERNELS)
def test_threads_give_identical_pictures(small_model, kernels, monkeypatch):
    """Small bands, so that every layer's rows are shared out over the threads."""
    monkeypatch.setattr(npdecoder, "CHUNK_POSITIONS", 24)
    monkeypatch.setattr(npdecoder, "KERNEL_POST_FILTER_POSITIONS", 5 * 48)
    monkeypatch.setattr(npdecoder, "CONV3X3_POSITIONS", 5 * 50)
    monkeypatch.setattr(npdecoder, "DEPTHWISE_POSITIONS", 7)
    monkeypatch.setattr(npdecoder, "GELU_CHUNK", 1000)
    codes = random_codes(SMALL_CONFIG, 3, 3, seed=1)
    with NumpyDecoder(small_model.config.to_dict(), float16_state(small_model), kernels=kernels) as decoder:
        one, two, three = (decoder.decode(codes, threads=threads) for threads in (1, 2, 3))
        assert np.array_equal(one, two) and np.array_equal(one, three)
        assert_agrees(one, torch_decode(small_model, codes))
        assert np.array_equal(decoder.decode(codes, threads=2), two)  # the kept threads, again


def test_timer_hears_every_part(small_model):
    heard: dict[str, float] = {}

    def timer(name: str, seconds: float) -> None:
        heard[name] = heard.get(name, 0.0) + seconds

    decoder = NumpyDecoder(small_model.config.to_dict(), float16_state(small_model))
    decoder.decode(random_codes(SMALL_CONFIG, 2, 2), threads=1, timer=timer)
    assert set(npdecoder.PARTS) <= set(heard)
    assert any(name.startswith("ConvNeXt blocks: ") for name in heard)
    assert any(name.startswith("post-filter: ") for name in heard)
    assert all(seconds >= 0 for seconds in heard.values())


@pytest.fixture(scope="module")
def shipped():
    from hvqcodec.zoo import load_bundle

    model = load_bundle().autoencoder
    rgb = np.array(Image.open(DATA / "v1-source.png").convert("RGB"))  # 64x48: one small tile
    images = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        codes = [c[0].numpy() for c in model.encode(images)]
    return model, codes


@pytest.mark.parametrize("kernels", KERNELS)
def test_shipped_model_matches_torch(shipped, kernels):
    model, codes = shipped
    references = [torch_decode(model, codes[:streams]) for streams in range(1, len(codes) + 1)]
    decoder = NumpyDecoder(model.config.to_dict(), float16_state(model), kernels=kernels)
    for streams, reference in enumerate(references, 1):
        ours = decoder.decode(codes[:streams], threads=1)
        assert ours.shape == (48, 64, 3)
        assert_agrees(ours, reference)
    decoder.close()


def test_to_uint8_rounds_as_torch():
    special = [0.5 / 255, 1.5 / 255, 2.5 / 255, 3.5 / 255, 127.5 / 255, 254.5 / 255, -0.1, 1.2, 0.0, 1.0, -0.0,
               0.5, np.inf, -np.inf]
    halves = (np.arange(256) + 0.5) / 255  # each level's midpoint, and the floats on either side of it
    values = np.concatenate([special, halves, np.nextafter(halves.astype(np.float32), 0),
                             np.nextafter(halves.astype(np.float32), 1), np.linspace(-0.2, 1.2, 5001)])
    picture = values.astype(np.float32)
    assert np.array_equal(to_uint8(picture), torch_uint8(picture))
    assert list(to_uint8(np.float32([0.5 / 255, 1.5 / 255, 2.5 / 255, -0.1, 1.2]))) == [0, 2, 2, 0, 255]
    assert to_uint8(np.zeros((2, 3, 3), np.float32)).dtype == np.uint8
    with pytest.raises(ValueError):
        to_uint8(np.zeros(3, np.uint8))


def test_config_keys_are_in_step_with_the_autoencoder_config():
    """Every AutoencoderConfig key is known (an unknown one is refused), with the same defaults."""
    defaults = AutoencoderConfig().to_dict()
    assert set(defaults) == set(npdecoder.DECODER_CONFIG_DEFAULTS) | npdecoder.ENCODER_CONFIG_KEYS
    for key, value in npdecoder.DECODER_CONFIG_DEFAULTS.items():
        assert list(value) == defaults[key] if isinstance(value, tuple) else value == defaults[key], key


def test_older_configs_without_the_newer_keys_decode():
    config = dict(SMALL_CONFIG, detail_head=False, half_depth=1, post_filter=(), refine_stages=0)
    model = randomised(config, seed=2)
    older = {k: v for k, v in model.config.to_dict().items()
             if k not in ("detail_head", "half_depth", "post_filter", "refine_stages")}
    codes = random_codes(config, 2, 2)
    assert_agrees(NumpyDecoder(older, float16_state(model)).decode(codes, threads=1), torch_decode(model, codes))


@pytest.mark.parametrize("change,message", [
    ({"decoder_attention": True}, "does not implement autoencoder config keys"),
    ({"post_filter": [32]}, "post_filter"),
    ({"widths": [16, 32]}, "widths"),
    ({"half_depth": 0}, "half_depth"),
    ({"detail_head": 1}, "detail_head"),
    ({"refine_groups": 3}, "divisible"),
])
def test_refuses_configs_it_does_not_implement(small_model, change, message):
    with pytest.raises(ValueError, match=message):
        NumpyDecoder({**small_model.config.to_dict(), **change}, float16_state(small_model))


def test_refuses_states_and_codes_that_do_not_fit(small_model):
    state = float16_state(small_model)
    config = small_model.config.to_dict()
    with pytest.raises(ValueError, match="has no"):
        NumpyDecoder({**config, "half_depth": 3}, state)
    with pytest.raises(ValueError, match="shape"):
        NumpyDecoder({**config, "code_dim": 16}, state)
    decoder = NumpyDecoder(config, state)
    codes = random_codes(SMALL_CONFIG, 2, 3)
    for bad in ([], codes + codes[-1:], [codes[0], codes[2]], [codes[0].astype(np.float32)],
                [codes[0] + 16], [codes[0] - 1], [codes[0], codes[1], codes[2], codes[3][:1]]):
        with pytest.raises(ValueError):
            decoder.decode(bad)
    with pytest.raises(ValueError, match="threads"):
        decoder.decode(codes, threads=0)


def test_imports_no_torch():
    code = "import sys, hvqcodec.npdecoder; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"

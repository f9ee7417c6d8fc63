"""Shared fixtures: tiny random-weight models and small synthetic image folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hvqcodec.autoencoder import AutoencoderConfig, HierarchicalVQVAE

TINY_CONFIG = dict(widths=(8, 8, 8), encoder_depths=(1, 1, 1), decoder_depths=(1, 1, 1), code_dim=4,
                   codebook_sizes=(16, 16, 16))


@pytest.fixture
def tiny_config() -> AutoencoderConfig:
    return AutoencoderConfig(**TINY_CONFIG)


@pytest.fixture
def tiny_model(tiny_config) -> HierarchicalVQVAE:
    torch.manual_seed(0)
    return HierarchicalVQVAE(tiny_config).eval()


def synthetic_image(seed: int, height: int = 96, width: int = 128) -> np.ndarray:
    """Smooth gradients plus a few flat rectangles: photo-like enough for a tiny model to learn quickly."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.stack([a * x + b * y + c for a, b, c in rng.uniform(-0.5, 1.0, size=(3, 3))], -1)
    for _ in range(3):
        top, left = rng.integers(0, height // 2 + 1), rng.integers(0, width // 2 + 1)
        image[top:top + height // 3, left:left + width // 3] = rng.uniform(0, 1, 3)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i in range(6):
        target = folder / ("sub" if i % 2 else "") / f"img{i}.png"
        Image.fromarray(synthetic_image(i)).save(target)
    return folder


TINY_PRIOR = dict(channels=8, causal_blocks=1, cond_blocks=1)


def fit_prior(prior, codes: list[torch.Tensor], trained: slice, steps: int) -> list[float]:
    """Adam steps on the summed bits per code of the `trained` streams, then the float prior's total bits of
    every stream (the prior left in eval mode): a small trained prior for integer-against-float checks."""
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = sum(prior.bits_per_code(codes)[trained])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    prior.eval()
    with torch.no_grad():
        return [float(b) * c.numel() for b, c in zip(prior.bits_per_code(codes), codes)]


@pytest.fixture
def tiny_models_dir(tmp_path, monkeypatch) -> Path:
    """A models folder holding 'tiny': a random tiny autoencoder with random tiny priors, made the default."""
    from hvqcodec import codec, zoo
    from hvqcodec.priors import HierarchicalPrior, PriorConfig

    torch.manual_seed(0)
    autoencoder = HierarchicalVQVAE(AutoencoderConfig(**TINY_CONFIG))
    # Codebook vectors from a real init spread the codes, so the round trips exercise many symbols.
    autoencoder.train()(torch.rand(4, 3, 64, 64))
    state = {k: v.half().float() if v.is_floating_point() else v for k, v in autoencoder.state_dict().items()}
    autoencoder.load_state_dict(state)
    prior = HierarchicalPrior(PriorConfig(codebook_sizes=TINY_CONFIG["codebook_sizes"], **TINY_PRIOR))
    for p in prior.parameters():  # larger random weights: peaked, varied distributions
        p.data.mul_(3)
    folder = tmp_path / "models"
    ae_checkpoint = {"config": autoencoder.config.to_dict(), "model": autoencoder.state_dict(), "step": 0,
                     "history": [], "options": {"command": "test"}}
    prior_checkpoint = {"config": prior.config.to_dict(), "model": prior.state_dict(), "step": 0, "history": [],
                        "options": {"command": "test"},
                        "autoencoder": {"fingerprint": zoo.autoencoder_fingerprint(autoencoder)}}
    zoo.export_model(ae_checkpoint, "tiny", folder, priors_checkpoint=prior_checkpoint,
                     calibration_codes=calibration_codes(autoencoder))
    monkeypatch.setenv("HVQCODEC_MODELS", str(folder))
    codec.load_codec.cache_clear()
    yield folder
    codec.load_codec.cache_clear()


@pytest.fixture
def tiny_codec(tiny_models_dir):
    from hvqcodec.codec import load_codec

    return load_codec("tiny", "cpu")


LADDER_CONFIG = dict(TINY_CONFIG, refine_stages=2, refine_groups=2, refine_codebook_size=8)
# The ladder model also exercises sub-position conditioning of the level priors (tiny_codec the plain kind).
LADDER_PRIOR = dict(TINY_PRIOR, stage_channels=8, stage_blocks=1, subpixel_cond=True)


def calibration_codes(autoencoder: HierarchicalVQVAE) -> list[torch.Tensor]:
    """Codes of a few synthetic photos: what sets a tiny model's 8-bit table scales (the shipped format)."""
    images = torch.stack([torch.from_numpy(synthetic_image(100 + s, 64, 64)).permute(2, 0, 1).float() / 255
                          for s in range(4)])
    with torch.no_grad():
        return autoencoder.eval().encode(images)


def export_tiny(folder: Path, name: str, config: dict, prior_options: dict, ladder: list[dict] | None = None,
                table_bits: int = 8, coding_block=None, force: bool = False) -> None:
    """Export a random tiny autoencoder (codebooks from a real init) with random, peaked priors as `name`
    (8-bit prior tables unless table_bits is 16; coding_block as `models export --coding-block` sets it)."""
    from hvqcodec import zoo
    from hvqcodec.priors import HierarchicalPrior, PriorConfig

    torch.manual_seed(0)
    autoencoder = HierarchicalVQVAE(AutoencoderConfig(**config))
    autoencoder.train()(torch.rand(4, 3, 64, 64))
    state = {k: v.half().float() if v.is_floating_point() else v for k, v in autoencoder.state_dict().items()}
    autoencoder.load_state_dict(state)
    ae = autoencoder.config
    prior = HierarchicalPrior(PriorConfig(codebook_sizes=ae.codebook_sizes, refine_stages=ae.refine_stages,
                                          refine_groups=ae.refine_groups,
                                          refine_codebook_size=ae.refine_codebook_size, **prior_options))
    for p in prior.parameters():  # larger random weights: peaked, varied distributions
        p.data.mul_(3)
    ae_checkpoint = {"config": ae.to_dict(), "model": autoencoder.state_dict(), "step": 0,
                     "history": [], "options": {"command": "test"}}
    prior_checkpoint = {"config": prior.config.to_dict(), "model": prior.state_dict(), "step": 0, "history": [],
                        "options": {"command": "test"},
                        "autoencoder": {"fingerprint": zoo.autoencoder_fingerprint(autoencoder)}}
    zoo.export_model(ae_checkpoint, name, folder, priors_checkpoint=prior_checkpoint,
                     calibration_codes=calibration_codes(autoencoder) if table_bits == 8 else None,
                     coding_block=coding_block, force=force)
    if ladder is not None:
        manifest = zoo.read_manifest(folder)
        manifest["models"][name]["ladder"] = ladder
        zoo.write_manifest(manifest, folder)


TINY_LADDER = [{"quality": 1, "streams": 1, "lambda": 0.0}, {"quality": 10, "streams": 3, "lambda": 0.05},
               {"quality": 30, "streams": 3, "lambda": 0.0}, {"quality": 50, "streams": 4, "lambda": 0.02},
               {"quality": 70, "streams": 5, "lambda": 0.01}, {"quality": 90, "streams": 5, "lambda": 0.0}]


@pytest.fixture
def ladder_codec(tmp_path, monkeypatch):
    """A tiny random model with two refinement stages and a quality ladder."""
    from hvqcodec import codec

    folder = tmp_path / "ladder-models"
    export_tiny(folder, "tiny-ladder", LADDER_CONFIG, LADDER_PRIOR, TINY_LADDER)
    monkeypatch.setenv("HVQCODEC_MODELS", str(folder))
    codec.load_codec.cache_clear()
    yield codec.load_codec("tiny-ladder", "cpu")
    codec.load_codec.cache_clear()


@pytest.fixture(scope="module")
def torch_on_one_thread():
    """torch's references on one thread (the numpy runtime's tests): on a 2-core machine that other work keeps busy,
    two intra-op threads wait for each other at every small operation (test_npdecoder.py took 12-20 s so, against
    about 3 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

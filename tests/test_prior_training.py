import json

import pytest
import torch
from click.testing import CliRunner

from hvqcodec.cli import main
from hvqcodec.errors import CheckpointError, ModelError
from hvqcodec.prior_training import PriorTrainOptions, train_priors
from hvqcodec.priors import HierarchicalPrior, PriorConfig, causal_mask
from hvqcodec.train import load_checkpoint, train_autoencoder
from hvqcodec.zoo import export_model, load_bundle

from conftest import TINY_PRIOR
from test_train import options as ae_options


def prior_options(folder, out, **overrides):
    base = dict(data=str(folder), out=str(out), steps=30, batch_size=4, crop=64, code_crops=24, lr=3e-3, warmup=0,
                log_every=10, val_every=1000, checkpoint_every=1000, max_side=128)
    return PriorTrainOptions(**{**base, **overrides})


@pytest.fixture
def trained_autoencoder(image_folder, tmp_path, tiny_config):
    train_autoencoder(ae_options(image_folder, tmp_path / "ae", steps=3), tiny_config)
    checkpoint = load_checkpoint(tmp_path / "ae" / "checkpoint.pt")
    folder = tmp_path / "models"
    export_model(checkpoint, "tiny-ae", folder)
    return checkpoint, folder


def test_priors_learn_and_ship(image_folder, tmp_path, trained_autoencoder, monkeypatch):
    checkpoint, folder = trained_autoencoder
    monkeypatch.setenv("HVQCODEC_MODELS", str(folder))
    state = train_priors(prior_options(image_folder, tmp_path / "priors", model="tiny-ae",
                                       val=str(image_folder / "sub"), val_every=15, val_crop=64),
                         PriorConfig(**TINY_PRIOR))
    records = [json.loads(line) for line in (tmp_path / "priors" / "train_log.jsonl").read_text().splitlines()]
    bits = [r["bits_bottom"] for r in records if "bits_bottom" in r]
    assert bits[-1] < bits[0]  # it learns
    assert [r["step"] for r in state.history] == [15, 30] and state.history[-1]["val_bpp"] > 0
    priors = load_checkpoint(tmp_path / "priors" / "checkpoint.pt", "priors")
    export_model(checkpoint, "tiny", folder, priors_checkpoint=priors)
    bundle = load_bundle("tiny", folder)
    assert bundle.prior_tables is not None and bundle.prior_config.channels == TINY_PRIOR["channels"]
    # Priors trained for another autoencoder are refused.
    assert priors["autoencoder"]["codes_fingerprint"]
    priors["autoencoder"].update(fingerprint="0" * 64, codes_fingerprint="0" * 64)
    with pytest.raises(ModelError, match="different autoencoder"):
        export_model(checkpoint, "tiny2", folder, priors_checkpoint=priors)


def test_prior_resume_is_exact(image_folder, tmp_path, trained_autoencoder):
    checkpoint, folder = trained_autoencoder
    autoencoder = load_bundle("tiny-ae", folder).autoencoder
    opts = dict(steps=6, log_every=1)
    train_priors(prior_options(image_folder, tmp_path / "a", **opts), PriorConfig(**TINY_PRIOR),
                 autoencoder=autoencoder)

    def stop(step, model):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_priors(prior_options(image_folder, tmp_path / "b", **opts), PriorConfig(**TINY_PRIOR),
                     autoencoder=autoencoder, on_step=stop)
    train_priors(prior_options(image_folder, tmp_path / "b", **opts), resume=True, autoencoder=autoencoder)
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt", "priors")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt", "priors")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CheckpointError, match="not an hvqcodec priors checkpoint"):
        load_checkpoint(tmp_path / "a" / "codes.pt", "priors")


def test_masked_convolution_is_causal():
    torch.manual_seed(0)
    prior = HierarchicalPrior(PriorConfig(codebook_sizes=(8, 8, 8), **TINY_PRIOR))
    codes = [torch.randint(0, 8, (1, 4, 6)), torch.randint(0, 8, (1, 8, 12)), torch.randint(0, 8, (1, 16, 24))]
    base = prior(codes)[2]
    changed = [c.clone() for c in codes]
    changed[2][0, 5, 7] = (changed[2][0, 5, 7] + 1) % 8
    diff = (prior(changed)[2] - base).abs().sum(1)[0] > 0
    rows, cols = diff.nonzero().unbind(1)
    # Changing (5, 7) may only affect positions later in wavefront order t = j + 3 i.
    assert bool(((cols + 3 * rows) > 7 + 3 * 5).all()) and diff.any()
    assert causal_mask()[2].tolist() == [1, 1, 0, 0, 0]


def test_train_priors_help_and_errors(tmp_path):
    result = CliRunner().invoke(main, ["train", "priors", "--help"])
    assert result.exit_code == 0 and "Examples:" in result.output
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["train", "priors", "--data", str(tmp_path / "empty"), "--out",
                                       str(tmp_path / "run"), "--model", "nope"])
    assert result.exit_code == 1 and "unknown model 'nope'" in result.output and "Traceback" not in result.output


def test_priors_warm_start_from_a_checkpoint(image_folder, tmp_path, trained_autoencoder, monkeypatch):
    """`train priors --init-from CHECKPOINT` starts from that run's weights: at a negligible learning rate they
    stay those (a fresh start would differ everywhere)."""
    checkpoint, folder = trained_autoencoder
    monkeypatch.setenv("HVQCODEC_MODELS", str(folder))
    autoencoder = load_bundle("tiny-ae", folder).autoencoder
    train_priors(prior_options(image_folder, tmp_path / "first", steps=4), PriorConfig(**TINY_PRIOR),
                 autoencoder=autoencoder)
    first = load_checkpoint(tmp_path / "first" / "checkpoint.pt", "priors")
    args = ["train", "priors", "--model", "tiny-ae", "--data", str(image_folder), "--out", str(tmp_path / "second"),
            "--steps", "2", "--batch-size", "2", "--crop", "64", "--code-crops", "8", "--lr", "1e-12", "--warmup", "0",
            "--channels", str(TINY_PRIOR["channels"]), "--causal-blocks", str(TINY_PRIOR["causal_blocks"]),
            "--cond-blocks", str(TINY_PRIOR["cond_blocks"]), "--init-from", str(tmp_path / "first" / "checkpoint.pt")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "warm start" in result.output
    second = load_checkpoint(tmp_path / "second" / "checkpoint.pt", "priors")
    assert all(torch.allclose(second["model"][k], v, atol=1e-9) for k, v in first["model"].items())
    bad = CliRunner().invoke(main, args[:-1] + [str(tmp_path / "missing.pt")])
    assert bad.exit_code != 0 and "no checkpoint there" in bad.output
    # Plain priors start priors with sub-position conditioning: each projection repeated for the 4 positions.
    wide_args = [str(tmp_path / "wide") if a == str(tmp_path / "second") else a for a in args] + ["--subpixel-cond"]
    result = CliRunner().invoke(main, wide_args)
    assert result.exit_code == 0, result.output
    wide = load_checkpoint(tmp_path / "wide" / "checkpoint.pt", "priors")
    assert wide["config"]["subpixel_cond"] is True
    for key, value in first["model"].items():
        expected = value.repeat_interleave(4, 0) if ".cond_proj." in key else value
        assert torch.allclose(wide["model"][key], expected, atol=1e-9), key


def test_variable_rate_autoencoder_gives_priors_coarse_and_fine_codes():
    """Each crop's bottom is coded with one of the model's bottom weights (seeded), so the priors see both."""
    from rich.console import Console

    from hvqcodec.autoencoder import AutoencoderConfig, HierarchicalVQVAE
    from hvqcodec.prior_training import encode_crops
    from conftest import TINY_CONFIG

    torch.manual_seed(0)
    model = HierarchicalVQVAE(AutoencoderConfig(**TINY_CONFIG, bottom_lambdas=(0.0, 1e4)))
    model.train()(torch.rand(4, 3, 64, 64))
    images = torch.rand(32, 3, 32, 32)
    codes = encode_crops(model, images.split(8), 4, Console(quiet=True), seed=3)
    nearest = model.encode(images)[2]
    most_used = int(model.quantisers[2].cluster_size.argmax())
    coarse = (codes[2] == most_used).flatten(1).all(1)
    assert 4 <= int(coarse.sum()) <= 28  # about half of the crops
    assert torch.equal(codes[2][~coarse].long(), nearest[~coarse])
    again = encode_crops(model, images.split(8), 4, Console(quiet=True), seed=3)
    assert all(torch.equal(a, b) for a, b in zip(codes, again))

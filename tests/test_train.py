import json

import pytest
import torch

from hvqcodec.errors import CheckpointError, DataError
from hvqcodec.train import TrainOptions, learning_rate, load_checkpoint, train_autoencoder


def options(folder, out, **overrides) -> TrainOptions:
    base = dict(data=str(folder), out=str(out), steps=6, batch_size=4, crop=32, lr=3e-3, warmup=0, log_every=1,
                val_every=1000, checkpoint_every=1000, max_side=128)
    return TrainOptions(**{**base, **overrides})


def test_a_few_steps_lower_the_loss(image_folder, tmp_path, tiny_config):
    train_autoencoder(options(image_folder, tmp_path / "run", steps=40, log_every=10), tiny_config)
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4
    assert losses[-1] < 0.7 * losses[0]


def test_resume_continues_exactly(image_folder, tmp_path, tiny_config):
    straight = tmp_path / "straight"
    train_autoencoder(options(image_folder, straight), tiny_config)

    interrupted = tmp_path / "interrupted"

    def stop_at_three(step, model):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_autoencoder(options(image_folder, interrupted), tiny_config, on_step=stop_at_three)
    assert load_checkpoint(interrupted / "checkpoint.pt")["step"] == 3
    # Different hyperparameters on the command line must not change a resumed run.
    train_autoencoder(options(image_folder, interrupted, lr=1.0, batch_size=2), resume=True)

    a = load_checkpoint(straight / "checkpoint.pt")
    b = load_checkpoint(interrupted / "checkpoint.pt")
    assert a["step"] == b["step"] == 6
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_validation_history(image_folder, tmp_path, tiny_config):
    state = train_autoencoder(options(image_folder, tmp_path / "run", val=str(image_folder / "sub"), val_every=3,
                                      val_crop=64), tiny_config)
    assert [r["step"] for r in state.history] == [3, 6]
    assert all(r["val_psnr_3"] > 5 for r in state.history)
    assert {"val_used_top", "val_perplexity_bottom", "val_psnr_1"} <= set(state.history[0])


def test_validation_folder_is_left_out_of_training(image_folder, tmp_path, tiny_config):
    with pytest.raises(DataError, match="no images found"):
        train_autoencoder(options(image_folder / "sub", tmp_path / "run", val=str(image_folder / "sub")), tiny_config)


def test_resume_without_checkpoint(image_folder, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train_autoencoder(options(image_folder, tmp_path / "run"), resume=True)


def test_learning_rate_schedule():
    opts = TrainOptions(data="", out="", steps=1000, warmup=100, lr=1.0)
    assert learning_rate(0, opts) == pytest.approx(0.01)
    assert learning_rate(99, opts) == pytest.approx(1.0)
    assert learning_rate(1000, opts) == pytest.approx(0.1)


def test_time_budget_stops_training_and_saves(image_folder, tmp_path):
    import json

    from hvqcodec.autoencoder import AutoencoderConfig
    from hvqcodec.train import TrainOptions, load_checkpoint, train_autoencoder
    from conftest import TINY_CONFIG

    options = TrainOptions(data=str(image_folder), out=str(tmp_path / "run"), steps=100000, batch_size=2, crop=32,
                           warmup=1, val_every=100000, checkpoint_every=100000, time_budget=0.02)
    state = train_autoencoder(options, AutoencoderConfig(**TINY_CONFIG))
    assert 0 < state.step < 100000
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == state.step
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert records[-1] == {"step": state.step, "time_budget_reached": True}


def test_autoencoder_warm_start_from_a_checkpoint_path(image_folder, tmp_path, tiny_config):
    from click.testing import CliRunner

    from hvqcodec.cli import main

    train_autoencoder(options(image_folder, tmp_path / "first", steps=3), tiny_config)
    first = load_checkpoint(tmp_path / "first" / "checkpoint.pt")
    c = tiny_config
    args = ["train", "autoencoder", "--data", str(image_folder), "--out", str(tmp_path / "second"), "--steps", "1",
            "--batch-size", "2", "--crop", "32", "--lr", "1e-12", "--warmup", "0",
            "--widths", ",".join(map(str, c.widths)), "--encoder-depths", ",".join(map(str, c.encoder_depths)),
            "--decoder-depths", ",".join(map(str, c.decoder_depths)),
            "--codebook-sizes", ",".join(map(str, c.codebook_sizes)), "--code-dim", str(c.code_dim),
            "--init-from", str(tmp_path / "first" / "checkpoint.pt")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    second = load_checkpoint(tmp_path / "second" / "checkpoint.pt")
    # Weights are those of the first run (the EMA codebooks move without a learning rate, so they are skipped).
    weights = [k for k in first["model"] if not k.startswith("quantisers.")]
    assert weights and all(torch.allclose(second["model"][k], first["model"][k], atol=1e-9) for k in weights)


def test_decoder_only_training_keeps_every_code(image_folder, tmp_path, tiny_config):
    """A deeper decoder trained on a frozen encoder side: encoder weights and codebooks are untouched (no
    gradient, no EMA update), so every image keeps its codes and priors trained on them stay valid."""
    from dataclasses import replace

    from hvqcodec.autoencoder import HierarchicalVQVAE

    config = replace(tiny_config, refine_stages=1, refine_groups=1, refine_codebook_size=16, bottom_lambdas=(0.0, 0.01))
    train_autoencoder(options(image_folder, tmp_path / "first", steps=4), config)
    first = load_checkpoint(tmp_path / "first" / "checkpoint.pt")
    deeper = replace(config, decoder_depths=(*config.decoder_depths[:2], config.decoder_depths[2] + 1), half_depth=2)
    state = train_autoencoder(options(image_folder, tmp_path / "second", steps=5, decoder_only=True), deeper,
                              init_from=first["model"])
    assert state.step == 5
    second = load_checkpoint(tmp_path / "second" / "checkpoint.pt")

    before, after = HierarchicalVQVAE(config).eval(), HierarchicalVQVAE(deeper).eval()
    before.load_state_dict(first["model"])
    after.load_state_dict(second["model"])
    encoder_keys = set(before.encoder_side_state())
    assert encoder_keys and all(torch.equal(first["model"][k], second["model"][k]) for k in encoder_keys)
    decoder_keys = [k for k in first["model"] if k.startswith(("dec1.", "to_rgb."))]
    assert any(not torch.equal(first["model"][k], second["model"][k]) for k in decoder_keys)
    images = torch.rand(2, 3, 48, 64)
    for lam in (0.0, 0.01):
        assert all(torch.equal(a, b) for a, b in zip(before.encode(images, lam), after.encode(images, lam)))


def test_encoder_only_training_keeps_codebooks_and_decoder(image_folder, tmp_path, tiny_config):
    """A deeper encoder trained against a frozen decoder: codebooks (and their usage), context path and decoder
    are untouched, the encoder trunk learns (through the straight-through gradient, with the quantisers in
    training mode but not updating)."""
    from dataclasses import replace

    config = replace(tiny_config, refine_stages=1, refine_groups=1, refine_codebook_size=16, bottom_lambdas=(0.0, 0.01))
    train_autoencoder(options(image_folder, tmp_path / "first", steps=4), config)
    first = load_checkpoint(tmp_path / "first" / "checkpoint.pt")
    deeper = replace(config, encoder_depths=(config.encoder_depths[0] + 1, *config.encoder_depths[1:]))
    state = train_autoencoder(options(image_folder, tmp_path / "second", steps=5, encoder_only=True), deeper,
                              init_from=first["model"])
    assert state.step == 5
    second = load_checkpoint(tmp_path / "second" / "checkpoint.pt")["model"]
    trunk = ("stem.", "enc1.", "down2.", "enc2.", "down3.", "enc3.", "pre_quant.")
    fixed = [k for k in first["model"] if not k.startswith(trunk)]
    assert any(k.startswith(("quantisers.", "refiners.")) and k.endswith("cluster_size") for k in fixed)
    assert any(k.startswith(("dec1.", "context_mid.", "to_rgb.")) for k in fixed)
    assert all(torch.equal(first["model"][k], second[k]) for k in fixed)
    learned = [k for k in first["model"] if k.startswith(trunk) and first["model"][k].is_floating_point()]
    assert any(not torch.equal(first["model"][k], second[k]) for k in learned)


@pytest.mark.parametrize("flag", ["--decoder-only", "--encoder-only"])
def test_frozen_side_training_needs_a_model_to_start_from(image_folder, tmp_path, flag):
    from click.testing import CliRunner

    from hvqcodec.cli import main

    result = CliRunner().invoke(main, ["train", "autoencoder", "--data", str(image_folder), "--out",
                                       str(tmp_path / "run"), flag])
    assert result.exit_code != 0
    assert flag in result.output and "needs --init-from" in result.output


def test_decoder_only_and_encoder_only_exclude_each_other(image_folder, tmp_path):
    from click.testing import CliRunner

    from hvqcodec.cli import main

    result = CliRunner().invoke(main, ["train", "autoencoder", "--data", str(image_folder), "--out",
                                       str(tmp_path / "run"), "--decoder-only", "--encoder-only", "--init-from", "x.pt"])
    assert result.exit_code != 0 and "choose one of --decoder-only and --encoder-only" in result.output



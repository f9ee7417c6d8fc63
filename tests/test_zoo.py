import pytest
import torch

from hvqcodec.errors import ModelError
from hvqcodec.train import load_checkpoint, train_autoencoder
from hvqcodec.zoo import available_models, export_model, load_model, read_manifest, sha256_file

from test_train import options


@pytest.fixture
def checkpoint(image_folder, tmp_path, tiny_config):
    train_autoencoder(options(image_folder, tmp_path / "run", steps=2), tiny_config)
    return load_checkpoint(tmp_path / "run" / "checkpoint.pt")


def test_export_round_trip_rebuilds_identical_model(checkpoint, tmp_path):
    folder = tmp_path / "models"
    entry = export_model(checkpoint, "tiny", folder, data="synthetic", metrics={"psnr": 1.0})
    assert entry["file"] == f"tiny-{entry['sha256'][:12]}.pt"
    assert sha256_file(folder / entry["file"]) == entry["sha256"]
    assert read_manifest(folder)["models"]["tiny"]["training_steps"] == 2
    model = load_model("tiny", folder)
    # The export stores fp16: the rebuilt model equals the trained one with its weights rounded to fp16.
    for key, value in checkpoint["model"].items():
        expected = value.half().float() if value.is_floating_point() else value
        assert torch.equal(model.state_dict()[key], expected), key
    images = torch.rand(1, 3, 40, 24)
    with torch.no_grad():
        assert torch.equal(model.reconstruct(images), load_model("tiny", folder).reconstruct(images))


def test_wrong_hash_is_refused(checkpoint, tmp_path):
    folder = tmp_path / "models"
    entry = export_model(checkpoint, "tiny", folder)
    path = folder / entry["file"]
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="hash mismatch"):
        load_model("tiny", folder)


def test_unknown_name_and_duplicates(checkpoint, tmp_path):
    folder = tmp_path / "models"
    export_model(checkpoint, "tiny", folder)
    with pytest.raises(ModelError, match=r"unknown model 'nope' \(available: tiny\)"):
        load_model("nope", folder)
    with pytest.raises(ModelError, match="already exists"):
        export_model(checkpoint, "tiny", folder)
    first = available_models(folder)["tiny"]["file"]
    second = export_model(checkpoint, "tiny", folder, force=True)["file"]
    assert sorted(p.name for p in folder.glob("*.pt")) == [second]  # the replaced file is gone
    assert first == second or not (folder / first).exists()
    with pytest.raises(ModelError, match="model name"):
        export_model(checkpoint, "Bad Name", folder)


def test_priors_follow_the_codes_not_the_decoder(checkpoint, tmp_path, monkeypatch):
    """Priors fit any autoencoder that gives the same codes: one whose decoder alone changed is accepted (by
    codes fingerprint, or for older priors checkpoints through the shipped model they name); a changed encoder
    or codebook is refused."""
    from hvqcodec.priors import HierarchicalPrior, PriorConfig
    from hvqcodec.zoo import autoencoder_fingerprint, codes_fingerprint, half_state

    from conftest import TINY_PRIOR

    folder = tmp_path / "models"
    monkeypatch.setenv("HVQCODEC_MODELS", str(folder))
    export_model(checkpoint, "tiny-ae", folder)
    source = load_model("tiny-ae", folder)
    config = checkpoint["config"]
    prior = HierarchicalPrior(PriorConfig(codebook_sizes=tuple(config["codebook_sizes"]), **TINY_PRIOR))

    def priors(trained_for: dict) -> dict:
        return {"config": prior.config.to_dict(), "model": prior.state_dict(), "step": 0, "history": [],
                "options": {"command": "test"}, "autoencoder": trained_for}

    def variant(prefix: str) -> dict:
        state = {k: v.clone() for k, v in half_state(source.state_dict()).items()}
        key = next(k for k in state if k.startswith(prefix) and state[k].is_floating_point())
        state[key] += 0.5
        return dict(checkpoint, model={k: v.float() if v.is_floating_point() else v for k, v in state.items()})

    new_decoder, new_encoder, new_codebook = variant("to_rgb."), variant("enc1."), variant("quantisers.2.")
    current = {"name": "tiny-ae", "fingerprint": autoencoder_fingerprint(source),
               "codes_fingerprint": codes_fingerprint(source)}
    legacy = {"name": "tiny-ae", "fingerprint": autoencoder_fingerprint(source)}
    for trained_for in (current, legacy):
        export_model(new_decoder, "decoder-changed", folder, priors_checkpoint=priors(trained_for), force=True)
        for changed in (new_encoder, new_codebook):
            with pytest.raises(ModelError, match="different autoencoder"):
                export_model(changed, "encoder-changed", folder, priors_checkpoint=priors(trained_for), force=True)
    with pytest.raises(ModelError, match="different autoencoder"):  # a legacy entry must match its named model
        export_model(new_decoder, "decoder-changed", folder, force=True,
                     priors_checkpoint=priors(dict(legacy, fingerprint="0" * 64)))


def test_a_variant_codes_with_its_base_weights_under_its_own_hash(tiny_models_dir):
    """`models variant`: no new weights file, the base's tables, the variant's coding block; its files name the
    variant and its own hash, and give the base's codes; the base refuses them; replacing the base keeps the
    weights file the variant uses."""
    from PIL import Image

    from hvqcodec import codec as codec_module
    from hvqcodec.zoo import make_variant, variant_sha256
    from conftest import TINY_CONFIG, TINY_PRIOR, export_tiny, synthetic_image

    folder = tiny_models_dir
    files = sorted(p.name for p in folder.glob("*.pt"))
    entry = make_variant("tiny", "tiny-blocks", {"coding_block": [[0, 0], [4, 4], [4, 8]]}, folder)
    assert sorted(p.name for p in folder.glob("*.pt")) == files
    base_entry = available_models(folder)["tiny"]
    assert entry["file"] == base_entry["file"] and entry["file_sha256"] == base_entry["sha256"]
    assert entry["sha256"] == variant_sha256(base_entry["sha256"], {"coding_block": [[0, 0], [4, 4], [4, 8]]})
    assert entry["priors"]["config"]["coding_block"] == [[0, 0], [4, 4], [4, 8]] and entry["variant_of"] == "tiny"
    base, variant = codec_module.load_codec("tiny", "cpu"), codec_module.load_codec("tiny-blocks", "cpu")
    assert [level.block for level in variant.prior.levels] == [(0, 0), (4, 4), (4, 8)]
    assert [level.block for level in base.prior.levels] == [(0, 0)] * 3
    rgb = synthetic_image(21, 96, 80)
    ours, theirs = variant.compress(Image.fromarray(rgb)), base.compress(Image.fromarray(rgb))
    header = codec_module.container.read_header(ours.data)
    assert (header.model_name, header.model_hash) == ("tiny-blocks", entry["sha256"][:16])
    assert ours.data != theirs.data
    assert all(torch.equal(a, b) for a, b in zip(variant.decompress(ours.data).codes[0],
                                                 base.decompress(theirs.data).codes[0]))
    with pytest.raises(ModelError, match="made with model tiny-blocks"):
        base.decompress(ours.data)
    # Replacing the base with other weights must not delete the file its variant still uses.
    export_tiny(folder, "tiny", TINY_CONFIG, dict(TINY_PRIOR, causal_blocks=2), force=True)
    assert available_models(folder)["tiny"]["file"] != entry["file"] and (folder / entry["file"]).is_file()
    codec_module.load_codec.cache_clear()
    assert codec_module.load_codec("tiny-blocks", "cpu").decompress(ours.data).image.size == (80, 96)


def test_variant_settings_are_checked(tiny_models_dir):
    import json

    from hvqcodec.zoo import load_bundle, make_variant

    folder = tiny_models_dir
    with pytest.raises(ModelError, match=r"unknown model 'nope'"):
        make_variant("nope", "v", {"coding_block": 4}, folder)
    with pytest.raises(ModelError, match="may only set coding_block"):
        make_variant("tiny", "v", {"codebook": 4}, folder)
    with pytest.raises(ModelError, match="one entry per level"):
        make_variant("tiny", "v", {"coding_block": [4, 4]}, folder)
    make_variant("tiny", "v", {"coding_block": 4}, folder)
    with pytest.raises(ModelError, match="already exists"):
        make_variant("tiny", "v", {"coding_block": 8}, folder)
    assert load_bundle("v", folder).prior_config.coding_block == 4
    # A manifest edited by hand (other settings under the same hash) is refused, not decoded differently.
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["models"]["v"]["coding"]["coding_block"] = 8
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="do not match its hash"):
        load_bundle("v", folder)

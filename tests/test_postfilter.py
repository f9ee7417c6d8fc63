"""The post-filter: identity at the start, where it sits in decoding, its training, and models made with it."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hvqcodec import codec as codec_module
from hvqcodec import container
from hvqcodec import zoo
from hvqcodec.autoencoder import AutoencoderConfig, HierarchicalVQVAE
from hvqcodec.cli import main
from hvqcodec.errors import HvqError, ModelError
from hvqcodec.postfilter import PostFilter, PostFilterOptions, load_post_filter, train_post_filter

from conftest import TINY_CONFIG, synthetic_image


def test_a_new_filter_is_the_identity():
    rgb = torch.rand(2, 3, 20, 24)
    assert torch.equal(PostFilter(8, 3)(rgb), rgb)
    with pytest.raises(ValueError):
        PostFilter(8, 1)


def test_decoding_ends_with_the_filter(tiny_model):
    """A model with a filter decodes to its filter applied to what the same model without one decodes; the
    codes, which come before the decoder, do not change."""
    torch.manual_seed(1)
    filtered = HierarchicalVQVAE(AutoencoderConfig(**TINY_CONFIG, post_filter=(4, 3))).eval()
    missing = filtered.load_state_dict(tiny_model.state_dict(), strict=False)
    assert set(missing.missing_keys) == {k for k in filtered.state_dict() if k.startswith("post_filter.")}
    images = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        codes = tiny_model.encode(images)
        assert all(torch.equal(a, b) for a, b in zip(filtered.encode(images), codes))
        plain = tiny_model.decode(codes)
        assert torch.equal(filtered.decode(codes), plain)  # zero last layer: the identity
        for p in filtered.post_filter.parameters():
            p.normal_(0, 0.1)
        assert torch.allclose(filtered.decode(codes), filtered.post_filter(plain), atol=1e-6)
        assert not torch.allclose(filtered.decode(codes), plain, atol=1e-3)


@pytest.fixture
def photos(tmp_path):
    folders = {}
    for name, seeds in (("train", range(8)), ("val", range(50, 53))):
        folder = tmp_path / name
        folder.mkdir()
        for seed in seeds:
            Image.fromarray(synthetic_image(seed, 96, 96)).save(folder / f"{seed}.png")
        folders[name] = folder
    return folders


def test_training_lowers_the_error_on_held_out_pictures(tiny_models_dir, photos, tmp_path):
    options = PostFilterOptions(data=str(photos["train"]), val=str(photos["val"]), out=str(tmp_path / "pf"),
                                model="tiny", channels=8, layers=3, qualities=(1, 100), crop=64, val_crop=96,
                                patch=32, steps=400, lr=3e-3)
    checkpoint = train_post_filter(options)
    assert checkpoint["steps"] == 400 and checkpoint["model"] == "tiny"
    assert [row["quality"] for row in checkpoint["validation"]] == [1, 100]
    for row in checkpoint["validation"]:  # a random decoder's pictures are easy to improve on
        assert row["psnr_with"] > row["psnr_without"] + 0.5, row
    loaded, post_filter = load_post_filter(tmp_path / "pf" / "checkpoint.pt")
    assert loaded["config"] == {"channels": 8, "layers": 3}
    assert (tmp_path / "pf" / "train_log.jsonl").exists()
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_post_filter(tiny_models_dir / zoo.read_manifest(tiny_models_dir)["models"]["tiny"]["file"])


def test_images_smaller_than_the_crop_are_refused(tiny_models_dir, photos, tmp_path):
    options = PostFilterOptions(data=str(photos["train"]), out=str(tmp_path / "pf"), model="tiny", crop=128)
    with pytest.raises(HvqError, match="no training image is at least 128 pixels"):
        train_post_filter(options)


def test_a_model_plus_its_filter(tiny_models_dir, photos, tmp_path):
    """add-filter makes a new model: the same codes and streams as the base (only the header's model name and
    hash differ), pictures through the filter; a filter trained for another model, or a second filter, is refused."""
    options = PostFilterOptions(data=str(photos["train"]), out=str(tmp_path / "pf"), model="tiny", channels=8,
                                layers=3, qualities=(100,), crop=64, patch=32, steps=50)
    train_post_filter(options)
    result = CliRunner().invoke(main, ["models", "add-filter", str(tmp_path / "pf" / "checkpoint.pt"), "--to",
                                       "tiny", "--name", "tiny-pf"])
    assert result.exit_code == 0, result.output
    codec_module.load_codec.cache_clear()
    base, new = codec_module.load_codec("tiny"), codec_module.load_codec("tiny-pf")
    assert new.sha256 != base.sha256 and new.autoencoder.post_filter is not None
    rgb = synthetic_image(7, 64, 80)
    base_file, new_file = base.compress(rgb), new.compress(rgb)
    assert base_file.level_bytes == new_file.level_bytes
    assert container.unpack(base_file.data).streams == container.unpack(new_file.data).streams
    for a, b in zip(base_file.codes[0], new_file.codes[0]):
        assert torch.equal(a, b)
    _, post_filter = load_post_filter(tmp_path / "pf" / "checkpoint.pt")
    with torch.no_grad():
        # The codec's own decoder precision (bfloat16 where the CPU has AMX), so that only the filter differs.
        plain = base.autoencoder.decode([c[None] for c in base_file.codes[0]], new.low_precision_decoder)
        want = post_filter.half().float()(plain)[0, :, :64, :80].clamp(0, 1).mul(255).round().byte()
    got = np.asarray(new.decompress(new_file.data).image)
    assert np.abs(got.astype(int) - want.permute(1, 2, 0).numpy().astype(int)).max() <= 1
    with pytest.raises(ModelError, match="not 'tiny-pf'"):
        zoo.add_post_filter("tiny-pf", "tiny-pf2", tmp_path / "pf" / "checkpoint.pt", tiny_models_dir)
    with pytest.raises(ModelError, match="already exists"):
        zoo.add_post_filter("tiny", "tiny-pf", tmp_path / "pf" / "checkpoint.pt", tiny_models_dir)


def test_a_decoder_trained_alone_ships_with_its_base_models_priors(tiny_models_dir, image_folder, tmp_path):
    """`train autoencoder --decoder-only --post-filter` from a shipped model, then `models export --priors-from`
    it: the new model writes the base's streams (its integer priors and codes) and decodes them to other pixels;
    an autoencoder whose codes differ is refused."""
    runner = CliRunner()
    run = tmp_path / "dec"
    result = runner.invoke(main, ["train", "autoencoder", "--data", str(image_folder), "--out", str(run),
                                  "--init-from", "tiny", "--decoder-only", "--widths", "8,8,8",
                                  "--encoder-depths", "1,1,1", "--decoder-depths", "1,1,1", "--code-dim", "4",
                                  "--codebook-sizes", "16,16,16", "--post-filter", "4,3", "--steps", "3",
                                  "--crop", "32", "--batch-size", "2", "--warmup", "0", "--lr", "0.05"])
    assert result.exit_code == 0, result.output
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert tuple(checkpoint["config"]["post_filter"]) == (4, 3)
    result = runner.invoke(main, ["models", "export", str(run / "checkpoint.pt"), "--name", "tiny-dec",
                                  "--priors-from", "tiny"])
    assert result.exit_code == 0, result.output
    codec_module.load_codec.cache_clear()
    base, new = codec_module.load_codec("tiny"), codec_module.load_codec("tiny-dec")
    assert new.sha256 != base.sha256 and new.autoencoder.post_filter is not None
    entry = zoo.read_manifest(tiny_models_dir)["models"]["tiny-dec"]
    assert entry["kind"] == "codec" and entry["priors"]["taken_from"] == "tiny"
    rgb = synthetic_image(7, 64, 80)
    base_file, new_file = base.compress(rgb), new.compress(rgb)
    assert container.unpack(base_file.data).streams == container.unpack(new_file.data).streams
    base_pixels = np.asarray(base.decompress(base_file.data).image)
    new_pixels = np.asarray(new.decompress(new_file.data).image)
    assert new_pixels.shape == base_pixels.shape and not np.array_equal(new_pixels, base_pixels)

    checkpoint["model"]["stem.0.weight"] = checkpoint["model"]["stem.0.weight"] + 0.5  # other codes
    with pytest.raises(ModelError, match="chooses other codes than 'tiny'"):
        zoo.export_model(checkpoint, "tiny-enc", tiny_models_dir, priors_from="tiny")
    result = runner.invoke(main, ["models", "export", str(run / "checkpoint.pt"), "--name", "x", "--priors-from",
                                  "tiny", "--priors", str(run / "checkpoint.pt")])
    assert result.exit_code != 0 and "not both" in result.output

"""hvqcodec sample: ancestral sampling through the decoder's step functions, the same everywhere."""
import numpy as np
import pytest
import torch
from PIL import Image

import hvqcodec
from hvqcodec.errors import HvqError
from hvqcodec.sampling import IntegerSampler, sample_codes, sample_images

from conftest import synthetic_image


def test_same_seed_same_codes_across_threads_and_batch_sizes(ladder_codec):
    alone = sample_codes(ladder_codec, 1, 48, 64, seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        batch = sample_codes(ladder_codec, 3, 48, 64, seed=3)
    finally:
        torch.set_num_threads(threads)
    assert len(alone[0]) == ladder_codec.num_streams
    for a, b in zip(alone[0], batch[0]):  # image 0 is the same alone or among others, on 1 or more threads
        assert torch.equal(a, b)
    assert not torch.equal(batch[0][2], batch[1][2])  # other images differ
    other_seed = sample_codes(ladder_codec, 1, 48, 64, seed=4)
    assert not torch.equal(alone[0][2], other_seed[0][2])


def test_sizes_and_grid(ladder_codec):
    images = sample_images(ladder_codec, 2, size=(40, 24), seed=1)
    assert [im.shape for im in images] == [(24, 40, 3)] * 2
    with pytest.raises(HvqError, match="at most"):
        sample_codes(ladder_codec, 1, 2000, 16)


def test_sampler_follows_the_frequencies():
    sampler = IntegerSampler(seed=0, image=0, stream=0)
    probabilities = np.tile(np.array([[0.5, 0.25, 0.125, 0.125]]), (40000, 1))
    draws = sampler.decode(None, probabilities)
    share = np.bincount(draws, minlength=4) / len(draws)
    assert np.allclose(share, [0.5, 0.25, 0.125, 0.125], atol=0.01)
    again = IntegerSampler(seed=0, image=0, stream=0).decode(None, probabilities[:100])
    assert np.array_equal(again, draws[:100])


def test_temperature_narrows_and_widens_the_spread(ladder_codec):
    def distinct_codes(temperature):
        codes = sample_codes(ladder_codec, 4, 64, 64, seed=5, temperature=temperature, streams=3)
        return len(torch.unique(torch.stack([c[2] for c in codes])))

    assert distinct_codes(0.1) < distinct_codes(1.0) <= distinct_codes(3.0)


def test_variations_keep_the_given_codes(ladder_codec):
    rgb = synthetic_image(4, 48, 64)
    data = ladder_codec.compress(Image.fromarray(rgb), 90).data
    kept = ladder_codec.decompress(data, levels=2).codes[0]
    decoded = ladder_codec.decompress(data)
    given = decoded.codes[0][:2]
    codes = sample_codes(ladder_codec, 3, 48, 64, seed=2, given=given)
    for image_codes in codes:
        assert torch.equal(image_codes[0], kept[0]) and torch.equal(image_codes[1], kept[1])
    assert not all(torch.equal(codes[0][2], c[2]) for c in codes[1:])
    variations = hvqcodec.sample(2, source=data, keep_levels=2, seed=2, device="cpu")
    assert [v.size for v in variations] == [(64, 48)] * 2


def test_cli_sample_writes_a_grid_and_refuses_to_overwrite(ladder_codec, tmp_path):
    from click.testing import CliRunner
    from hvqcodec.cli import main

    out = tmp_path / "s.png"
    result = CliRunner().invoke(main, ["sample", "-n", "3", "--size", "32x16", "--seed", "1", "-o", str(out),
                                       "--model", "tiny-ladder", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (2 * 32 + 4, 2 * 16 + 4)
    again = CliRunner().invoke(main, ["sample", "-o", str(out), "--model", "tiny-ladder", "--device", "cpu"])
    assert again.exit_code != 0 and "exists" in again.output
    bad = CliRunner().invoke(main, ["sample", "--size", "big", "-o", str(tmp_path / "x.png")])
    assert bad.exit_code != 0 and "WIDTHxHEIGHT" in bad.output

"""The integer priors without torch (hvqcodec/npprior.py): the same codes from the same streams as the torch
codec, on the C module's int8 path."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hvqcodec import container, npprior, rangecoding, stepkernel, tensorfile
from hvqcodec.manifest import model_entry
from hvqcodec.wavefront import level_blocks

pytestmark = pytest.mark.skipif(not (stepkernel.available() and stepkernel.int8_available()),
                                reason="the torch-free priors run on the C module's int8 path only")


def numpy_priors(entry):
    payload = tensorfile.load(entry.path)
    tables, config = payload["prior_tables"], {**payload["prior_config"], **(entry.coding or {})}
    levels = [npprior.LevelPrior(tables, level, config["causal_blocks"], config["cond_blocks"], block)
              for level, block in enumerate(level_blocks(config["coding_block"]))]
    stages = [npprior.StagePrior(tables, stage, config["refine_groups"], config["stage_blocks"])
              for stage in range(config["refine_stages"])]
    return levels, stages


def test_decodes_the_codes_the_torch_codec_coded():
    """Two tiles (a 1100 x 300 image), every level and refinement stage: every stream's codes."""
    from hvqcodec.codec import OperatingPoint, grid_sizes, load_codec

    codec = load_codec(None, "cpu")
    rgb = np.asarray(Image.open("tests/data/v1-source.png").convert("RGB").resize((1100, 300)))
    compressed = codec.compress(Image.fromarray(rgb), point=OperatingPoint(codec.num_streams, 0.01))
    parsed = container.unpack(compressed.data)
    header = parsed.header
    tiles = container.tile_grid(header.width, header.height, header.tile_size)
    assert len(tiles) == 2 and header.code_streams == 6
    levels, stages = numpy_priors(model_entry(codec.name))
    codes: list[list[np.ndarray]] = [[] for _ in tiles]
    for stream in range(header.code_streams):
        if stream < 3:
            state = npprior.LevelState(levels[stream], [grid_sizes(h, w)[stream] for _, _, h, w in tiles], codes)
            rangecoding.decode_fronts(state, [rangecoding.stream_decoder(d) for d in parsed.streams[stream]])
            grids = state.codes()
        else:
            prior, grids = stages[stream - 3], []
            for data, tile_codes in zip(parsed.streams[stream], codes):
                h, w = tile_codes[2].shape
                groups = rangecoding.decode_groups(prior, rangecoding.stream_decoder(data), prior.context(tile_codes),
                                                   h * w)
                grids.append(np.stack([group.reshape(h, w) for group in groups]))
        for tile_codes, grid in zip(codes, grids):
            tile_codes.append(grid)
    for ours, theirs in zip(codes, compressed.codes):
        assert len(ours) == len(theirs) == header.code_streams
        assert all(np.array_equal(a, b.numpy()) for a, b in zip(ours, theirs))


def test_layer_tables_are_intprior_s():
    """The layers' integer tables (weights, biases with their rounding offsets, scales) are those the torch
    priors compute with, and tap_major reorders as intprior does."""
    from hvqcodec.codec import load_codec

    codec = load_codec(None, "cpu")
    torch_level = codec.prior.levels[2]
    ours = npprior.LevelPrior(*_level_args(model_entry(codec.name), 2))
    for name, (weight, bias, inv_scale, input_scale, _) in ours.layers.items():
        if name.endswith(":tap-major"):
            continue
        theirs = torch_level.layers[name]
        assert np.array_equal(weight, theirs[0].numpy()) and np.array_equal(bias, theirs[1].numpy())
        assert np.array_equal(inv_scale, theirs[2].numpy()) and input_scale == theirs[3]
    assert np.array_equal(ours.tap_tables, torch_level.tap_tables.numpy())
    name = "cond.block0.in"
    assert np.array_equal(ours.layers[ours._tap_major(name)][0],
                          torch_level.layers[torch_level._tap_major(name)][0].numpy())


def _level_args(entry, level):
    payload = tensorfile.load(entry.path)
    config = {**payload["prior_config"], **(entry.coding or {})}
    return (payload["prior_tables"], level, config["causal_blocks"], config["cond_blocks"],
            level_blocks(config["coding_block"])[level])


def test_refuses_sixteen_bit_tables():
    """Models with 16-bit tables (hvq-vr3 and before) are left to the torch codec."""
    payload = tensorfile.load(model_entry("hvq-vr3").path)
    assert not npprior.runs_here(payload["prior_tables"])
    with pytest.raises(ValueError, match="16-bit"):
        npprior.LevelPrior(payload["prior_tables"], 0, 2, 3)

"""Sub-position conditioning of the level priors (PriorConfig.subpixel_cond)."""
import dataclasses

import torch

from hvqcodec.intprior import FREQ_TOTAL, IntPrior, export_prior
from hvqcodec.entropy import level_frequencies
from hvqcodec.priors import HierarchicalPrior, PriorConfig, adapt_state

from conftest import TINY_PRIOR, fit_prior

SIZES = (8, 8, 8)


def random_codes(seed: int, batch: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 8, (batch, 4 * s, 6 * s), generator=generator) for s in (1, 2, 4)]


def test_expanded_priors_compute_the_same_function_then_tell_positions_apart():
    torch.manual_seed(0)
    plain = HierarchicalPrior(PriorConfig(codebook_sizes=SIZES, **TINY_PRIOR)).eval()
    subpixel = HierarchicalPrior(PriorConfig(codebook_sizes=SIZES, subpixel_cond=True, **TINY_PRIOR)).eval()
    subpixel.load_state_dict(adapt_state(plain.state_dict(), subpixel))
    codes = random_codes(1)
    with torch.no_grad():
        before = subpixel(codes)
        assert all(torch.equal(a, b) for a, b in zip(plain(codes), before))
        # Change the projection of one position of the 2x2 cell (row 1, column 0): only those positions move.
        subpixel.levels[2].cond_proj[0].weight[2::4] += 0.5
        after = subpixel(codes)
    moved = (after[2] - before[2]).abs().sum(1) > 0  # (N, h, w)
    rows, cols = torch.meshgrid(torch.arange(moved.shape[1]), torch.arange(moved.shape[2]), indexing="ij")
    target = (rows % 2 == 1) & (cols % 2 == 0)
    assert bool(moved[:, target].all()) and not bool(moved[:, ~target].any())
    assert torch.equal(after[1], before[1])


def test_integer_level_prior_matches_float_prior_after_training():
    """The exported integer level priors, sub-position conditioning included, cost within 1% of the float
    priors' cross-entropy, and positions gathered one by one get what the parallel pass gives."""
    torch.manual_seed(0)
    config = PriorConfig(codebook_sizes=SIZES, subpixel_cond=True, **TINY_PRIOR)
    prior = HierarchicalPrior(config)
    # Codes with structure under the upper level: each position of a cell has its own function of the cell's code.
    top = torch.randint(0, 8, (16, 4, 4))
    mid = (top.repeat_interleave(2, -2).repeat_interleave(2, -1)
           + torch.tensor([[0, 1], [2, 3]]).repeat(4, 4)) % 8
    bottom = (mid.repeat_interleave(2, -2).repeat_interleave(2, -1) * 3
              + torch.tensor([[0, 5], [3, 6]]).repeat(8, 8)) % 8
    noise = torch.rand(bottom.shape) < 0.2
    bottom = torch.where(noise, torch.randint(0, 8, bottom.shape), bottom)
    codes = [top, mid, bottom]
    float_bits = fit_prior(prior, codes, slice(1, None), steps=80)
    assert float_bits[2] / bottom.numel() < 1.5  # it learned the per-position rule (a mixture would cost ~3)
    int_prior = IntPrior(TINY_PRIOR["causal_blocks"], TINY_PRIOR["cond_blocks"], export_prior(prior), "cpu")
    for level in (1, 2):
        bits = 0.0
        for n in range(top.shape[0]):
            tile = [c[n] for c in codes]
            freq, state = level_frequencies(int_prior.levels[level], tile[level], tile[:level])
            chosen = freq.gather(1, tile[level].flatten()[state.order][:, None])  # wavefront order
            bits += float(-torch.log2(chosen / FREQ_TOTAL).sum())
        assert abs(bits / float_bits[level] - 1) < 0.01, (level, bits, float_bits[level])


def test_plain_priors_keep_their_config_and_tables():
    """A prior without the option exports the same tables as before it existed (old models' files decode)."""
    torch.manual_seed(0)
    config = PriorConfig(codebook_sizes=SIZES, **TINY_PRIOR)
    assert PriorConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "subpixel_cond"}) == config
    tables = export_prior(HierarchicalPrior(config))
    assert tables["level2.cond.proj0.weight"].shape[0] == 2 * TINY_PRIOR["channels"]
    wide = HierarchicalPrior(dataclasses.replace(config, subpixel_cond=True))
    assert export_prior(wide)["level2.cond.proj0.weight"].shape[0] == 8 * TINY_PRIOR["channels"]


def test_more_conditioning_blocks_start_as_the_identity():
    """Priors with extra gated blocks (and sub-position conditioning) start from smaller ones as the same
    function; a design without a stack keeps its own initialisation there."""
    torch.manual_seed(0)
    small = HierarchicalPrior(PriorConfig(codebook_sizes=SIZES, **TINY_PRIOR)).eval()
    large = HierarchicalPrior(PriorConfig(codebook_sizes=SIZES, subpixel_cond=True,
                                          **dict(TINY_PRIOR, cond_blocks=3, causal_blocks=2))).eval()
    state = adapt_state(small.state_dict(), large)
    assert torch.equal(state["levels.2.conditioning.outs.2.weight"], torch.zeros_like(
        large.state_dict()["levels.2.conditioning.outs.2.weight"]))
    large.load_state_dict({**large.state_dict(), **state})  # as training's warm start merges them
    codes = random_codes(2)
    with torch.no_grad():
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(small(codes), large(codes)))
    no_stack = {k: v for k, v in small.state_dict().items() if ".conditioning." not in k}
    assert "levels.2.conditioning.outs.0.weight" not in adapt_state(no_stack, large)

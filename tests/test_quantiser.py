import torch

from hvqcodec.quantiser import EMAQuantiser


def test_eval_returns_exact_codebook_vectors():
    torch.manual_seed(0)
    quantiser = EMAQuantiser(dim=4, codebook_size=8).train()
    quantiser(torch.randn(2, 4, 8, 8))  # initialise from data
    quantiser.eval()
    inputs = torch.randn(3, 4, 5, 7)
    out = quantiser(inputs)
    assert out.codes.shape == (3, 5, 7)
    assert torch.equal(out.quantised, quantiser.lookup(out.codes))
    assert torch.equal(out.quantised.permute(0, 2, 3, 1)[1, 2, 3], quantiser.codebook[out.codes[1, 2, 3]])
    # Nearest really is nearest.
    flat = inputs.permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.equal(out.codes.flatten(), torch.cdist(flat, quantiser.codebook).argmin(1))


def test_initialised_from_encoder_outputs():
    torch.manual_seed(0)
    quantiser = EMAQuantiser(dim=3, codebook_size=5)
    inputs = torch.randn(1, 3, 4, 4) + 100.0  # far away from the random initial codebook
    quantiser.train()(inputs)
    assert bool(quantiser.initialised)
    assert quantiser.codebook.min() > 90  # every code moved to (an EMA of) real inputs


def test_dead_codes_are_restarted():
    torch.manual_seed(0)
    quantiser = EMAQuantiser(dim=2, codebook_size=4, decay=0.5).train()
    cluster = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, 4, 4)
    quantiser(cluster)
    # Park code 3 far away so that nothing maps to it; its usage decays and it must be restarted on the data.
    quantiser.codebook[3] = torch.tensor([50.0, 50.0])
    quantiser.codebook_sum[3] = quantiser.codebook[3] * quantiser.cluster_size[3]
    restarted = 0
    for _ in range(20):
        restarted += quantiser(cluster + 0.01 * torch.randn_like(cluster)).dead_codes
    assert restarted > 0
    assert quantiser.codebook.abs().max() < 5  # the far code came back next to the data


def test_straight_through_gradient():
    quantiser = EMAQuantiser(dim=2, codebook_size=4).train()
    inputs = torch.randn(1, 2, 3, 3, requires_grad=True)
    out = quantiser(inputs)
    out.quantised.sum().backward()
    assert torch.equal(inputs.grad, torch.ones_like(inputs))
    assert out.perplexity >= 1

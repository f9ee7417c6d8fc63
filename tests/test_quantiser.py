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


def test_rate_weighted_assignment_prefers_frequent_codes():
    quantiser = EMAQuantiser(dim=1, codebook_size=2).eval()
    quantiser.codebook.copy_(torch.tensor([[0.0], [1.0]]))
    quantiser.cluster_size.copy_(torch.tensor([1023.0, 1.0]))  # code 0: ~0.0014 bits, code 1: 10 bits
    inputs = torch.tensor([0.7, 0.9, 1.0]).view(1, 1, 1, 3)
    assert quantiser(inputs).codes.flatten().tolist() == [1, 1, 1]  # nearest
    quantiser.rate_lambda = 0.05  # 10 bits cost 0.5 in squared distance
    # 0.7: 0.49 vs 0.09 + 0.5 -> code 0; 0.9: 0.81 vs 0.01 + 0.5 -> code 1; 1.0: 1.0 vs 0.5 -> code 1
    assert quantiser(inputs).codes.flatten().tolist() == [0, 1, 1]
    bits = quantiser.code_bits()
    assert torch.allclose(bits, torch.log2(torch.tensor(1024.002)) - torch.log2(torch.tensor([1023.001, 1.001])))


def test_rate_weighted_training_concentrates_usage():
    torch.manual_seed(0)
    data = torch.randn(4, 2, 16, 16)
    entropies, errors = [], []
    for lam in (0.0, 0.5):
        torch.manual_seed(1)
        quantiser = EMAQuantiser(dim=2, codebook_size=16, decay=0.8).train()
        quantiser.rate_lambda = lam
        for _ in range(30):
            out = quantiser(data)
        entropies.append(float(torch.log2(out.perplexity)))
        errors.append(float((out.quantised - data).pow(2).mean()))
    # Fewer bits (about 3.9 -> 2.3 bits of code entropy) bought with distortion: the ECVQ trade.
    assert entropies[1] < entropies[0] - 1.0
    assert errors[1] > errors[0]


def test_per_sample_rate_weights_override_the_quantiser_weight():
    quantiser = EMAQuantiser(dim=1, codebook_size=2).eval()
    quantiser.codebook.copy_(torch.tensor([[0.0], [1.0]]))
    quantiser.cluster_size.copy_(torch.tensor([1023.0, 1.0]))
    inputs = torch.tensor([0.7, 0.9, 1.0]).view(1, 1, 1, 3).repeat(2, 1, 1, 1)
    codes = quantiser(inputs, rate_lambdas=torch.tensor([0.0, 0.05])).codes
    assert codes[0].flatten().tolist() == [1, 1, 1]  # weight 0: nearest
    assert codes[1].flatten().tolist() == [0, 1, 1]  # as quantiser.rate_lambda = 0.05 would choose
    quantiser.rate_lambda = 10.0  # ignored when per-sample weights are given
    assert quantiser(inputs, rate_lambdas=torch.zeros(2)).codes.flatten().tolist() == [1, 1, 1] * 2

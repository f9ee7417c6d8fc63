"""Encoder-side latent refinement (`effort`): better codes for the same decoder, by gradient steps on the image.

The encoder is amortised: one forward pass guesses the bottom latent for every image, and its guess is far
from the best the decoder can use (40 Adam steps on the latent of 4 CID22 crops decode to 34.8 dB where the
encoder's own latent gives 31.7: `benchmarks/refine_probe.py`). Refinement starts from the encoder's latent and takes a few Adam
steps on

    mean squared pixel error of decoding the latent itself + rate_weight * mean squared distance to its codes

The second term keeps the latent near what the codes can say: without it the latent drifts off the codebooks,
the codes change wildly and the file grows by as much as the picture improves (docs/ladder-experiments.md,
"Encoder-side refinement"). The codes are then chosen from the refined latent exactly as from the encoder's, so
files need nothing new and every decoder reads them. Only the encoder gets slower: each step is one decoder
pass forwards and backwards.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .autoencoder import HierarchicalVQVAE, pad_to_multiple

REFINE_LR = 0.02  # Adam step on the latent (the encoder's latents have a standard deviation of about 0.45)
REFINE_RATE_WEIGHT = 0.25


def quantised_bottom(model: HierarchicalVQVAE, latent: torch.Tensor, stages: int,
                     bottom_lambda: float = 0.0) -> torch.Tensor:
    """What the bottom codes and the first `stages` refinement stages make of a latent (N, D, h, w)."""
    return model.bottom_vector(model.quantise_bottom(latent, bottom_lambda)[:1 + stages]).to(latent.dtype)


def refine_bottom_latent(model: HierarchicalVQVAE, images: torch.Tensor, top: torch.Tensor, mid: torch.Tensor,
                         latent: torch.Tensor, steps: int, stages: int, bottom_lambda: float = 0.0,
                         rate_weight: float | None = None, lr: float | None = None) -> torch.Tensor:
    """The bottom latent (N, D, h, w) after `steps` refinement steps for images (N, 3, H, W) in [0, 1] whose
    top and mid codes are fixed; `stages` and `bottom_lambda` say how the latent will be quantised."""
    for latent in refinement_steps(model, images, top, mid, latent, steps, stages, bottom_lambda, rate_weight, lr):
        pass
    return latent


def refinement_steps(model: HierarchicalVQVAE, images: torch.Tensor, top: torch.Tensor, mid: torch.Tensor,
                     latent: torch.Tensor, steps: int, stages: int, bottom_lambda: float = 0.0,
                     rate_weight: float | None = None, lr: float | None = None) -> Iterator[torch.Tensor]:
    """refine_bottom_latent's latents, one per step (benchmarks/refine_probe.py watches them)."""
    if steps <= 0:
        return
    rate_weight = REFINE_RATE_WEIGHT if rate_weight is None else rate_weight
    lr = REFINE_LR if lr is None else lr
    target = pad_to_multiple(images)
    with torch.no_grad():
        context = model.bottom_context(top, mid)
    refined = latent.detach().clone()
    # Adam by hand on one tensor: no optimiser state beyond two moments, no gradients for the weights. Its eps
    # is added to the uncorrected second moment: against these small gradients (a mean over all pixels) it
    # damps the first steps; REFINE_LR was tuned with it so (benchmarks/effort_tune.py).
    first, second = torch.zeros_like(refined), torch.zeros_like(refined)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, steps + 1):
        with torch.enable_grad():
            refined.requires_grad_(True)
            with torch.no_grad():
                quantised = quantised_bottom(model, refined, stages, bottom_lambda)
            loss = ((model._decode_bottom(refined, context, checkpointed=True) - target) ** 2).mean() \
                + rate_weight * ((refined - quantised) ** 2).mean()
            (grad,) = torch.autograd.grad(loss, [refined])
        refined = refined.detach()
        first.mul_(beta1).add_(grad, alpha=1 - beta1)
        second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = lr * (1 - beta2 ** step) ** 0.5 / (1 - beta1 ** step)
        refined.addcdiv_(first, second.sqrt().add_(eps), value=-step_size)
        yield refined

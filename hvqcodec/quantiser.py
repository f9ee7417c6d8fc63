"""Vector quantiser with an EMA codebook (VQ-VAE-2 style), data-driven init and dead-code restarts."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import stepkernel


@dataclass
class QuantiserOutput:
    quantised: torch.Tensor  # (N, D, H, W): codebook vectors (straight-through in training)
    codes: torch.Tensor  # (N, H, W) int64 indices in [0, K)
    commitment_loss: torch.Tensor  # scalar
    perplexity: torch.Tensor  # scalar, of this batch's code histogram
    dead_codes: int  # codes restarted in this step (0 outside training)


NEAREST_CHUNK = 1024  # rows per pass of the nearest-code search


class EMAQuantiser(nn.Module):
    def __init__(self, dim: int, codebook_size: int, decay: float = 0.99, dead_fraction: float = 0.03,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.codebook_size = codebook_size
        self.decay = decay
        # A code whose EMA usage falls below this fraction of the mean usage counts as dead.
        self.dead_fraction = dead_fraction
        self.eps = eps
        self.register_buffer("codebook", torch.randn(codebook_size, dim) * 0.1)
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("codebook_sum", self.codebook.clone())
        self.register_buffer("initialised", torch.tensor(False))
        # Entropy-constrained assignment (ECVQ): a code is chosen by squared distance + rate_lambda * bits, the
        # bits from the codebook's own EMA usage. Frequent codes get cheaper, so cells of cheap codes grow and
        # the codebook learns a few coarse, nearly free vectors beside the fine ones (Chou, Lookabaugh & Gray).
        self.rate_lambda = 0.0
        # Frozen (encoder-only training): the codebook and its usage stay as they are, in training mode too.
        self.frozen = False

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (N, H, W) -> codebook vectors (N, D, H, W)."""
        return F.embedding(codes, self.codebook).permute(0, 3, 1, 2)

    def code_bits(self) -> torch.Tensor:
        """-log2 of each code's share of the EMA usage (K,): the rate that entropy-constrained assignment uses."""
        usage = self.cluster_size.float() + 1e-3
        return torch.log2(usage.sum()) - torch.log2(usage)

    def nearest(self, flat: torch.Tensor, row_lambdas: torch.Tensor | None = None) -> torch.Tensor:
        """Index of the codebook vector with the least squared distance (+ rate weight * bits) for each row of
        flat (M, D); the weight is rate_lambda, or row_lambdas (M,) when given (one per row). Rows go
        NEAREST_CHUNK at a time: the (rows, K) distances then stay in cache (half the time of one pass over a
        Kodak image's 24,576 bottom vectors)."""
        if row_lambdas is None and self.rate_lambda > 0:
            row_lambdas = flat.new_full((flat.shape[0],), self.rate_lambda)
        return self.candidates(flat, 1, row_lambdas)[1][:, 0]

    def candidates(self, flat: torch.Tensor, count: int,
                   row_lambdas: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The `count` codebook vectors of least squared distance (+ row_lambdas * bits under the usage) to each
        row of flat (M, D): their costs and indices (M, count), least first."""
        squared_norms = self.codebook.pow(2).sum(1)[None, :]
        bits = self.code_bits()[None, :] if row_lambdas is not None else None
        costs, indices = [], []
        for start in range(0, flat.shape[0], NEAREST_CHUNK):
            rows = flat[start:start + NEAREST_CHUNK]
            distances = rows.pow(2).sum(1, keepdim=True) - 2 * rows @ self.codebook.t() + squared_norms
            if bits is not None:
                distances = distances + row_lambdas[start:start + NEAREST_CHUNK].to(distances.dtype)[:, None] * bits
            if count == 1:  # argmin: a third of topk's time
                index = distances.argmin(1, keepdim=True)
                cost = distances.gather(1, index)
            else:
                cost, index = stepkernel.smallest(distances, count) or distances.topk(count, dim=1, largest=False)
            costs.append(cost)
            indices.append(index)
        if not indices:
            return flat.new_zeros((0, count)), torch.zeros((0, count), dtype=torch.int64, device=flat.device)
        return torch.cat(costs), torch.cat(indices)

    def forward(self, inputs: torch.Tensor, rate_lambdas: torch.Tensor | None = None) -> QuantiserOutput:
        """Quantise (N, D, H, W); rate_lambdas (N,), if given, is each sample's rate weight instead of
        rate_lambda (variable-rate training and encoding)."""
        n, d, h, w = inputs.shape
        # Distances and EMA statistics in fp32 even under bf16 autocast: argmin ties and EMA drift otherwise.
        with torch.autocast(device_type=inputs.device.type, enabled=False):
            flat = inputs.float().permute(0, 2, 3, 1).reshape(-1, d)
            updating = self.training and not self.frozen
            if updating and not bool(self.initialised):
                self._initialise(flat)
            row_lambdas = None if rate_lambdas is None else rate_lambdas.float().repeat_interleave(h * w)
            codes = self.nearest(flat, row_lambdas)
            counts = torch.bincount(codes, minlength=self.codebook_size).float()
            dead = 0
            if updating:
                dead = self._ema_update(flat, codes, counts)
            quantised = F.embedding(codes, self.codebook)
            probs = counts / counts.sum()
            perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        quantised = quantised.view(n, h, w, d).permute(0, 3, 1, 2).to(inputs.dtype)
        codes = codes.view(n, h, w)
        commitment = F.mse_loss(inputs.float(), quantised.detach().float())
        if self.training:
            # Straight-through: the decoder sees codebook vectors, the encoder gets the decoder's gradient.
            quantised = inputs + (quantised - inputs).detach()
        return QuantiserOutput(quantised, codes, commitment, perplexity, dead)

    @torch.no_grad()
    def _initialise(self, flat: torch.Tensor) -> None:
        # Start from real encoder outputs so that no code begins far from the data (and dead).
        picks = torch.randint(0, flat.shape[0], (self.codebook_size,), device=flat.device)
        self.codebook.copy_(flat[picks])
        self.codebook_sum.copy_(self.codebook)
        self.cluster_size.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> int:
        sums = torch.zeros_like(self.codebook_sum).index_add_(0, codes, flat)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Under DDP every process updates its codebook from the statistics of all processes' batches.
            counts = counts.clone()
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.codebook_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        # Laplace smoothing keeps codes with (nearly) zero usage from dividing by zero.
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        self.codebook.copy_(self.codebook_sum / smoothed[:, None])
        dead = self.cluster_size < self.dead_fraction * self.cluster_size.mean()
        n_dead = int(dead.sum())
        if n_dead:
            # Restart dead codes on random current encoder outputs, with mean usage so they get a fair trial.
            picks = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
            mean_usage = self.cluster_size.mean()
            self.codebook[dead] = flat[picks]
            self.cluster_size[dead] = mean_usage
            self.codebook_sum[dead] = flat[picks] * mean_usage
        return n_dead

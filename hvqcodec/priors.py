"""Gated PixelCNN priors over the code grids, one per level, conditioned on the levels above (float, trainable).

Each level's prior is p(codes | upper levels) = prod over raster positions of p(code[i, j] | causal
neighbourhood, upper codes). The causal part is a single 5x5 type-A masked convolution (rows above, and
columns to the left in the current row) followed by 1x1 gated residual blocks, so position (i, j) depends only
on codes with j' + 3 i' < j + 3 i: every position on the wavefront t = j + 3 i can be decoded in one batch.
The conditioning part embeds the upper levels' codes, upsamples them to this grid and runs a non-causal stack of
gated residual blocks; its output is projected into every gated unit.

This module is the float model used for training; `intprior.py` turns it into the exact integer model that
computes the probabilities the range coder uses.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .wavefront import KERNEL, MAX_BLOCK, level_blocks  # noqa: F401 (the causal kernel; coding blocks)



def causal_mask(kernel: int = KERNEL) -> torch.Tensor:
    """Type-A mask: rows above the centre, and the columns left of the centre in its row (centre excluded)."""
    mask = torch.zeros(kernel, kernel)
    centre = kernel // 2
    mask[:centre, :] = 1
    mask[centre, :centre] = 1
    return mask


@dataclass
class PriorConfig:
    codebook_sizes: Sequence[int] = (512, 512, 512)  # top, mid, bottom: must match the autoencoder
    channels: int = 64
    causal_blocks: int = 2  # 1x1 gated residual blocks after the masked convolution
    cond_blocks: int = 3  # 3x3 gated residual blocks over the upper levels
    # Refinement stages of the bottom level (must match the autoencoder): fully parallel priors.
    refine_stages: int = 0
    refine_groups: int = 4
    refine_codebook_size: int = 32
    stage_channels: int = 32
    stage_blocks: int = 2  # 3x3 gated residual blocks over the levels and the earlier stages
    # Coding blocks of the level priors at coding time: the causal context stops at block edges and all blocks
    # of a tile are decoded in lockstep, so a level takes columns + 3 (rows - 1) sequential steps whatever the
    # image size (intprior.LevelState). N (N x N blocks at every level, 0: whole tiles) or one entry per level
    # (top, mid, bottom), each N or (rows, columns) with 0 for the tile's whole height or width: see
    # `level_blocks`. Part of the model: it fixes the order of the symbols in its files, so `models export
    # --coding-block` may set it. Training is unaffected (crops are already about one block).
    coding_block: int | Sequence = 0
    # Sub-position conditioning: each gated unit gets its own projection of the upper level's features for
    # each of the 4 positions a coarser cell covers (a 2x2 pixel shuffle). Without it the 4 positions under one
    # upper code see the same conditioning and the prior must predict a mixture of them. Costs nothing per
    # decoding step: the projections are computed once per level, in the parallel pass.
    subpixel_cond: bool = False

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "PriorConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown prior config keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def parse_coding_block(spec: str) -> int | list[list[int]]:
    """The command line's form of PriorConfig.coding_block: "N" (N x N at every level), "RxC" (rows x columns at
    every level) or one of those per level, comma-separated: "0,32,32x64" (0: whole tiles)."""
    def shape(part: str) -> list[int]:
        numbers = part.strip().lower().split("x")
        if len(numbers) > 2 or not all(n.strip().isdigit() for n in numbers):
            raise ValueError(f"coding block {spec!r}: use N, RxC, or one of those per level as in 0,32,32x64")
        return [int(numbers[0]), int(numbers[-1])]

    parts = spec.split(",")
    if len(parts) == 1 and "x" not in spec.lower():
        value: int | list[list[int]] = shape(spec)[0]
    else:
        value = [shape(part) for part in (parts if len(parts) > 1 else parts * 3)]
    level_blocks(value)  # the same checks as a model's config
    return value


def gate(x: torch.Tensor) -> torch.Tensor:
    """Gated activation unit: tanh(a) * sigmoid(b) over the two channel halves."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class ConditioningStack(nn.Module):
    """Upper levels' codes -> features on the grid of the nearest upper level (non-causal gated residual blocks).

    Working at the upper level's resolution (a quarter of this level's positions) keeps the exact integer pass
    cheap; the features are repeated 2x2 onto this level's grid by the caller.
    """

    def __init__(self, upper_sizes: Sequence[int], channels: int, blocks: int) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(k, channels) for k in upper_sizes)
        self.convs = nn.ModuleList(nn.Conv2d(channels, 2 * channels, 3, padding=1) for _ in range(blocks))
        self.outs = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(blocks))

    def forward(self, upper_codes: Sequence[torch.Tensor]) -> torch.Tensor:
        x = 0
        size = upper_codes[-1].shape[-2:]
        for embedding, codes in zip(self.embeddings, upper_codes):
            factor = size[0] // codes.shape[-2]
            grid = codes.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
            x = x + embedding(grid).permute(0, 3, 1, 2)
        for conv, out in zip(self.convs, self.outs):
            x = x + out(gate(conv(x)))
        return x


class LevelPrior(nn.Module):
    """Gated PixelCNN for one level, optionally conditioned on the levels above it."""

    def __init__(self, codebook_size: int, upper_sizes: Sequence[int], config: PriorConfig) -> None:
        super().__init__()
        c = config.channels
        self.codebook_size = codebook_size
        self.embedding = nn.Embedding(codebook_size, c)
        self.masked = nn.Conv2d(c, 2 * c, KERNEL, padding=KERNEL // 2)
        self.register_buffer("mask", causal_mask(), persistent=False)
        self.block_in = nn.ModuleList(nn.Conv2d(c, 2 * c, 1) for _ in range(config.causal_blocks))
        self.block_out = nn.ModuleList(nn.Conv2d(c, c, 1) for _ in range(config.causal_blocks))
        self.head = nn.Conv2d(c, codebook_size, 1)
        self.conditioning = ConditioningStack(upper_sizes, c, config.cond_blocks) if upper_sizes else None
        # One projection of the conditioning features into each gated unit (masked conv + blocks); with
        # subpixel_cond one per position of the 2x2 cell (out channel unit * 4 + position, pixel-shuffle order).
        self.subpixel = config.subpixel_cond
        out = 2 * c * (4 if self.subpixel else 1)
        self.cond_proj = (nn.ModuleList(nn.Conv2d(c, out, 1, bias=False) for _ in range(1 + config.causal_blocks))
                          if upper_sizes else None)

    def project(self, i: int, cond: torch.Tensor) -> torch.Tensor:
        """Conditioning features on the upper grid (N, C, h/2, w/2) -> gated unit i's input on this grid."""
        if self.subpixel:
            return F.pixel_shuffle(self.cond_proj[i](cond), 2)
        return self.cond_proj[i](cond).repeat_interleave(2, -2).repeat_interleave(2, -1)

    def forward(self, codes: torch.Tensor, upper_codes: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """Codes (N, h, w) and upper levels' codes -> logits (N, K, h, w) for every position."""
        cond = self.conditioning(upper_codes) if self.conditioning is not None else None
        x = self.embedding(codes).permute(0, 3, 1, 2)
        pre = F.conv2d(x, self.masked.weight * self.mask, self.masked.bias, padding=KERNEL // 2)
        if cond is not None:
            pre = pre + self.project(0, cond)
        h = gate(pre)
        for i, (inp, out) in enumerate(zip(self.block_in, self.block_out)):
            pre = inp(h)
            if cond is not None:
                pre = pre + self.project(i + 1, cond)
            h = h + out(gate(pre))
        return self.head(h)


class StagePrior(nn.Module):
    """Prior of one refinement stage: fully parallel, no causal part.

    When a stage is decoded, the three levels and the earlier stages are known everywhere, so its context is a
    non-causal stack of 3x3 gated residual blocks over their embeddings on the bottom grid. Within a position
    the stage's groups are coded in order, each conditioned on the groups before it (an embedding added to the
    context, then one 1x1 gated block and a head per group). Decoding a stage takes G steps, not a wavefront
    per diagonal.
    """

    def __init__(self, stage: int, level_sizes: Sequence[int], config: PriorConfig) -> None:
        super().__init__()
        c, groups, k = config.stage_channels, config.refine_groups, config.refine_codebook_size
        self.stage, self.groups, self.codebook_size = stage, groups, k
        self.level_embeddings = nn.ModuleList(nn.Embedding(size, c) for size in level_sizes)
        # Earlier stages' groups, then this stage's groups (the within-position conditioning).
        self.stage_embeddings = nn.ModuleList(nn.Embedding(k, c) for _ in range((stage + 1) * groups - 1))
        self.convs = nn.ModuleList(nn.Conv2d(c, 2 * c, 3, padding=1) for _ in range(config.stage_blocks))
        self.outs = nn.ModuleList(nn.Conv2d(c, c, 1) for _ in range(config.stage_blocks))
        self.group_in = nn.ModuleList(nn.Conv2d(c, 2 * c, 1) for _ in range(groups))
        self.group_out = nn.ModuleList(nn.Conv2d(c, c, 1) for _ in range(groups))
        self.heads = nn.ModuleList(nn.Conv2d(c, k, 1) for _ in range(groups))

    def context(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        """[top, mid, bottom, earlier stages (N, G, h, w)...] -> context features (N, C, h, w) on the bottom grid."""
        h, w = codes[2].shape[-2:]
        x = 0
        for embedding, grid in zip(self.level_embeddings, codes[:3]):
            factor = h // grid.shape[-2]
            grid = grid.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
            x = x + embedding(grid).permute(0, 3, 1, 2)
        for s, stage_codes in enumerate(codes[3:3 + self.stage]):
            for g in range(self.groups):
                x = x + self.stage_embeddings[s * self.groups + g](stage_codes[:, g]).permute(0, 3, 1, 2)
        for conv, out in zip(self.convs, self.outs):
            x = x + out(gate(conv(x)))
        return x

    def forward(self, codes: Sequence[torch.Tensor], stage_codes: torch.Tensor) -> torch.Tensor:
        """Logits (N, K, G, h, w) of this stage's codes (N, G, h, w), teacher-forced on the earlier groups."""
        x = self.context(codes)
        logits = []
        for g in range(self.groups):
            if g:
                x = x + self.stage_embeddings[self.stage * self.groups + g - 1](stage_codes[:, g - 1]).permute(0, 3, 1, 2)
            h = x + self.group_out[g](gate(self.group_in[g](x)))
            logits.append(self.heads[g](h))
        return torch.stack(logits, 2)


class HierarchicalPrior(nn.Module):
    """The three level priors: top (unconditioned), mid | top, bottom | top, mid; then one prior per refinement
    stage, conditioned on the levels and the stages before it."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = config
        sizes = list(config.codebook_sizes)
        self.levels = nn.ModuleList(LevelPrior(k, sizes[:i], config) for i, k in enumerate(sizes))
        self.stages = nn.ModuleList(StagePrior(s, sizes, config) for s in range(config.refine_stages))

    def forward(self, codes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Code grids [top, mid, bottom, stages...] -> logits per stream."""
        logits = [prior(c, codes[:i]) for i, (prior, c) in enumerate(zip(self.levels, codes))]
        return logits + [prior(codes, c) for prior, c in zip(self.stages, codes[3:])]

    def bits_per_code(self, codes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Cross-entropy in bits per code, per stream (a refinement stage's code is one group's index)."""
        return bits_per_code(self(codes), codes)


def adapt_state(state: dict[str, torch.Tensor], prior: HierarchicalPrior) -> dict[str, torch.Tensor]:
    """A priors state dict of a smaller design -> one for `prior` that computes the same function:

    - without sub-position conditioning: each conditioning projection repeated for the 4 positions (they then
      train apart);
    - fewer gated residual blocks in a stack it has: the missing blocks get zero output layers, so they start
      as the identity (their input layers keep `prior`'s initialisation). Stacks it lacks altogether keep their
      initialisation.
    """
    own = prior.state_dict()
    state = dict(state)
    for key, value in state.items():
        if ".cond_proj." in key and key in own and own[key].shape[0] == 4 * value.shape[0]:
            state[key] = value.repeat_interleave(4, 0)
    for key, value in own.items():
        for name in ("outs", "block_out", "group_out"):
            stack = key[:key.find(f".{name}.") + len(name) + 2] if f".{name}." in key else None
            if stack and key not in state and any(k.startswith(stack) for k in state):
                state[key] = torch.zeros_like(value)
    return state


def bits_per_code(logits: Sequence[torch.Tensor], codes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Cross-entropy in bits per code of each stream's logits against its codes."""
    return [F.cross_entropy(x.float(), c) / torch.log(torch.tensor(2.0)) for x, c in zip(logits, codes)]

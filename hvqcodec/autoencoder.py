"""The 3-level hierarchical VQ-VAE: ConvNeXt encoder, top-down quantisation, ConvNeXt decoder.

Levels are indexed top (/16), mid (/8), bottom (/4). Quantisation runs top-down: each lower level quantises
its encoder features together with the context decoded from the levels above, so it only has to carry what
they miss. The decoder is trained with level dropout (a learned "absent" vector in place of the bottom, or
bottom and mid, codes) so that top-only and top+mid previews are real reconstructions.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torch.utils.checkpoint
from torch import nn

from .convnext import ConvNeXtBlock, Downsample, LayerNorm2d, Upsample, convnext_stage
from .postfilter import PostFilter
from .quantiser import EMAQuantiser

from .names import LEVEL_NAMES, LEVEL_STRIDES, PAD_MULTIPLE, stream_names  # noqa: F401 (re-exported)


@dataclass
class AutoencoderConfig:
    # Encoder/decoder widths at /4, /8, /16 and ConvNeXt blocks per stage.
    widths: Sequence[int] = (64, 96, 128)
    encoder_depths: Sequence[int] = (2, 3, 3)
    decoder_depths: Sequence[int] = (3, 3, 4)  # context stages at /16, /8 and the final /4 stage
    code_dim: int = 32
    codebook_sizes: Sequence[int] = (512, 512, 512)  # top, mid, bottom
    ema_decay: float = 0.99
    commitment: float = 0.25
    layer_scale_init: float = 1e-6
    # Probability per training sample of dropping the bottom level, and of dropping bottom and mid.
    drop_bottom: float = 0.1
    drop_bottom_mid: float = 0.1
    # Refinement stages at the bottom level (the quality ladder): stage s quantises what the bottom code and
    # the stages before it left over, with a product quantiser (the residual split into groups of dimensions,
    # one EMA codebook per group). 0 keeps the plain 3-level model.
    refine_stages: int = 0
    refine_groups: int = 4
    refine_codebook_size: int = 32
    # Refinement dropout: per training sample, all stages with this probability, else a uniform number of
    # them (0..stages-1), so that every prefix of the stages is a trained reconstruction.
    keep_all_refine: float = 0.4
    # Rate weight per refinement stage (squared latent distance per bit; empty = 0 for all): stage codes are
    # chosen by distance + lambda * bits under the codebook's usage, in training and in encode(), so a stage
    # spends bits where the residual is large and next to nothing on flat areas (entropy-constrained VQ).
    refine_lambdas: Sequence[float] = ()
    # Rate weights of the bottom codes (variable rate): in training each sample's bottom codes are chosen by
    # distance + one of these (drawn uniformly) * bits under the bottom codebook's usage, so the codebook gets
    # coarse, cheap codes beside fine ones and the decoder learns to use both; encode() takes the weight to
    # use (0: nearest). Empty: nearest codes only.
    bottom_lambdas: Sequence[float] = ()
    # A linear path from the /4 decoder features straight to each 4x4 pixel block (zero-initialised, so a
    # warm start is unchanged): fine detail need not squeeze through the narrow /2 stage.
    detail_head: bool = False
    # ConvNeXt blocks at /2 in the decoder (the last stage before the pixels). Blocks beyond the first start as
    # the identity (layer scale), so a deeper decoder can be warm-started from a shallower model exactly.
    half_depth: int = 1
    # A residual filter on the decoded picture at full resolution: (channels, layers) of 3x3 convolutions
    # (`postfilter.PostFilter`); empty for none. It comes after the decoder, so the codes do not depend on it.
    post_filter: Sequence[int] = ()

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "AutoencoderConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown autoencoder config keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def raw_index_bpp(self) -> float:
        """Bits per pixel of the codes stored as fixed-width indices: sum of log2(K) / stride^2."""
        import math
        levels = sum(math.log2(k) / s ** 2 for k, s in zip(self.codebook_sizes, LEVEL_STRIDES))
        return levels + self.refine_stages * self.refine_groups * math.log2(self.refine_codebook_size) / 16

    @property
    def num_streams(self) -> int:
        """Code grids in coarse-to-fine order: top, mid, bottom, then each refinement stage."""
        return 3 + self.refine_stages

    @property
    def stream_names(self) -> tuple[str, ...]:
        return stream_names(self.refine_stages)


@dataclass
class AutoencoderOutput:
    reconstruction: torch.Tensor  # (N, 3, H, W), RGB in about [0, 1]
    # top, mid, bottom: (N, H/16, W/16), (N, H/8, W/8), (N, H/4, W/4); then refinement stages (N, G, H/4, W/4)
    codes: list[torch.Tensor]
    commitment_loss: torch.Tensor
    perplexities: list[torch.Tensor] = field(default_factory=list)
    dead_codes: list[int] = field(default_factory=list)


class ProductQuantiser(nn.Module):
    """A vector split into groups of dimensions, each quantised by its own EMA codebook (product VQ).

    Codes are (N, G, H, W): one index per group per position.
    """

    def __init__(self, dim: int, groups: int, codebook_size: int, decay: float) -> None:
        super().__init__()
        if dim % groups:
            raise ValueError(f"code_dim {dim} is not divisible into {groups} groups")
        self.groups = groups
        self.codebook_size = codebook_size
        self.quantisers = nn.ModuleList(EMAQuantiser(dim // groups, codebook_size, decay=decay)
                                        for _ in range(groups))

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(N, D, H, W) -> hard quantised (N, D, H, W), codes (N, G, H, W), commitment, perplexity, dead."""
        outs = [q(x) for q, x in zip(self.quantisers, inputs.chunk(self.groups, dim=1))]
        codes = torch.stack([o.codes for o in outs], 1)
        return (self.lookup(codes).to(inputs.dtype), codes, sum(o.commitment_loss for o in outs) / self.groups,
                sum(o.perplexity for o in outs) / self.groups, sum(o.dead_codes for o in outs))

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.cat([q.lookup(codes[:, g]) for g, q in enumerate(self.quantisers)], 1)

    def group_lookup(self, group: int, codes: torch.Tensor) -> torch.Tensor:
        return self.quantisers[group].lookup(codes)


class ContextUp(nn.Module):
    """Decodes a level's (quantised + upper) context and upsamples it 2x for the level below."""

    def __init__(self, in_dim: int, dim: int, out_dim: int, depth: int, layer_scale_init: float) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, dim, kernel_size=1)
        self.blocks = convnext_stage(dim, depth, layer_scale_init)
        self.up = Upsample(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.blocks(self.proj(x)))


class HierarchicalVQVAE(nn.Module):
    # Whether the low-precision decoder runs the half-resolution stage in bfloat16 too (hvqcodec 0.19): a tenth
    # of the decoder's time for about -0.002 dB on Kodak (`benchmarks/decoder_precision.py --part half-stage`).
    half_stage_low_precision = True

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        w1, w2, w3 = config.widths
        d1, d2, d3 = config.encoder_depths
        dec3, dec2, dec1 = config.decoder_depths
        ls, code_dim = config.layer_scale_init, config.code_dim

        # Encoder: patchify stem (/4), then ConvNeXt stages with 2x downsampling between them.
        self.stem = nn.Sequential(nn.Conv2d(3, w1, kernel_size=4, stride=4), LayerNorm2d(w1))
        self.enc1 = convnext_stage(w1, d1, ls)
        self.down2 = Downsample(w1, w2)
        self.enc2 = convnext_stage(w2, d2, ls)
        self.down3 = Downsample(w2, w3)
        self.enc3 = convnext_stage(w3, d3, ls)

        # Projections into code space: the top from its features alone, the lower ones from features + context.
        self.pre_quant = nn.ModuleList([
            nn.Sequential(LayerNorm2d(w3), nn.Conv2d(w3, code_dim, 1)),
            nn.Sequential(LayerNorm2d(w2 + w2), nn.Conv2d(w2 + w2, code_dim, 1)),
            nn.Sequential(LayerNorm2d(w1 + w1), nn.Conv2d(w1 + w1, code_dim, 1)),
        ])
        self.quantisers = nn.ModuleList(
            EMAQuantiser(code_dim, k, decay=config.ema_decay) for k in config.codebook_sizes)
        # Learned stand-ins for a missing mid or bottom level (level dropout, previews).
        self.absent = nn.Parameter(torch.zeros(2, code_dim))
        self.refiners = nn.ModuleList(
            ProductQuantiser(code_dim, config.refine_groups, config.refine_codebook_size, config.ema_decay)
            for _ in range(config.refine_stages))
        if config.refine_lambdas and len(config.refine_lambdas) != config.refine_stages:
            raise ValueError(f"refine_lambdas has {len(config.refine_lambdas)} values for "
                             f"{config.refine_stages} refinement stages")
        for refiner, lam in zip(self.refiners, config.refine_lambdas):
            for quantiser in refiner.quantisers:
                quantiser.rate_lambda = float(lam)

        # Context path: top codes -> c2 at /8; [mid codes, c2] -> c1 at /4.
        self.context_top = ContextUp(code_dim, w3, w2, dec3, ls)
        self.context_mid = ContextUp(code_dim + w2, w2, w1, dec2, ls)
        # Decoder: [bottom codes, c1] at /4 -> ConvNeXt stage -> 2x (transposed conv + block) -> 2x -> RGB.
        self.dec_in = nn.Conv2d(code_dim + w1, w1, kernel_size=1)
        self.dec1 = convnext_stage(w1, dec1, ls)
        half = max(w1 // 2, 16)
        self.dec_up = Upsample(w1, half)
        self.dec_half = ConvNeXtBlock(half, ls)
        self.dec_half_more = convnext_stage(half, config.half_depth - 1, ls) if config.half_depth > 1 else None
        self.to_rgb = nn.Sequential(LayerNorm2d(half), nn.ConvTranspose2d(half, 3, kernel_size=2, stride=2))
        self.detail = None
        if config.detail_head:
            self.detail = nn.Sequential(nn.Conv2d(w1, 3 * 16, kernel_size=1), nn.PixelShuffle(4))
            nn.init.zeros_(self.detail[0].weight)
            nn.init.zeros_(self.detail[0].bias)
        self.post_filter = None
        if config.post_filter:
            self.post_filter = PostFilter(*config.post_filter)

    # --- decoder-only training ---------------------------------------------------------------------------
    def encoder_side(self) -> list[nn.Module]:
        """Every module the codes depend on: the encoder, projections, codebooks and the context path (the
        lower levels are quantised together with the context decoded from the levels above)."""
        return [self.stem, self.enc1, self.down2, self.enc2, self.down3, self.enc3, self.pre_quant,
                self.quantisers, self.refiners, self.context_top, self.context_mid]

    def encoder_side_state(self) -> dict[str, torch.Tensor]:
        """The encoder side's entries of the state dict (same names): what decides the codes."""
        return {f"{name}.{key}": value for name, module in self.named_children() if module in self.encoder_side()
                for key, value in module.state_dict().items()}

    def freeze_encoder_side(self) -> None:
        """Train only the decoder from here on: the encoder side gets no gradients and stays in eval mode
        (no codebook EMA updates or restarts), so every image keeps exactly the codes it had and priors
        trained on those codes stay valid. Level, refinement and bottom-weight dropout still apply."""
        self.encoder_frozen = True
        for module in self.encoder_side():
            module.requires_grad_(False)
        self.train(self.training)

    # --- encoder-only training ---------------------------------------------------------------------------
    def encoder_trunk(self) -> list[nn.Module]:
        """The modules that map pixels to the latents to be quantised; nothing that turns codes into pixels."""
        return [self.stem, self.enc1, self.down2, self.enc2, self.down3, self.enc3, self.pre_quant]

    def freeze_all_but_encoder(self) -> None:
        """Train only the encoder trunk from here on (amortised refinement): the codebooks, the context path
        and the decoder are fixed, so the vocabulary and what each code means stay; the encoder learns to pick
        the codes this decoder renders best (the codes change, so priors must be retrained). The quantisers stay
        in training mode for their straight-through gradient but skip their EMA updates and restarts."""
        trunk = {id(p) for module in self.encoder_trunk() for p in module.parameters()}
        for parameter in self.parameters():
            parameter.requires_grad_(id(parameter) in trunk)
        for module in self.modules():
            if isinstance(module, EMAQuantiser):
                module.frozen = True

    def train(self, mode: bool = True) -> "HierarchicalVQVAE":
        super().train(mode)
        if getattr(self, "encoder_frozen", False):
            for module in self.encoder_side():
                module.eval()
        return self

    # --- encoding -------------------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images (N, 3, H, W) in [0, 1], H and W multiples of 16 -> encoder features at /4, /8, /16."""
        f1 = self.enc1(self.stem(images * 2 - 1))
        f2 = self.enc2(self.down2(f1))
        return f1, f2, self.enc3(self.down3(f2))

    def encode_latent(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images (N, 3, H, W) in [0, 1] (any size) -> top codes, mid codes (nearest) and the bottom level's
        unquantised vectors (N, D, H/4, W/4) of the padded image: everything the bottom quantisation needs."""
        f1, f2, f3 = self.features(pad_to_multiple(images))
        top = self.quantisers[0](self.pre_quant[0](f3)).codes
        c2 = self.context_top(self.quantisers[0].lookup(top))
        mid = self.quantisers[1](self.pre_quant[1](torch.cat([f2, c2], 1))).codes
        c1 = self.context_mid(torch.cat([self.quantisers[1].lookup(mid), c2], 1))
        return top, mid, self.pre_quant[2](torch.cat([f1, c1], 1))

    def bottom_context(self, top: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
        """Top and mid codes -> the context (N, w1, h, w) the bottom level is quantised and decoded with."""
        return self.context_mid(torch.cat([self.quantisers[1].lookup(mid),
                                           self.context_top(self.quantisers[0].lookup(top))], 1))

    def bottom_vector(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        """Bottom codes and a prefix of the refinement stages' codes -> the quantised bottom latent (their sum)."""
        total = self.quantisers[2].lookup(codes[0])
        for refiner, stage_codes in zip(self.refiners, codes[1:]):
            total = total + refiner.lookup(stage_codes)
        return total

    def forward(self, images: torch.Tensor) -> AutoencoderOutput:
        """images: (N, 3, H, W) in [0, 1], H and W multiples of 16."""
        f1, f2, f3 = self.features(images)
        drop_mid, drop_bottom = self._level_dropout_masks(images)
        top = self.quantisers[0](self.pre_quant[0](f3))
        c2 = self.context_top(top.quantised)
        mid = self.quantisers[1](self.pre_quant[1](torch.cat([f2, c2], 1)))
        mid_q = self._replace_with_absent(mid.quantised, 1, drop_mid)
        c1 = self.context_mid(torch.cat([mid_q, c2], 1))
        latent = self.pre_quant[2](torch.cat([f1, c1], 1))
        bottom = self.quantisers[2](latent, self._bottom_lambdas(images))
        levels = [top, mid, bottom]
        codes = [lv.codes for lv in levels]
        commitment = sum(lv.commitment_loss for lv in levels)
        perplexities = [lv.perplexity for lv in levels]
        dead = [lv.dead_codes for lv in levels]
        bottom_q = bottom.quantised
        if self.refiners:
            # Residual stages: each quantises what the stages before it left; the decoder sees a per-sample
            # prefix of them (refinement dropout), through one straight-through estimator on the sum.
            total = self.quantisers[2].lookup(bottom.codes).to(latent.dtype)
            partials = [total]
            for refiner in self.refiners:
                hard, stage_codes, stage_commitment, perplexity, stage_dead = refiner(latent - total)
                total = total + hard
                partials.append(total)
                codes.append(stage_codes)
                commitment = commitment + stage_commitment
                perplexities.append(perplexity)
                dead.append(stage_dead)
            chosen = torch.stack(partials)[self._refine_counts(images), torch.arange(images.shape[0])]
            bottom_q = latent + (chosen - latent).detach() if self.training else chosen
        bottom_q = self._replace_with_absent(bottom_q, 2, drop_bottom)
        reconstruction = self._decode_bottom(bottom_q, c1)
        return AutoencoderOutput(reconstruction=reconstruction, codes=codes, commitment_loss=commitment,
                                 perplexities=perplexities, dead_codes=dead)

    def _bottom_lambdas(self, images: torch.Tensor) -> torch.Tensor | None:
        """Each training sample's bottom rate weight (None: nearest codes, outside training or without any)."""
        if not self.training or not self.config.bottom_lambdas:
            return None
        return self.draw_bottom_lambdas(images.shape[0], images.device)

    def draw_bottom_lambdas(self, count: int, device: torch.device | str = "cpu",
                            generator: torch.Generator | None = None) -> torch.Tensor:
        """`count` bottom rate weights drawn uniformly from config.bottom_lambdas (zeros without any): the mix
        training sees, and the one the priors' training codes are made with."""
        if not self.config.bottom_lambdas:
            return torch.zeros(count, device=device)
        choices = torch.tensor(self.config.bottom_lambdas, dtype=torch.float32, device=device)
        return choices[torch.randint(len(choices), (count,), device=device, generator=generator)]

    def _refine_counts(self, images: torch.Tensor) -> torch.Tensor:
        """Refinement stages each sample keeps: all of them outside training."""
        stages, n = self.config.refine_stages, images.shape[0]
        if not self.training:
            return torch.full((n,), stages, dtype=torch.long, device=images.device)
        keep_all = torch.rand(n, device=images.device) < self.config.keep_all_refine
        partial = torch.randint(0, stages, (n,), device=images.device)
        return torch.where(keep_all, torch.full_like(partial, stages), partial)

    def _level_dropout_masks(self, images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per training sample, one draw decides: drop bottom + mid, drop bottom only, or keep all levels."""
        if not self.training:
            return None, None
        draw = torch.rand(images.shape[0], device=images.device)
        drop_mid = draw < self.config.drop_bottom_mid
        drop_bottom = draw < self.config.drop_bottom_mid + self.config.drop_bottom
        return drop_mid, drop_bottom

    def _replace_with_absent(self, quantised: torch.Tensor, level: int, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return quantised
        absent = self.absent[level - 1].to(quantised.dtype)[None, :, None, None]
        return torch.where(mask[:, None, None, None], absent, quantised)

    def encode(self, images: torch.Tensor, bottom_lambda: float | torch.Tensor = 0.0) -> list[torch.Tensor]:
        """Images (N, 3, H, W) in [0, 1] (any size) -> code grids [top, mid, bottom, refinement stages...] of the
        padded image. Runs only the encoder side (no decoder). Bottom codes are chosen with rate weight
        bottom_lambda (one value, or one per image; 0: nearest), stages with their trained weights."""
        top, mid, latent = self.encode_latent(images)
        return [top, mid] + self.quantise_bottom(latent, bottom_lambda)

    def quantise_bottom(self, latent: torch.Tensor, bottom_lambda: float | torch.Tensor = 0.0) -> list[torch.Tensor]:
        """Bottom latent (N, D, h, w) -> bottom codes (`bottom_codes`), then each refinement stage's codes."""
        bottom = self.bottom_codes(latent, bottom_lambda)
        codes = [bottom]
        total = self.quantisers[2].lookup(bottom)
        for refiner in self.refiners:
            _, stage_codes, *_ = refiner(latent - total)
            total = total + refiner.lookup(stage_codes)
            codes.append(stage_codes)
        return codes

    def bottom_codes(self, latent: torch.Tensor, bottom_lambda: float | torch.Tensor = 0.0) -> torch.Tensor:
        """Bottom latent (N, D, h, w) -> codes (N, h, w) minimising distance + bottom_lambda * bits under the
        bottom codebook's usage (one weight, or one per image; 0: nearest)."""
        weights = torch.as_tensor(bottom_lambda, dtype=torch.float32, device=latent.device)
        weights = weights.expand(latent.shape[0]) if bool((weights > 0).any()) else None
        return self.quantisers[2](latent, weights).codes

    # --- decoding -------------------------------------------------------------------------------------
    def _absent_like(self, level: int, reference: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        vec = self.absent[level - 1].to(reference.dtype)
        return vec[None, :, None, None].expand(reference.shape[0], -1, *size)

    def _decode_bottom(self, bottom_q: torch.Tensor, c1: torch.Tensor, checkpointed: bool = False) -> torch.Tensor:
        """checkpointed: keep only each ConvNeXt block's input for the backward pass and recompute the rest
        (encoder refinement on a 1024-pixel tile: about a third more time, far less memory)."""
        return self._decode_to_rgb(self._decode_quarter(bottom_q, c1, checkpointed), checkpointed)

    def _decode_quarter(self, bottom_q: torch.Tensor, c1: torch.Tensor, checkpointed: bool = False) -> torch.Tensor:
        return _blocks(self.dec1, self.dec_in(torch.cat([bottom_q, c1], 1)), checkpointed)

    def _decode_to_rgb(self, x: torch.Tensor, checkpointed: bool = False, low_precision: bool = False) -> torch.Tensor:
        """The /4 decoder features -> RGB: 2x upsampling, the half-resolution stage, 2x to RGB (low_precision: the
        upsampling and the half-resolution stage in bfloat16 (autocast) as `half_stage_low_precision` says, and the
        post-filter's correction in bfloat16)."""
        bf16_half = low_precision and self.half_stage_low_precision
        # nullcontext rather than autocast(enabled=False): that would switch off a caller's autocast (training).
        with torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16_half else contextlib.nullcontext():
            half = _blocks([self.dec_half], self.dec_up(x), checkpointed)
            if self.dec_half_more is not None:
                half = _blocks(self.dec_half_more, half, checkpointed)
        rgb = self.to_rgb(half.float() if bf16_half else half)
        if self.detail is not None:
            rgb = rgb + self.detail(x)
        rgb = (rgb + 1) / 2
        return rgb if self.post_filter is None else self.post_filter(rgb, low_precision)

    def decode(self, codes: Sequence[torch.Tensor], low_precision: bool = False) -> torch.Tensor:
        """A prefix of the code grids [top, mid, bottom, refinement stages...] -> RGB (N, 3, 16h, 16w), about [0, 1].

        With fewer than three levels the missing ones are replaced by their learned 'absent' vectors,
        giving the preview the decoder was trained to produce; missing refinement stages are simply not added.

        low_precision: the context path, the /4 and the /2 stage (most of the work) and the post-filter's
        correction in bfloat16 (autocast); the layers that make RGB in float32, where bf16's 8-bit mantissa would
        show in the pixels: on Kodak a few thousandths of a dB, a few levels at most
        (benchmarks/decoder_precision.py). Worth it only where bf16 matmuls are native (`device.native_bf16`).
        """
        if not 1 <= len(codes) <= self.config.num_streams:
            raise ValueError(f"decode needs the top level and optionally up to {self.config.num_streams - 1} more")
        top = self.quantisers[0].lookup(codes[0])
        n, _, h, w = top.shape
        with torch.autocast(top.device.type, dtype=torch.bfloat16, enabled=low_precision):
            c2 = self.context_top(top)
            mid_q = (self.quantisers[1].lookup(codes[1]) if len(codes) > 1
                     else self._absent_like(1, top, (2 * h, 2 * w)))
            c1 = self.context_mid(torch.cat([mid_q.to(c2.dtype), c2], 1))
            bottom_q = (self.bottom_vector(codes[2:]) if len(codes) > 2
                        else self._absent_like(2, top, (4 * h, 4 * w)))
            x = self._decode_quarter(bottom_q.to(c1.dtype), c1)
        return self._decode_to_rgb(x.float(), low_precision=low_precision)

    def reconstruct(self, images: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """Encode and decode images of any size (padded internally, cropped back); clamped to [0, 1].

        `levels` counts code grids (streams) to use: 1 top only, 2 top + mid, 3 all levels, more adds stages."""
        h, w = images.shape[-2:]
        codes = self.encode(images)
        return self.decode(codes[:levels or len(codes)])[..., :h, :w].clamp(0, 1)


def _blocks(blocks, x: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    for block in blocks:
        x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False) if checkpointed else block(x)
    return x


def pad_to_multiple(images: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Replicate-pad (N, C, H, W) on the bottom and right to multiples of `multiple` (docs/DESIGN.md section 1)."""
    h, w = images.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return images
    # Replicate padding needs at least one pixel; repeat rows/columns explicitly so 1x1 inputs work too.
    rows = torch.arange(h + pad_h, device=images.device).clamp(max=h - 1)
    cols = torch.arange(w + pad_w, device=images.device).clamp(max=w - 1)
    return images.index_select(-2, rows).index_select(-1, cols)

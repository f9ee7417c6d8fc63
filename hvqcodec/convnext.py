"""ConvNeXt building blocks, structured as in the ConvNeXt paper (Liu et al., 2022).

The block is the paper's: depthwise 7x7 conv -> LayerNorm -> 1x1 (Linear) to 4C -> GELU -> 1x1 back to C ->
layer scale -> residual. Stochastic depth is left out: the models here are small and trained briefly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# Positions per chunk of a block's MLP at inference: 4096 x 4C floats (C <= 128) is at most 8 MB, about the
# cache of a CPU of this class; 1024 and 16384 were measured 5-15% slower. Narrower blocks take proportionally
# more rows (chunk_positions): the decoder's 32-channel half-resolution stage then makes a quarter of the calls,
# whose fixed costs had dominated (a Kodak decoder pass 5-7% faster, four runs interleaved, hvqcodec 0.18).
CHUNK_POSITIONS = 4096


def chunk_positions(channels: int) -> int:
    return CHUNK_POSITIONS * max(1, 128 // channels)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of an (N, C, H, W) tensor ("channels_first" in ConvNeXt)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Permuting to channels-last and back lets the fused layer_norm kernel do the work.
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """One ConvNeXt block: dwconv 7x7, LayerNorm, Linear(C, 4C), GELU, Linear(4C, C), layer scale, residual."""

    # Whether inference under bfloat16 autocast runs the MLP all in bfloat16 (`_bfloat16_mlp`, hvqcodec 0.19);
    # off only to measure it (`benchmarks/decoder_precision.py --part mlp`).
    bfloat16_mlp = True

    def __init__(self, dim: int, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init * torch.ones(dim)) if layer_scale_init > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self._forward_in_chunks(x)
        residual = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = self.gamma * x
        x = x.permute(0, 3, 1, 2)  # back to (N, C, H, W)
        return residual + x

    def _forward_in_chunks(self, x: torch.Tensor) -> torch.Tensor:
        """The same computation, the per-position MLP run chunk_positions(C) rows at a time: its (positions, 4C)
        intermediates then stay in cache instead of streaming through memory several times (the autoencoder's
        decoder on a Kodak image in float32: 0.65 -> 0.45 s on an AVX2 CPU). The same function as `forward` (a matmul's blocking
        over fewer rows may move the last bit of a float: pixels and the encoder's latents are outside the
        exactness rule, which covers the priors' probabilities); inference only (autograd would keep every
        chunk anyway)."""
        residual = x
        x = self.dwconv(x)
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # (N*H*W, C): channels last (a view if x is already so)
        mlp = self._mlp
        if (self.bfloat16_mlp and torch.is_autocast_enabled(x.device.type)
                and torch.get_autocast_dtype(x.device.type) == torch.bfloat16):
            mlp, rows = self._bfloat16_mlp, rows.to(torch.bfloat16)
        out = torch.empty_like(rows)
        step = chunk_positions(c)
        for start in range(0, rows.shape[0], step):
            out[start:start + step] = mlp(rows[start:start + step])
        return residual + out.view(n, h, w, c).permute(0, 3, 1, 2)

    def _mlp(self, rows: torch.Tensor) -> torch.Tensor:
        # GELU in place on the Linear's fresh output (inference only): the same values, no (rows, 4C) table more.
        y = self.pwconv2(torch.ops.aten.gelu_(self.pwconv1(self.norm(rows))))
        return self.gamma * y if self.gamma is not None else y

    def _bfloat16_mlp(self, rows: torch.Tensor) -> torch.Tensor:
        """The MLP on bfloat16 rows under bfloat16 autocast, all in bfloat16: LayerNorm straight to bfloat16 (its
        statistics in float32 inside the kernel; autocast would write float32 and cast it back for the Linear) and
        the layer scale folded into the second Linear (no float32 product to convert). The same function to
        bfloat16 rounding."""
        weight1, bias1, weight2, bias2 = self._bfloat16_weights()
        with torch.autocast(rows.device.type, enabled=False):
            # float32 weights on bfloat16 rows: the kernel's float32 result, rounded once to bfloat16, as autocast's
            x = F.layer_norm(rows, (rows.shape[1],), self.norm.weight, self.norm.bias, self.norm.eps)
            return F.linear(torch.ops.aten.gelu_(F.linear(x, weight1, bias1)), weight2, bias2)

    def _bfloat16_weights(self) -> tuple[torch.Tensor, ...]:
        """bfloat16 copies of the Linears' weights (the layer scale folded in), remade whenever a weight changes."""
        parameters = [self.pwconv1.weight, self.pwconv1.bias, self.pwconv2.weight, self.pwconv2.bias] + (
            [self.gamma] if self.gamma is not None else [])
        key = tuple((t.data_ptr(), t._version) for t in parameters)
        cached = getattr(self, "_bfloat16_cache", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                weight2, bias2 = self.pwconv2.weight, self.pwconv2.bias
                if self.gamma is not None:
                    weight2, bias2 = self.gamma[:, None] * weight2, self.gamma * bias2
                copies = tuple(t.detach().to(torch.bfloat16) for t in (
                    self.pwconv1.weight, self.pwconv1.bias, weight2, bias2))
            cached = self._bfloat16_cache = (key, copies)
        return cached[1]


def convnext_stage(dim: int, depth: int, layer_scale_init: float) -> nn.Sequential:
    return nn.Sequential(*(ConvNeXtBlock(dim, layer_scale_init) for _ in range(depth)))


class Downsample(nn.Module):
    """ConvNeXt's downsampling layer: LayerNorm then a stride-2 2x2 convolution."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(in_dim)
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


class Upsample(nn.Module):
    """The mirror of Downsample: LayerNorm then a stride-2 2x2 transposed convolution."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(in_dim)
        self.conv = nn.ConvTranspose2d(in_dim, out_dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))

"""Exact integer inference of the priors: the probabilities the range coder sees (docs/DESIGN.md section 4).

Arithmetic decoding fails totally if the decoder's probabilities differ from the encoder's in one bit, and
floating point differs across devices, thread counts and batch shapes. So the prior is quantised once, at
export, into integer tables and every operation on the probability path is exact:

- activations are integers on the grid 2^-ACT_BITS, clamped to 16 bits;
- weights are 16-bit integers with a power-of-two scale per output channel, so requantising an accumulator is a
  rounding right shift; biases are pre-scaled integers;
- sums of products are computed as matrix products of integers whose every partial sum stays below the
  float format's exact-integer limit, hence exact in any summation order, on any BLAS or GPU (and never
  through a conv algorithm that transforms its inputs: convolutions are gathers + matmul). Two table formats:
  16-bit weights times 16-bit activations in float64 (partial sums below 2^53; models up to hvq-vr3), and
  8-bit weights times 8-bit inputs in float32 (below 2^24; each layer requantises its input to 8 bits with a
  power-of-two scale fixed at export from calibration codes), about twice the matrix throughput on a CPU and
  far more on a GPU. Integers of 8 bits are exact in bf16 and TF32 too, so reduced-precision float32 matmul
  modes (which keep float32 accumulation) give the same integers;
- tanh, sigmoid and exp are lookup tables built at export time and stored with the weights;
- logits become integer frequencies (each >= 1, summing to 2^FREQ_BITS) by integer division only.

One step function, `level_frequencies`, gives the frequencies at any set of positions; the encoder calls it
with every position at once, the decoder once per wavefront t = j + 3 i, and both get identical integers.
"""
from __future__ import annotations

import functools
import math

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import stepkernel, wavefront
from .device import cpu_supports
from .priors import HierarchicalPrior, LevelPrior, StagePrior, level_blocks
from .wavefront import block_shape  # noqa: F401 (part of this module's interface)

# The integer format's constants live in npprior (no torch), shared with the runtime without it.
from .npprior import (ACT_BITS, ACT_MAX, EXP_MAX, FLOAT32_EXACT, FREQ_BITS, FREQ_TOTAL, GATE_HALF,  # noqa: E402,F401
                      NARROW_MAX, layer_tables, masked_tap_tables, stacked_conditioning, tap_major)

WEIGHT_MAX = (1 << 15) - 1
GATE_DOMAIN = 2 * ACT_MAX  # a gate input is a clamped layer output plus a clamped conditioning term
EXP_BITS = 20
# Positions per band of a 3x3 convolution (conditioning and stage contexts): bounds the (positions, 9C) float64
# columns to a few MB, which stay in cache.
BAND_POSITIONS = 2048
# The type-A taps of the masked kernel, as (row, column) offsets into a canvas padded by wavefront.PAD.
TAPS = wavefront.TAPS
# Products of 8-bit tables with at least this many rows go through an int8 matmul (int32 accumulation, so the
# same integers as float32), about 4x float32's throughput on a CPU for the conditioning stacks, the stage
# contexts and the encoder's parallel passes; smaller ones (a decoding step) stay in float32, where the int8
# route's conversions would cost more than they save.
INT8_MIN_ROWS = 128


@functools.cache
def int8_matmul_works(device_type: str) -> bool:
    """Whether torch._int_mm multiplies int8 matrices here, and correctly (CPU builds of recent torch; CUDA is
    left to the float32 path, whose integers are the same)."""
    if device_type != "cpu" or not hasattr(torch, "_int_mm"):
        return False
    try:
        a = torch.arange(-64, 64, dtype=torch.int8).view(16, 8)
        return torch.equal(torch._int_mm(a, a.t().contiguous()), (a.double() @ a.double().t()).int())
    except (RuntimeError, NotImplementedError):
        return False


@functools.cache
def int8_matmul_available(device_type: str) -> bool:
    """Whether products of 8-bit tables go through int8 matmuls: only where they work and are fast, i.e. where
    the CPU has int8 dot-product instructions (VNNI or AMX). Without them torch._int_mm falls back to a scalar
    loop, 25-40x slower than a float32 matmul of the same shape on an AVX2-only AMD EPYC (a Kodak decode 5.6 s
    instead of 2.0 s: benchmarks/int8_route.py). Either route gives the same integers: speed, never a result."""
    return int8_matmul_works(device_type) and cpu_supports("vnni", "amx_tile")


# --- export: float prior -> integer tables -------------------------------------------------------------
def quantise_linear(weight: torch.Tensor, bias: torch.Tensor | None,
                    input_shift: int | None = None) -> dict[str, torch.Tensor]:
    """(O, I) float weight (+ bias) -> integer weight, per-channel shift, bias in accumulator units.

    16-bit (input_shift None): the input is the activation itself (2^-10 grid). 8-bit: the input is first
    rounded to 8 bits, x8 = round(X * 2^-input_shift) for X on the 2^-10 grid, and the stored shift brings the
    accumulator back to the 2^-10 grid (it may be zero or negative: a left shift)."""
    weight = weight.detach().double().flatten(1)
    narrow = input_shift is not None
    top = NARROW_MAX if narrow else WEIGHT_MAX
    peak = weight.abs().amax(1).clamp(min=1e-12)
    weight_shift = torch.floor(torch.log2(top / peak)).clamp(1 if not narrow else -30, 30).long()
    int_weight = torch.round(weight * torch.pow(2.0, weight_shift.double())[:, None]).clamp(-top, top)
    shift = weight_shift - (input_shift or 0)
    int_bias = torch.zeros(weight.shape[0], dtype=torch.float64) if bias is None else bias.detach().double()
    int_bias = torch.round(int_bias * torch.pow(2.0, shift.double()) * (1 << ACT_BITS))
    if not narrow:
        int_bias = int_bias.clamp(-(1 << 50), 1 << 50)
        return {"weight": int_weight.to(torch.int16), "bias": int_bias.long(), "shift": shift.to(torch.int8)}
    # Room left under 2^24 once the largest possible sum of products and the rounding offset are in.
    room = FLOAT32_EXACT - 1 - NARROW_MAX * int_weight.abs().sum(1) - _half(shift)
    if bool((room < 0).any()):
        raise ValueError("an 8-bit layer's products alone can reach 2^24: too many inputs for float32")
    int_bias = torch.maximum(torch.minimum(int_bias, room), -room)
    return {"weight": int_weight.to(torch.int8), "bias": int_bias.long(), "shift": shift.to(torch.int8),
            "input_shift": torch.tensor(input_shift, dtype=torch.int8)}


def _half(shift: torch.Tensor) -> torch.Tensor:
    """The rounding offset of a right shift (2^(shift-1)); nothing for a left shift or none (shift <= 0)."""
    shift = shift.double()
    return torch.where(shift > 0, torch.pow(2.0, shift - 1), torch.zeros_like(shift))


def input_shift(peak: float) -> int:
    """The shift that rounds inputs of magnitude up to `peak` (calibrated, real units) to 8 bits: peak * 2^k
    <= 127 with k = 10 - shift as large as possible (peaks beyond the activations' range are capped)."""
    peak = min(max(float(peak), 1e-6), ACT_MAX / (1 << ACT_BITS))
    return ACT_BITS - math.floor(math.log2(NARROW_MAX / peak))


def quantise_table(table: torch.Tensor) -> torch.Tensor:
    return torch.round(table.detach().double() * (1 << ACT_BITS)).clamp(-ACT_MAX, ACT_MAX).to(torch.int16)


def lookup_tables() -> dict[str, torch.Tensor]:
    grid = torch.arange(-GATE_HALF, GATE_HALF + 1, dtype=torch.float64) / (1 << ACT_BITS)
    scale = 1 << ACT_BITS
    d = torch.arange(EXP_MAX + 1, dtype=torch.float64) / (1 << ACT_BITS)
    return {"tanh": torch.round(torch.tanh(grid) * scale).to(torch.int16),
            "sigmoid": torch.round(torch.sigmoid(grid) * scale).to(torch.int16),
            "exp": torch.round(torch.exp(-d) * (1 << EXP_BITS)).to(torch.int32)}


# A layer to export: its float weight and bias, and the module whose input sets its 8-bit input scale.
Layer = tuple[torch.Tensor, torch.Tensor | None, nn.Module]


def _quantise_layers(layers: dict[str, Layer], peaks: dict[nn.Module, float] | None) -> dict[str, torch.Tensor]:
    tables = {}
    for name, (weight, bias, module) in layers.items():
        shift = None if peaks is None else input_shift(peaks[module])
        for key, value in quantise_linear(weight, bias, shift).items():
            tables[f"{name}.{key}"] = value
    return tables


def export_level(prior: LevelPrior, peaks: dict[nn.Module, float] | None = None) -> dict[str, torch.Tensor]:
    """Integer tables for one level, keyed by flat names (a state dict of integer tensors); 8-bit layers when
    the calibrated input peaks of its layers are given (`calibrate`)."""
    rows, cols = zip(*TAPS)
    masked_weight = prior.masked.weight[:, :, list(rows), list(cols)]  # (2C, C, taps): only the causal taps
    tables = {"embedding": quantise_table(prior.embedding.weight)}
    # The masked convolution reads the embedding table (applied functionally, so no hook sees its input).
    layers = {"masked": (masked_weight, prior.masked.bias, prior.embedding),
              "head": (prior.head.weight, prior.head.bias, prior.head)}
    for i, (inp, out) in enumerate(zip(prior.block_in, prior.block_out)):
        layers[f"block{i}.in"] = (inp.weight, inp.bias, inp)
        layers[f"block{i}.out"] = (out.weight, out.bias, out)
    if prior.conditioning is not None:
        stack = prior.conditioning
        for u, embedding in enumerate(stack.embeddings):
            tables[f"cond.embedding{u}"] = quantise_table(embedding.weight)
        for i, (conv, out) in enumerate(zip(stack.convs, stack.outs)):
            layers[f"cond.block{i}.in"] = (conv.weight, conv.bias, conv)
            layers[f"cond.block{i}.out"] = (out.weight, out.bias, out)
        for i, proj in enumerate(prior.cond_proj):
            weight = proj.weight
            if prior.subpixel:  # rows (unit, position) -> (position, unit): one position's rows are contiguous
                weight = weight.reshape(-1, 4, *weight.shape[1:]).transpose(0, 1).reshape(weight.shape)
            layers[f"cond.proj{i}"] = (weight, None, proj)
    return tables | _quantise_layers(layers, peaks)


def export_stage(prior: StagePrior, peaks: dict[nn.Module, float] | None = None) -> dict[str, torch.Tensor]:
    """Integer tables for one refinement stage's (parallel) prior."""
    tables = {f"level_embedding{u}": quantise_table(e.weight) for u, e in enumerate(prior.level_embeddings)}
    tables.update({f"stage_embedding{e}": quantise_table(m.weight) for e, m in enumerate(prior.stage_embeddings)})
    layers = {}
    for i, (conv, out) in enumerate(zip(prior.convs, prior.outs)):
        layers[f"block{i}.in"] = (conv.weight, conv.bias, conv)
        layers[f"block{i}.out"] = (out.weight, out.bias, out)
    for g in range(prior.groups):
        for name, module in ((f"group{g}.in", prior.group_in[g]), (f"group{g}.out", prior.group_out[g]),
                             (f"head{g}", prior.heads[g])):
            layers[name] = (module.weight, module.bias, module)
    return tables | _quantise_layers(layers, peaks)


@torch.no_grad()
def calibrate(prior: HierarchicalPrior, codes: Sequence[torch.Tensor]) -> dict[nn.Module, float]:
    """The largest input magnitude of every layer over a forward pass of the float prior on calibration codes
    (code grids of training crops, [top, mid, bottom, stages...] batched); an embedding table's own peak
    stands for the masked convolution that reads it."""
    peaks: dict[nn.Module, float] = {}

    def record(module, inputs):
        peaks[module] = max(peaks.get(module, 0.0), float(inputs[0].detach().abs().max()))

    handles = [m.register_forward_pre_hook(record) for m in prior.modules() if isinstance(m, nn.Conv2d)]
    try:
        prior.eval()([c.long() for c in codes])
    finally:
        for handle in handles:
            handle.remove()
    for level in prior.levels:
        peaks[level.embedding] = float(level.embedding.weight.abs().max())
    return peaks


def export_prior(prior: HierarchicalPrior, calibration_codes: Sequence[torch.Tensor] | None = None
                 ) -> dict[str, torch.Tensor]:
    """All integer tables of the three levels and the refinement stages, plus the shared lookup tables: the
    8-bit float32 format when calibration codes are given, else the 16-bit float64 one."""
    peaks = None if calibration_codes is None else calibrate(prior, calibration_codes)
    tables = {f"lut.{k}": v for k, v in lookup_tables().items()}
    for level, level_prior in enumerate(prior.levels):
        tables.update({f"level{level}.{k}": v for k, v in export_level(level_prior, peaks).items()})
    for stage, stage_prior in enumerate(prior.stages):
        tables.update({f"stage{stage}.{k}": v for k, v in export_stage(stage_prior, peaks).items()})
    return tables


def _widen(table: torch.Tensor) -> torch.Tensor:
    """A table over [-GATE_HALF, GATE_HALF] extended to [-GATE_DOMAIN, GATE_DOMAIN] with its end values."""
    pad = GATE_DOMAIN - GATE_HALF
    return torch.cat([table[:1].expand(pad), table, table[-1:].expand(pad)])


# --- integer inference ---------------------------------------------------------------------------------
# Tensors below hold integers in float64 (16-bit tables) or float32 (8-bit tables): every value, product and
# partial sum is an integer below 2^53 (2^24), so the float type represents them exactly and matmuls,
# additions and power-of-two scalings are exact; keeping one dtype avoids conversions on the hot path. Only
# table lookups go through integer indices, and the frequencies are always computed in float64.
def tables_dtype(tables: dict[str, torch.Tensor]) -> torch.dtype:
    """float32 for 8-bit tables (their layers carry an input shift), float64 for 16-bit ones."""
    return torch.float32 if any(key.endswith(".input_shift") for key in tables) else torch.float64


class _IntNetwork:
    """Integer layers rebuilt from the tables under one prefix: exact linear layers and the gate lookup."""

    def __init__(self, tables: dict[str, torch.Tensor], luts: dict[str, torch.Tensor], prefix: str,
                 channels: int, device: torch.device | str, dtype: torch.dtype = torch.float64) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        t = {k[len(prefix):]: v.to(self.device) for k, v in tables.items() if k.startswith(prefix)}
        self.tables = t
        self.channels = channels
        # Per layer: weight transposed (I, O), bias plus the rounding offset 2^(shift-1), 2^-shift, and for an
        # 8-bit layer the scale 2^-input_shift that rounds its input to 8 bits (None: the input as it is) and,
        # where int8 matmuls are available, the weight as int8 (I, O) (npprior.layer_tables: one computation).
        int8 = dtype == torch.float32 and int8_matmul_available(self.device.type)

        def tensor(array: np.ndarray, as_dtype: torch.dtype | None = None) -> torch.Tensor:
            return torch.from_numpy(array).to(self.device, as_dtype)
        self.layers = {}
        for name, (weight, bias, inv_scale, input_scale, weight_int8) in layer_tables(
                {key: value.cpu().numpy() for key, value in t.items()}, prefix).items():
            self.layers[name] = (tensor(weight, dtype), tensor(bias, dtype), tensor(inv_scale, dtype), input_scale,
                                 tensor(weight_int8) if int8 and weight_int8 is not None else None)
        # One table for the whole gate input: tanh for the first C channels, sigmoid for the last C, widened
        # from the stored [-8, 8] range to every value a gate input can take (a sum of two clamped terms) by
        # repeating the saturated ends, which is exactly what clamping the index would do.
        span = 2 * GATE_DOMAIN + 1
        self.gate_table = torch.cat([_widen(luts["tanh"]), _widen(luts["sigmoid"])]).to(self.device, dtype)
        self.gate_offset = torch.cat([torch.full((self.channels,), GATE_DOMAIN),
                                      torch.full((self.channels,), GATE_DOMAIN + span)]).to(self.device, dtype)
        self.exp = luts["exp"].to(self.device).double()
        self._luts = luts  # the C functions take the gate tables as stored ([-GATE_HALF, GATE_HALF])
        self._conv_kernels: dict[tuple[str, ...], stepkernel.ConvKernel | None] = {}  # made on first use
        self._linear_kernels: dict[tuple[str, ...], stepkernel.LinearKernel | None] = {}
        self.temperature_milli = 1000  # 1.0: what coding uses; only sampling changes it

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """x (P, I) on the activation grid -> (P, O) on the activation grid: exact matmul, rounding shift."""
        return self.product(name, self.layer_input(name, x))

    def layer_input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """What a layer multiplies: x itself (16-bit tables), or x rounded to 8 bits (half to even, the same on
        every device) with the layer's calibrated power-of-two scale."""
        input_scale = self.layers[name][3]
        return x if input_scale is None else (x * input_scale).round_().clamp_(-NARROW_MAX, NARROW_MAX)

    def product(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """A layer's input as `layer_input` gives it (or that as int8) -> its output on the activation grid."""
        weight, bias_and_half, inv_scale, _, weight_int8 = self.layers[name]
        if weight_int8 is not None and x.shape[0] >= INT8_MIN_ROWS:
            # Exact int32 sums below 2^24 (the 8-bit bound), so converting them to float32 is exact too.
            acc = torch._int_mm(x.to(torch.int8), weight_int8).to(self.dtype).add_(bias_and_half)
        else:
            acc = torch.addmm(bias_and_half, x.to(self.dtype), weight)
        return acc.mul_(inv_scale).floor_().clamp_(-ACT_MAX, ACT_MAX)

    def gate(self, x: torch.Tensor, into: str | None = None) -> torch.Tensor:
        """tanh(a) * sigmoid(b) on the activation grid, a and b the two channel halves of x; or, given the
        layer it goes `into`, as that layer's input (`layer_input`): an 8-bit layer gets it rounded once,
        straight to its 8 bits (three operations fewer per gate)."""
        # index_select on the flat index: about twice as fast as advanced indexing for these shapes.
        index = (x + self.gate_offset).int().view(-1)  # int32: converts about 3x faster than int64
        tanh, sigmoid = self.gate_table.index_select(0, index).view(x.shape).chunk(2, dim=-1)
        input_scale = None if into is None else self.layers[into][3]
        if input_scale is not None:  # the product is on the 2^-20 grid; round half to even, as layer_input
            return (tanh * sigmoid).mul_(input_scale / (1 << ACT_BITS)).round_().clamp_(-NARROW_MAX, NARROW_MAX)
        return (tanh * sigmoid).add_(1 << (ACT_BITS - 1)).mul_(1.0 / (1 << ACT_BITS)).floor_()

    def conv3x3_blocks(self, names: Sequence[str], x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """x through the 3x3 gated blocks `names` in turn: in C where the int8 path runs (`stepkernel.ConvKernel`:
        the same integers; on a CPU with AMX, where torch's int8 matmuls are fast, about the torch version's time
        on a Kodak image's grid and 0.8x on a 1024 tile's, without its (positions, 9C) columns), else
        `conv3x3_block` after `conv3x3_block`."""
        kernel = self._c_kernel(self._conv_kernels, names, lambda: stepkernel.ConvKernel(
            self, names, GATE_HALF, self._luts["tanh"], self._luts["sigmoid"]))
        if kernel is not None:
            return kernel.run(x, h, w, torch.get_num_threads())
        for name in names:
            x = self.conv3x3_block(name, x, h, w)
        return x

    def linears_int16(self, names: Sequence[str], x: torch.Tensor) -> list[torch.Tensor]:
        """`linear` of x through each layer of `names` on its own, as int16 (exact: integers within +-32767): in C
        where the int8 path runs (`stepkernel.LinearKernel`), else the torch version converted."""
        kernel = self._c_kernel(self._linear_kernels, names, lambda: stepkernel.LinearKernel(self, names))
        if kernel is not None:
            return [kernel.run(x, i, torch.get_num_threads()).to(self.device) for i in range(len(names))]
        return [self.linear(name, x).to(torch.int16) for name in names]

    def _c_kernel(self, cache: dict, names: Sequence[str], make):
        """The C kernel for `names` from `cache`, made by make() on first use; None where the int8 path does not
        run here or make() refuses the shapes or tables (ValueError): the torch version then."""
        key = tuple(names)
        if key not in cache:
            cache[key] = None
            if (names and self.device.type == "cpu" and self.dtype == torch.float32 and stepkernel.available()
                    and stepkernel.int8_available()):
                try:
                    cache[key] = make()
                except ValueError:
                    pass
        return cache[key]

    def conv3x3_block(self, name: str, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """x + out(gate(conv3x3(x))) on an (h*w, C) grid; the 3x3 convolution is a gather + matmul. Band by
        band of rows, so that the (positions, 9C) columns stay in cache (every position's result is the same)."""
        layer = self._tap_major(f"{name}.in")
        # Rounded to 8 bits (8-bit tables) once per position, before the columns repeat it nine times (as int8
        # when the product will be an int8 matmul: a quarter of the bytes to gather).
        layer_input = self.layer_input(layer, x)
        if self.layers[layer][4] is not None and x.shape[0] >= INT8_MIN_ROWS:
            layer_input = layer_input.to(torch.int8)
        padded = F.pad(layer_input.view(h, w, -1), (0, 0, 1, 1, 1, 1))
        rows = max(1, BAND_POSITIONS // w)
        out = torch.empty_like(x)
        for top in range(0, h, rows):
            a, b = top * w, min(top + rows, h) * w
            pre = self.product(layer, _columns3x3(padded[top:top + rows + 2]))
            out[a:b] = (x[a:b] + self.product(f"{name}.out", self.gate(pre, f"{name}.out"))).clamp_(-ACT_MAX, ACT_MAX)
        return out

    def _tap_major(self, name: str) -> str:
        """A 3x3 layer's weight with its input rows reordered from (channel, tap), as stored (F.unfold's order),
        to (tap, channel), the order of `_columns3x3` (made once). The products summed are the same integers,
        and integer sums below 2^53 do not depend on their order."""
        key = f"{name}:tap-major"
        if key not in self.layers:
            weight, bias_and_half, inv_scale, input_scale, weight_int8 = self.layers[name]

            def reordered(w: torch.Tensor) -> torch.Tensor:  # npprior.tap_major, on this network's device
                return torch.from_numpy(tap_major(w.cpu().numpy())).to(w.device)
            self.layers[key] = (reordered(weight), bias_and_half, inv_scale, input_scale,
                                None if weight_int8 is None else reordered(weight_int8))
        return key


class IntLevelPrior(_IntNetwork):
    """One level's integer prior, rebuilt from its tables (no floating-point state at all)."""

    def __init__(self, tables: dict[str, torch.Tensor], luts: dict[str, torch.Tensor], level: int,
                 causal_blocks: int, cond_blocks: int, device: torch.device | str = "cpu",
                 block: int | tuple[int, int] = 0) -> None:
        prefix = f"level{level}."
        super().__init__(tables, luts, prefix, tables[f"{prefix}embedding"].shape[1], device, tables_dtype(tables))
        t = self.tables
        self.level = level
        self.block = block  # coding block: (rows, columns), 0 for the tile's whole height or width; see LevelState
        self.causal_blocks = causal_blocks
        self.cond_blocks = cond_blocks if level > 0 else 0
        self.codebook_size = t["head.weight"].shape[0]
        self.cond_embeddings = [t[f"cond.embedding{u}"].long() for u in range(level)]
        # Sub-position conditioning (PriorConfig.subpixel_cond): a projection per position of the 2x2 cell.
        self.cond_positions = 4 if level and t["cond.proj0.weight"].shape[0] == 8 * self.channels else 1
        # The masked convolution reads only code embeddings, so it is folded into one table per tap (exact
        # integers formed in float64 by npprior.masked_tap_tables, then stored in the dtype): the layer is then a
        # sum of 12 lookups instead of a matmul per position.
        weight, bias_and_half, inv_scale, input_scale, _ = self.layers.pop("masked")
        # Kept for the C step function, which computes the layer as one product on AMX tiles where it can.
        self.masked_layer, self.masked_embedding = (weight, bias_and_half, inv_scale, input_scale), t["embedding"]
        self.masked_scale = (bias_and_half, inv_scale)
        self.tap_tables = torch.from_numpy(masked_tap_tables(weight.double().cpu().numpy(), input_scale,
                                                             t["embedding"].cpu().numpy(), self.channels)).to(
            self.device, self.dtype).contiguous()
        self.tap_offsets = torch.arange(len(TAPS), device=self.device) * (self.codebook_size + 1)
        # The C step function (hvqcodec/_stepkernel.c) where it applies: the same integers, one call a step.
        self.kernel = None
        if (self.device.type == "cpu" and self.dtype == torch.float32 and stepkernel.available()
                and all(layer[3] is not None for layer in self.layers.values())):
            self.kernel = stepkernel.LevelKernel(self, GATE_HALF, EXP_MAX, luts["tanh"], luts["sigmoid"])

    def conditioning(self, upper_codes: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        """Upper levels' codes -> per gated unit a (h_u * w_u * cond_positions, 2C) projection: one row per cell
        of the nearest upper level's grid, or with sub-position conditioning one per cell and position
        (row = cell * 4 + 2 * (row % 2) + column % 2 on this level's grid). int16: the activation grid's
        integers (within +-32767) exactly, in a quarter of float64's memory (what `LevelState` keeps)."""
        if self.level == 0:
            return None
        h, w = upper_codes[-1].shape[-2:]
        x = 0
        for table, codes in zip(self.cond_embeddings, upper_codes):
            factor = h // codes.shape[-2]
            grid = codes.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
            x = x + F.embedding(grid, table)  # (h, w, C)
        x = x.clamp(-ACT_MAX, ACT_MAX).reshape(h * w, -1).to(self.dtype)
        x = self.conv3x3_blocks([f"cond.block{i}" for i in range(self.cond_blocks)], x, h, w)
        return [unit.view(h * w * self.cond_positions, -1)
                for unit in self.linears_int16([f"cond.proj{i}" for i in range(1 + self.causal_blocks)], x)]

    def kernel_runs(self, count: int) -> bool:
        """Whether a batch of `count` positions goes to the C step function: at temperature 1 (coding), below
        stepkernel.max_positions(), or of any size where the int8 path runs: even beside torch's spinning OpenMP
        threads (stepkernel.LARGE_BATCH) it takes about half the torch version's time there (a Kodak bottom
        level in chunks of 1,024: 0.07 s on one thread against 0.13 s on two)."""
        return (self.kernel is not None and self.temperature_milli == 1000
                and (self.kernel.int8 or count < stepkernel.max_positions()))

    def frequencies(self, canvas: torch.Tensor, neighbours: torch.Tensor, upper: torch.Tensor,
                    cond: list[torch.Tensor] | None, threads: int = 1, scale: float = 1.0) -> torch.Tensor:
        """The step function: integer frequencies (P, K) for P positions of a LevelState.

        neighbours (P, taps) index the flat code canvas at each position's causal neighbours, upper (P,) the
        conditioning grid. Only canvas entries strictly before a position in wavefront order are read, so the
        result is the same whether the rest of the canvas is filled (encoder) or not yet decoded (decoder).
        threads: how many threads the C step function may use (the torch version uses torch's own); scale: a
        power of two to multiply the frequencies by (exact), 2^-FREQ_BITS for the range coder's probabilities.
        """
        if self.kernel_runs(neighbours.shape[0]):
            return self.kernel.frequencies(canvas, neighbours, upper, cond, threads, scale)
        acc = F.embedding_bag(canvas[neighbours] + self.tap_offsets, self.tap_tables, mode="sum")
        bias_and_half, inv_scale = self.masked_scale
        pre = acc.add_(bias_and_half).mul_(inv_scale).floor_().clamp_(-ACT_MAX, ACT_MAX)
        if cond is not None:
            pre = pre + cond[0].index_select(0, upper)
        h = self.gate(pre)
        for i in range(self.causal_blocks):
            pre = self.linear(f"block{i}.in", h)
            if cond is not None:
                pre = pre + cond[i + 1].index_select(0, upper)
            h = (h + self.product(f"block{i}.out", self.gate(pre, f"block{i}.out"))).clamp_(-ACT_MAX, ACT_MAX)
        freq = logits_to_frequencies(self.linear("head", h), self.exp, self.temperature_milli)
        return freq if scale == 1.0 else freq.mul_(scale)


class IntStagePrior(_IntNetwork):
    """One refinement stage's integer prior (fully parallel: a context pass, then one pass per group)."""

    def __init__(self, tables: dict[str, torch.Tensor], luts: dict[str, torch.Tensor], stage: int, groups: int,
                 blocks: int, device: torch.device | str = "cpu") -> None:
        prefix = f"stage{stage}."
        super().__init__(tables, luts, prefix, tables[f"{prefix}level_embedding0"].shape[1], device,
                         tables_dtype(tables))
        t = self.tables
        self.stage, self.groups, self.blocks = stage, groups, blocks
        self.codebook_size = t["head0.weight"].shape[0]
        self.level_embeddings = [t[f"level_embedding{u}"].to(self.dtype) for u in range(3)]
        self.stage_embeddings = [t[f"stage_embedding{e}"].to(self.dtype) for e in range((stage + 1) * groups - 1)]
        # The group heads in C where the step function's int8 path runs: the same integers, without some twenty
        # torch passes over (P, K) tables per chunk (hvqcodec/_stepkernel.c, `heads`).
        self.head_kernels = None
        if (self.device.type == "cpu" and self.dtype == torch.float32 and stepkernel.available()
                and stepkernel.int8_available() and all(layer[3] is not None for layer in self.layers.values())):
            kernels = [stepkernel.HeadKernel(self, g, GATE_HALF, EXP_MAX, luts["tanh"], luts["sigmoid"])
                       for g in range(groups)]
            self.head_kernels = kernels if all(k.usable for k in kernels) else None

    def context(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        """One tile's [top, mid, bottom, earlier stages (G, h, w)...] -> context (h*w, C) on the bottom grid."""
        h, w = codes[2].shape[-2:]
        x = 0
        for table, grid in zip(self.level_embeddings, codes[:3]):  # F.embedding: a third of indexing's time
            factor = h // grid.shape[-2]
            x = x + F.embedding(grid.to(self.device).repeat_interleave(factor, -2).repeat_interleave(factor, -1),
                                table)
        for s, stage_codes in enumerate(codes[3:3 + self.stage]):
            for g in range(self.groups):
                x = x + F.embedding(stage_codes[g].to(self.device), self.stage_embeddings[s * self.groups + g])
        x = x.reshape(h * w, -1).clamp_(-ACT_MAX, ACT_MAX)
        return self.conv3x3_blocks([f"block{i}" for i in range(self.blocks)], x, h, w)

    def group_context(self, context: torch.Tensor, group: int, previous: torch.Tensor | None) -> torch.Tensor:
        """The context (P, C) a group's codes are predicted from: the stage's context, plus (after the first
        group) the codes `previous` (P,) of the group before."""
        if not group:
            return context
        return (context + self.stage_embeddings[self.stage * self.groups + group - 1][previous.to(self.device)]
                ).clamp_(-ACT_MAX, ACT_MAX)

    def group_head(self, context: torch.Tensor, group: int) -> torch.Tensor:
        """A group's context (P, C) -> frequencies (P, K). Each position on its own: any batch of rows gives the
        same integers, so callers may go chunk by chunk."""
        if self.head_kernels is not None and self.temperature_milli == 1000:
            return self.head_kernels[group].frequencies(context, torch.get_num_threads())
        out = f"group{group}.out"
        h = (context + self.product(out, self.gate(self.linear(f"group{group}.in", context), out))
             ).clamp_(-ACT_MAX, ACT_MAX)
        return logits_to_frequencies(self.linear(f"head{group}", h), self.exp, self.temperature_milli)

    def group_probabilities(self, context: torch.Tensor, group: int) -> np.ndarray:
        """What the range coder takes for a group's rows: `group_head`'s frequencies / FREQ_TOTAL, exact float64
        (the C head writes them so directly: no second pass over the (P, K) table)."""
        if self.head_kernels is not None and self.temperature_milli == 1000:
            return self.head_kernels[group].frequencies(context, torch.get_num_threads(), 1.0 / FREQ_TOTAL).numpy()
        return coder_probabilities(self.group_head(context, group))


class LevelState:
    """One level's code grids while they are coded: a flat canvas of codes (the sentinel K where none is known
    yet) and, for every position in wavefront order, the indices the step function reads: tiles and coding blocks
    side by side on one canvas, all advancing one wavefront per step, each tile with its own stream
    (`wavefront.layout`, which says how). A prior's coding block (`prior.block`: rows and columns, a model
    property; see `block_shape`) stops a block's causal context at its edges; the conditioning from the levels
    above still sees the whole tile.
    """

    def __init__(self, prior: IntLevelPrior, sizes: Sequence[tuple[int, int]],
                 upper_codes: Sequence[Sequence[torch.Tensor]]) -> None:
        device = prior.device
        self.prior, self.sizes = prior, [tuple(size) for size in sizes]
        # Threads the C step function may use: torch's count when the state is made (decoding then runs its
        # small torch operations on one thread, `entropy.one_thread`).
        self.threads = torch.get_num_threads()
        # Each gated unit's conditioning, all tiles one after the other, as int16 (npprior.stacked_conditioning).
        positions = getattr(prior, "cond_positions", 1)
        self.cond: list[torch.Tensor] | None = stacked_conditioning(
            lambda uppers: prior.conditioning([u.to(device) for u in uppers]), self.sizes, upper_codes, positions,
            lambda rows, unit: unit.new_empty((rows, unit.shape[1]), dtype=torch.int16))
        # Where each position sits and in which order (numpy, shared with a runtime without torch).
        laid = wavefront.layout(self.sizes, getattr(prior, "block", 0), positions, TAPS)
        self.canvas = torch.full((laid.canvas_size,), prior.codebook_size, dtype=torch.int64, device=device)
        self.order, self.centres, self.neighbours, self.upper, self.tiles, self.blocks = (
            torch.from_numpy(x).to(device) for x in (laid.order, laid.centres, laid.neighbours, laid.upper,
                                                     laid.tiles, laid.blocks))
        self.fronts = laid.fronts  # [start, stop) of each wavefront
        # Each tile's run of positions, per wavefront (start), so the decoder can feed each tile's stream.
        self._segments = laid.segments
        self._bound: stepkernel.BoundLevel | None = None  # made on first use by `probabilities`
        self._numpy_views: tuple[np.ndarray, np.ndarray] | None = None  # made on first use by `paint`

    def frequencies(self, start: int, stop: int, scale: float = 1.0) -> torch.Tensor:
        """Frequencies of positions start..stop-1 (in decoding order), times scale (`IntLevelPrior.frequencies`)."""
        return self.prior.frequencies(self.canvas, self.neighbours[start:stop], self.upper[start:stop], self.cond,
                                      self.threads, scale)

    def probabilities(self, start: int, stop: int) -> np.ndarray:
        """What the range coder takes for positions start..stop-1: their frequencies / FREQ_TOTAL, exact float64
        (the C step function writes them so directly: no second pass over a step's (P, K) table)."""
        if self.prior.kernel_runs(stop - start):
            if self._bound is None:
                self._bound = stepkernel.BoundLevel(self.prior.kernel, self.canvas, self.neighbours, self.upper,
                                                    self.cond)
            return self._bound.probabilities(start, stop, self.threads)
        return self.frequencies(start, stop, 1.0 / FREQ_TOTAL).cpu().numpy()

    def segments(self, start: int) -> list[tuple[int, int, int]]:
        """(tile, start, stop) of each tile's run of positions within the wavefront beginning at start."""
        return self._segments[start]

    def paint(self, start: int, stop: int, codes: torch.Tensor | np.ndarray) -> None:
        """Codes of positions start..stop-1 (decoding order) onto the canvas. A numpy array (a CPU canvas: what
        the range decoder gives) goes through numpy views of canvas and centres: a decoding step paints a few dozen
        codes, where a torch indexing call's fixed cost is several times numpy's."""
        if isinstance(codes, np.ndarray):
            if self._numpy_views is None:
                self._numpy_views = (self.canvas.numpy(), self.centres.numpy())
            canvas, centres = self._numpy_views
            canvas[centres[start:stop]] = codes
        else:
            self.canvas[self.centres[start:stop]] = codes

    def codes(self) -> list[torch.Tensor]:
        """Each tile's (h, w) grid as painted so far."""
        flat = torch.empty_like(self.order)
        flat[self.order] = self.canvas[self.centres]
        return [grid.view(size) for grid, size in zip(flat.split([h * w for h, w in self.sizes]), self.sizes)]


def _columns3x3(padded: torch.Tensor) -> torch.Tensor:
    """A zero-padded (h+2, w+2, C) grid -> (h*w, 9C) columns of its 3x3 neighbourhoods, tap-major: nine shifted
    copies side by side, several times faster than F.unfold on a channel-first copy."""
    h, w = padded.shape[0] - 2, padded.shape[1] - 2
    return torch.cat([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], 2).view(h * w, -1)


@functools.lru_cache(maxsize=16)
def _column_numbers(k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.arange(k, dtype=dtype, device=device)


def coder_probabilities(freq: torch.Tensor) -> np.ndarray:
    """Integer frequencies (P, K) -> what the range coder takes: freq / FREQ_TOTAL as float64 numpy, exact."""
    # Times 2^-FREQ_BITS rather than / FREQ_TOTAL: the same (exact) values, three times faster.
    return (freq.cpu().double() * (1.0 / FREQ_TOTAL)).numpy()


def logits_to_frequencies(logits: torch.Tensor, exp_table: torch.Tensor, temperature_milli: int = 1000) -> torch.Tensor:
    """Integer logits (P, K) -> integer frequencies (P, K), each >= 1, every row summing to FREQ_TOTAL.

    Integers are held in float64, like the layers' (exp_table too): every product and sum is below 2^53, and
    the floor of a correctly rounded float64 quotient a / b is the integer a // b whenever (a // b + 1) * b <
    2^53 (a quotient just below an integer n is at least 1/b below it, more than half an ulp of n, so it never
    rounds up to n); here a < 2^40. Float division vectorises; int64 division does not.

    temperature_milli (sampling only; coding always uses 1000) divides the logits by temperature / 1000, in
    integers: distances below the maximum become d * 1000 // temperature_milli."""
    k = logits.shape[1]
    # Logits and their distances below the peak are integers below 2^17: exact in float32 as in float64.
    distances = logits.amax(1, keepdim=True) - logits
    # The most probable code, the first one on ties (as argmax): the smallest key min(distance, 1) * K + column,
    # i.e. the first column at distance 0 (keys below 2K: exact in any float type). amin is vectorised where
    # max(1) with indices is not (about 20 against 83 us for a step's 126 x 512 logits).
    keys = torch.addcmul(_column_numbers(k, distances.dtype, distances.device), distances.clamp(max=1),
                         distances.new_tensor(k))
    most_probable = keys.amin(1, keepdim=True).long()
    if temperature_milli != 1000:  # d * 1000 can pass 2^24
        distances = distances.double().mul_(1000).div_(temperature_milli).floor_()
    distances.clamp_(max=EXP_MAX)
    index = distances.int().view(-1)
    weights = exp_table.double().index_select(0, index).view(distances.shape)
    total = weights.sum(1, keepdim=True)
    freq = weights.mul_(FREQ_TOTAL - k).div_(total).floor_().add_(1)
    # What integer division leaves over goes to the most probable code (the first one on ties).
    return freq.scatter_add_(1, most_probable, FREQ_TOTAL - freq.sum(1, keepdim=True))


class IntPrior:
    """The three levels' and the refinement stages' integer priors, rebuilt from exported tables."""

    def __init__(self, causal_blocks: int, cond_blocks: int, tables: dict[str, torch.Tensor],
                 device: torch.device | str = "cpu", refine_stages: int = 0, refine_groups: int = 1,
                 stage_blocks: int = 0, coding_block: int | Sequence = 0) -> None:
        luts = {k[len("lut."):]: v for k, v in tables.items() if k.startswith("lut.")}
        self.levels = [IntLevelPrior(tables, luts, level, causal_blocks, cond_blocks, device, block)
                       for level, block in enumerate(level_blocks(coding_block))]
        self.stages = [IntStagePrior(tables, luts, s, refine_groups, stage_blocks, device)
                       for s in range(refine_stages)]

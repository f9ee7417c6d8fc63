"""Exact integer inference of the priors: the probabilities the range coder sees (docs/DESIGN.md section 4).

Arithmetic decoding fails totally if the decoder's probabilities differ from the encoder's in one bit, and
floating point differs across devices, thread counts and batch shapes. So the prior is quantised once, at
export, into integer tables and every operation on the probability path is exact:

- activations are integers on the grid 2^-ACT_BITS, clamped to 16 bits;
- weights are 16-bit integers with a power-of-two scale per output channel, so requantising an accumulator is a
  rounding right shift; biases are pre-scaled integers;
- sums of products are computed as float64 matrix products of integers whose every partial sum stays below
  2^53, hence exact in any summation order, on any BLAS or GPU (and never through a conv algorithm that
  transforms its inputs: convolutions are gathers + matmul);
- tanh, sigmoid and exp are lookup tables built at export time and stored with the weights;
- logits become integer frequencies (each >= 1, summing to 2^FREQ_BITS) by integer division only.

One step function, `level_frequencies`, gives the frequencies at any set of positions; the encoder calls it
with every position at once, the decoder once per wavefront t = j + 3 i, and both get identical integers.
"""
from __future__ import annotations

import bisect

from typing import Sequence

import torch
import torch.nn.functional as F

from .priors import KERNEL, WAVEFRONT_SLOPE, HierarchicalPrior, LevelPrior, StagePrior, causal_mask

ACT_BITS = 10
ACT_MAX = (1 << 15) - 1  # |activation| < 32 on the 2^-10 grid
WEIGHT_MAX = (1 << 15) - 1
GATE_HALF = 8 << ACT_BITS  # tanh / sigmoid tables cover [-8, 8]; beyond, both are saturated at this grid
GATE_DOMAIN = 2 * ACT_MAX  # a gate input is a clamped layer output plus a clamped conditioning term
EXP_MAX = 16 << ACT_BITS  # exp(-d) for d in [0, 16]; further below the maximum a code gets the floor frequency
EXP_BITS = 20
FREQ_BITS = 20
FREQ_TOTAL = 1 << FREQ_BITS
PAD = KERNEL // 2
# Positions per band of a 3x3 convolution (conditioning and stage contexts): bounds the (positions, 9C) float64
# columns to a few MB, which stay in cache.
BAND_POSITIONS = 2048
# The type-A taps of the masked kernel, as (row, column) offsets into a canvas padded by PAD on every side.
TAPS = causal_mask().nonzero().tolist()


# --- export: float prior -> integer tables -------------------------------------------------------------
def quantise_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """(O, I) float weight (+ bias) -> 16-bit integer weight, per-channel shift, bias in accumulator units."""
    weight = weight.detach().double().flatten(1)
    peak = weight.abs().amax(1).clamp(min=1e-12)
    shift = torch.floor(torch.log2(WEIGHT_MAX / peak)).clamp(1, 30).long()
    scale = torch.pow(2.0, shift.double())
    int_weight = torch.round(weight * scale[:, None]).clamp(-WEIGHT_MAX, WEIGHT_MAX)
    int_bias = torch.zeros(weight.shape[0], dtype=torch.float64) if bias is None else bias.detach().double()
    int_bias = torch.round(int_bias * scale * (1 << ACT_BITS)).clamp(-(1 << 50), 1 << 50)
    return {"weight": int_weight.to(torch.int16), "bias": int_bias.long(), "shift": shift.to(torch.int8)}


def quantise_table(table: torch.Tensor) -> torch.Tensor:
    return torch.round(table.detach().double() * (1 << ACT_BITS)).clamp(-ACT_MAX, ACT_MAX).to(torch.int16)


def lookup_tables() -> dict[str, torch.Tensor]:
    grid = torch.arange(-GATE_HALF, GATE_HALF + 1, dtype=torch.float64) / (1 << ACT_BITS)
    scale = 1 << ACT_BITS
    d = torch.arange(EXP_MAX + 1, dtype=torch.float64) / (1 << ACT_BITS)
    return {"tanh": torch.round(torch.tanh(grid) * scale).to(torch.int16),
            "sigmoid": torch.round(torch.sigmoid(grid) * scale).to(torch.int16),
            "exp": torch.round(torch.exp(-d) * (1 << EXP_BITS)).to(torch.int32)}


def export_level(prior: LevelPrior) -> dict[str, torch.Tensor]:
    """Integer tables for one level, keyed by flat names (a state dict of integer tensors)."""
    rows, cols = zip(*TAPS)
    masked_weight = prior.masked.weight[:, :, list(rows), list(cols)]  # (2C, C, taps): only the causal taps
    tables = {"embedding": quantise_table(prior.embedding.weight)}
    layers = {"masked": (masked_weight, prior.masked.bias), "head": (prior.head.weight, prior.head.bias)}
    for i, (inp, out) in enumerate(zip(prior.block_in, prior.block_out)):
        layers[f"block{i}.in"] = (inp.weight, inp.bias)
        layers[f"block{i}.out"] = (out.weight, out.bias)
    if prior.conditioning is not None:
        stack = prior.conditioning
        for u, embedding in enumerate(stack.embeddings):
            tables[f"cond.embedding{u}"] = quantise_table(embedding.weight)
        for i, (conv, out) in enumerate(zip(stack.convs, stack.outs)):
            layers[f"cond.block{i}.in"] = (conv.weight, conv.bias)
            layers[f"cond.block{i}.out"] = (out.weight, out.bias)
        for i, proj in enumerate(prior.cond_proj):
            weight = proj.weight
            if prior.subpixel:  # rows (unit, position) -> (position, unit): one position's rows are contiguous
                weight = weight.reshape(-1, 4, *weight.shape[1:]).transpose(0, 1).reshape(weight.shape)
            layers[f"cond.proj{i}"] = (weight, None)
    for name, (weight, bias) in layers.items():
        for key, value in quantise_linear(weight, bias).items():
            tables[f"{name}.{key}"] = value
    return tables


def export_stage(prior: StagePrior) -> dict[str, torch.Tensor]:
    """Integer tables for one refinement stage's (parallel) prior."""
    tables = {f"level_embedding{u}": quantise_table(e.weight) for u, e in enumerate(prior.level_embeddings)}
    tables.update({f"stage_embedding{e}": quantise_table(m.weight) for e, m in enumerate(prior.stage_embeddings)})
    layers = {}
    for i, (conv, out) in enumerate(zip(prior.convs, prior.outs)):
        layers[f"block{i}.in"] = (conv.weight, conv.bias)
        layers[f"block{i}.out"] = (out.weight, out.bias)
    for g in range(prior.groups):
        layers[f"group{g}.in"] = (prior.group_in[g].weight, prior.group_in[g].bias)
        layers[f"group{g}.out"] = (prior.group_out[g].weight, prior.group_out[g].bias)
        layers[f"head{g}"] = (prior.heads[g].weight, prior.heads[g].bias)
    for name, (weight, bias) in layers.items():
        for key, value in quantise_linear(weight, bias).items():
            tables[f"{name}.{key}"] = value
    return tables


def export_prior(prior: HierarchicalPrior) -> dict[str, torch.Tensor]:
    """All integer tables of the three levels and the refinement stages, plus the shared lookup tables."""
    tables = {f"lut.{k}": v for k, v in lookup_tables().items()}
    for level, level_prior in enumerate(prior.levels):
        tables.update({f"level{level}.{k}": v for k, v in export_level(level_prior).items()})
    for stage, stage_prior in enumerate(prior.stages):
        tables.update({f"stage{stage}.{k}": v for k, v in export_stage(stage_prior).items()})
    return tables


def _widen(table: torch.Tensor) -> torch.Tensor:
    """A table over [-GATE_HALF, GATE_HALF] extended to [-GATE_DOMAIN, GATE_DOMAIN] with its end values."""
    pad = GATE_DOMAIN - GATE_HALF
    return torch.cat([table[:1].expand(pad), table, table[-1:].expand(pad)])


# --- integer inference ---------------------------------------------------------------------------------
# Tensors below hold integers in float64: every value, product and partial sum is an integer below 2^53, so
# float64 represents them exactly and matmuls, additions and power-of-two scalings are exact; keeping one
# dtype avoids conversions on the hot path. Only table lookups go through int64 indices.
class _IntNetwork:
    """Integer layers rebuilt from the tables under one prefix: exact linear layers and the gate lookup."""

    def __init__(self, tables: dict[str, torch.Tensor], luts: dict[str, torch.Tensor], prefix: str,
                 channels: int, device: torch.device | str) -> None:
        self.device = torch.device(device)
        t = {k[len(prefix):]: v.to(self.device) for k, v in tables.items() if k.startswith(prefix)}
        self.tables = t
        self.channels = channels
        # Per layer: weight transposed (I, O), bias plus the rounding offset 2^(shift-1), and 2^-shift.
        self.layers = {}
        for key in t:
            if key.endswith(".weight"):
                name = key[:-len(".weight")]
                shift = t[f"{name}.shift"].double()
                self.layers[name] = (t[key].double().t().contiguous(),
                                     t[f"{name}.bias"].double() + torch.pow(2.0, shift - 1), torch.pow(2.0, -shift))
        # One table for the whole gate input: tanh for the first C channels, sigmoid for the last C, widened
        # from the stored [-8, 8] range to every value a gate input can take (a sum of two clamped terms) by
        # repeating the saturated ends, which is exactly what clamping the index would do.
        span = 2 * GATE_DOMAIN + 1
        self.gate_table = torch.cat([_widen(luts["tanh"]), _widen(luts["sigmoid"])]).to(self.device).double()
        self.gate_offset = torch.cat([torch.full((self.channels,), GATE_DOMAIN),
                                      torch.full((self.channels,), GATE_DOMAIN + span)]).to(self.device).double()
        self.exp = luts["exp"].to(self.device).double()
        self.temperature_milli = 1000  # 1.0: what coding uses; only sampling changes it

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """x (P, I) on the activation grid -> (P, O) on the activation grid: exact matmul, rounding shift."""
        weight, bias_and_half, inv_scale = self.layers[name]
        return torch.addmm(bias_and_half, x, weight).mul_(inv_scale).floor_().clamp_(-ACT_MAX, ACT_MAX)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """tanh(a) * sigmoid(b) on the activation grid, a and b the two channel halves of x."""
        # index_select on the flat index: about twice as fast as advanced indexing for these shapes.
        index = (x + self.gate_offset).int().view(-1)  # int32: converts about 3x faster than int64
        tanh, sigmoid = self.gate_table.index_select(0, index).view(x.shape).chunk(2, dim=-1)
        return (tanh * sigmoid).add_(1 << (ACT_BITS - 1)).mul_(1.0 / (1 << ACT_BITS)).floor_()

    def conv3x3_block(self, name: str, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """x + out(gate(conv3x3(x))) on an (h*w, C) grid; the 3x3 convolution is a gather + matmul. Band by
        band of rows, so that the (positions, 9C) columns stay in cache (every position's result is the same)."""
        layer = self._tap_major(f"{name}.in")
        padded = F.pad(x.view(h, w, -1), (0, 0, 1, 1, 1, 1))
        rows = max(1, BAND_POSITIONS // w)
        out = torch.empty_like(x)
        for top in range(0, h, rows):
            a, b = top * w, min(top + rows, h) * w
            pre = self.linear(layer, _columns3x3(padded[top:top + rows + 2]))
            out[a:b] = (x[a:b] + self.linear(f"{name}.out", self.gate(pre))).clamp_(-ACT_MAX, ACT_MAX)
        return out

    def _tap_major(self, name: str) -> str:
        """A 3x3 layer's weight with its input rows reordered from (channel, tap), as stored (F.unfold's order),
        to (tap, channel), the order of `_columns3x3` (made once). The products summed are the same integers,
        and integer sums below 2^53 do not depend on their order."""
        key = f"{name}:tap-major"
        if key not in self.layers:
            weight, bias_and_half, inv_scale = self.layers[name]
            inputs, outputs = weight.shape
            weight = weight.view(inputs // 9, 9, outputs).transpose(0, 1).reshape(inputs, outputs).contiguous()
            self.layers[key] = (weight, bias_and_half, inv_scale)
        return key


class IntLevelPrior(_IntNetwork):
    """One level's integer prior, rebuilt from its tables (no floating-point state at all)."""

    def __init__(self, tables: dict[str, torch.Tensor], luts: dict[str, torch.Tensor], level: int,
                 causal_blocks: int, cond_blocks: int, device: torch.device | str = "cpu", block: int = 0) -> None:
        prefix = f"level{level}."
        super().__init__(tables, luts, prefix, tables[f"{prefix}embedding"].shape[1], device)
        t = self.tables
        self.level = level
        self.block = block  # coding block (positions a side; 0: the whole tile), see LevelState
        self.causal_blocks = causal_blocks
        self.cond_blocks = cond_blocks if level > 0 else 0
        self.codebook_size = t["head.weight"].shape[0]
        self.embedding = t["embedding"].double()
        self.cond_embeddings = [t[f"cond.embedding{u}"].long() for u in range(level)]
        self.tap_rows = torch.tensor([r for r, _ in TAPS], device=self.device)
        self.tap_cols = torch.tensor([c for _, c in TAPS], device=self.device)
        # The masked convolution reads only code embeddings, so fold it into one table per tap:
        # tap_tables[tap, code] = W_tap @ embedding[code] (exact integers), with a zero row for code K, the
        # out-of-grid sentinel. The layer is then a sum of 12 lookups instead of a matmul per position.
        # Sub-position conditioning (PriorConfig.subpixel_cond): a projection per position of the 2x2 cell.
        self.cond_positions = 4 if level and t["cond.proj0.weight"].shape[0] == 8 * self.channels else 1
        weight, bias_and_half, inv_scale = self.layers.pop("masked")
        self.masked_scale = (bias_and_half, inv_scale)
        weight = weight.t().reshape(2 * self.channels, self.channels, len(TAPS))
        embedding = torch.cat([self.embedding, self.embedding.new_zeros(1, self.channels)])
        # Flattened to (taps * (K + 1), 2C) so that one embedding_bag sums the 12 rows without materialising them.
        self.tap_tables = torch.einsum("oct,kc->tko", weight, embedding).reshape(-1, 2 * self.channels).contiguous()
        self.tap_offsets = torch.arange(len(TAPS), device=self.device) * (self.codebook_size + 1)

    def conditioning(self, upper_codes: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        """Upper levels' codes -> per gated unit a (h_u * w_u * cond_positions, 2C) projection: one row per cell
        of the nearest upper level's grid, or with sub-position conditioning one per cell and position
        (row = cell * 4 + 2 * (row % 2) + column % 2 on this level's grid)."""
        if self.level == 0:
            return None
        h, w = upper_codes[-1].shape[-2:]
        x = 0
        for table, codes in zip(self.cond_embeddings, upper_codes):
            factor = h // codes.shape[-2]
            grid = codes.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
            x = x + table[grid]  # (h, w, C)
        x = x.clamp(-ACT_MAX, ACT_MAX).reshape(h * w, -1).double()
        for i in range(self.cond_blocks):
            x = self.conv3x3_block(f"cond.block{i}", x, h, w)
        return [self.linear(f"cond.proj{i}", x).view(h * w * self.cond_positions, -1)
                for i in range(1 + self.causal_blocks)]

    def frequencies(self, canvas: torch.Tensor, neighbours: torch.Tensor, upper: torch.Tensor,
                    cond: list[torch.Tensor] | None) -> torch.Tensor:
        """The step function: integer frequencies (P, K) for P positions of a LevelState.

        neighbours (P, taps) index the flat code canvas at each position's causal neighbours, upper (P,) the
        conditioning grid. Only canvas entries strictly before a position in wavefront order are read, so the
        result is the same whether the rest of the canvas is filled (encoder) or not yet decoded (decoder).
        """
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
            h = (h + self.linear(f"block{i}.out", self.gate(pre))).clamp_(-ACT_MAX, ACT_MAX)
        return logits_to_frequencies(self.linear("head", h), self.exp, self.temperature_milli)


class IntStagePrior(_IntNetwork):
    """One refinement stage's integer prior (fully parallel: a context pass, then one pass per group)."""

    def __init__(self, tables: dict[str, torch.Tensor], luts: dict[str, torch.Tensor], stage: int, groups: int,
                 blocks: int, device: torch.device | str = "cpu") -> None:
        prefix = f"stage{stage}."
        super().__init__(tables, luts, prefix, tables[f"{prefix}level_embedding0"].shape[1], device)
        t = self.tables
        self.stage, self.groups, self.blocks = stage, groups, blocks
        self.codebook_size = t["head0.weight"].shape[0]
        self.level_embeddings = [t[f"level_embedding{u}"].double() for u in range(3)]
        self.stage_embeddings = [t[f"stage_embedding{e}"].double() for e in range((stage + 1) * groups - 1)]

    def context(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        """One tile's [top, mid, bottom, earlier stages (G, h, w)...] -> context (h*w, C) on the bottom grid."""
        h, w = codes[2].shape[-2:]
        x = 0
        for table, grid in zip(self.level_embeddings, codes[:3]):
            factor = h // grid.shape[-2]
            x = x + table[grid.to(self.device).repeat_interleave(factor, -2).repeat_interleave(factor, -1)]
        for s, stage_codes in enumerate(codes[3:3 + self.stage]):
            for g in range(self.groups):
                x = x + self.stage_embeddings[s * self.groups + g][stage_codes[g].to(self.device)]
        x = x.reshape(h * w, -1).clamp_(-ACT_MAX, ACT_MAX)
        for i in range(self.blocks):
            x = self.conv3x3_block(f"block{i}", x, h, w)
        return x

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
        h = (context + self.linear(f"group{group}.out", self.gate(self.linear(f"group{group}.in", context)))
             ).clamp_(-ACT_MAX, ACT_MAX)
        return logits_to_frequencies(self.linear(f"head{group}", h), self.exp, self.temperature_milli)


class LevelState:
    """One level's code grids while they are coded: a flat canvas of codes (the sentinel K where none is known
    yet) and, for every position in wavefront order, the indices the step function reads.

    Several tiles are laid side by side on one canvas, separated by 2 PAD sentinel columns, so no causal
    neighbourhood reaches across a separator and each tile's frequencies are exactly those it gets alone. The
    wavefront index is local to each tile, so all tiles advance together: one step per wavefront of the largest
    tile, not of the whole row of tiles. Within a wavefront positions are grouped by tile, so each tile keeps its
    own range-coder stream, its symbols in the order (wavefront, row) whatever the other tiles are.

    A prior with a coding block (`prior.block` > 0, a model property) also cuts each tile into blocks of that
    many positions a side, laid out on the canvas like tiles: a block's causal context stops at its edges (the
    conditioning from the levels above still sees the whole tile), and every block of a tile advances in the
    same step, so a level takes block + 3 (block - 1) steps instead of w + 3 (h - 1). Positions of a tile are
    then ordered by (wavefront, block, row) in its stream.
    """

    def __init__(self, prior: IntLevelPrior, sizes: Sequence[tuple[int, int]],
                 upper_codes: Sequence[Sequence[torch.Tensor]]) -> None:
        device = prior.device
        self.prior, self.sizes = prior, [tuple(size) for size in sizes]
        block = getattr(prior, "block", 0)
        rows, cols, fronts, tiles, blocks, upper = [], [], [], [], [], []
        left, cond_base, height, max_blocks = 0, 0, 0, 1
        # Each gated unit's conditioning, for all tiles one after the other, filled in tile by tile. int16
        # holds it exactly (integers of at most 15 bits) in a quarter of float64's memory: on a 12-megapixel
        # image the bottom level's conditioning is the largest thing the decoder keeps.
        self.cond: list[torch.Tensor] | None = None
        positions = getattr(prior, "cond_positions", 1)
        cond_rows = sum((h // 2) * (w // 2) for h, w in self.sizes) * positions
        for tile, ((h, w), uppers) in enumerate(zip(self.sizes, upper_codes)):
            cond = prior.conditioning([u.to(device) for u in uppers])
            if cond is not None:
                if self.cond is None:
                    self.cond = [unit.new_empty((cond_rows, unit.shape[1]), dtype=torch.int16) for unit in cond]
                for target, unit in zip(self.cond, cond):
                    target[cond_base * positions:cond_base * positions + unit.shape[0]] = unit
            del cond
            r = torch.arange(h, device=device).repeat_interleave(w)
            c = torch.arange(w, device=device).repeat(h)
            # Conditioning lives on the 2x coarser grid (with sub-positions: 4 rows per cell).
            cell = cond_base + (r // 2) * (w // 2) + c // 2
            upper.append(cell * 4 + 2 * (r % 2) + c % 2 if positions == 4 else cell)
            cond_base += (h // 2) * (w // 2)
            bh, bw = (block, block) if block > 0 else (max(h, 1), max(w, 1))
            blocks_x = -(-w // bw)
            index = (r // bh) * blocks_x + c // bw  # the block of each position, in raster order
            local_r, local_c = r % bh, c % bw
            # Blocks side by side on the canvas (a full block's width, then the separator).
            rows.append(local_r)
            cols.append(local_c + left + index * (bw + 2 * PAD))
            fronts.append(local_c + WAVEFRONT_SLOPE * local_r)
            tiles.append(torch.full_like(r, tile))
            blocks.append(index)
            blocks_count = blocks_x * -(-h // bh)
            left += blocks_count * (bw + 2 * PAD)
            height = max(height, min(h, bh))
            max_blocks = max(max_blocks, blocks_count)
        rows, cols, t, tiles, blocks, upper = (torch.cat(x) for x in (rows, cols, fronts, tiles, blocks, upper))
        canvas_width = left + 2 * PAD
        self.canvas = torch.full(((height + 2 * PAD) * canvas_width,), prior.codebook_size, dtype=torch.int64,
                                 device=device)
        # Decoding order: by wavefront, then tile, then block, then row.
        self.order = torch.argsort(((t * len(self.sizes) + tiles) * max_blocks + blocks) * max(height, 1) + rows)
        rows, cols, self.tiles = rows[self.order], cols[self.order], tiles[self.order]
        self.blocks, self.upper = blocks[self.order], upper[self.order]
        self.centres = (rows + PAD) * canvas_width + cols + PAD
        self.neighbours = (rows[:, None] + prior.tap_rows) * canvas_width + cols[:, None] + prior.tap_cols
        t = t[self.order]
        self.fronts = _runs(t)  # [start, stop) of each wavefront
        # Each tile's run of positions, per wavefront (start), so the decoder can feed each tile's stream.
        self._segments: dict[int, list[tuple[int, int, int]]] = {}
        tile_of = self.tiles.tolist()
        for a, b in _runs(t * len(self.sizes) + self.tiles):
            self._segments.setdefault(_front_start(self.fronts, a), []).append((tile_of[a], a, b))

    def frequencies(self, start: int, stop: int) -> torch.Tensor:
        """Frequencies of positions start..stop-1 (in decoding order)."""
        return self.prior.frequencies(self.canvas, self.neighbours[start:stop], self.upper[start:stop], self.cond)

    def segments(self, start: int) -> list[tuple[int, int, int]]:
        """(tile, start, stop) of each tile's run of positions within the wavefront beginning at start."""
        return self._segments[start]

    def paint(self, start: int, stop: int, codes: torch.Tensor) -> None:
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


def _runs(values: torch.Tensor) -> list[tuple[int, int]]:
    """[start, stop) of each run of equal consecutive values."""
    if values.numel() == 0:
        return []
    edges = [0] + (torch.nonzero(values[1:] != values[:-1]).flatten() + 1).tolist() + [values.numel()]
    return list(zip(edges[:-1], edges[1:]))


def _front_start(fronts: list[tuple[int, int]], position: int) -> int:
    """Start of the wavefront that holds `position` (fronts sorted and contiguous)."""
    return fronts[bisect.bisect_right(fronts, (position, float("inf"))) - 1][0]


def logits_to_frequencies(logits: torch.Tensor, exp_table: torch.Tensor, temperature_milli: int = 1000) -> torch.Tensor:
    """Integer logits (P, K) -> integer frequencies (P, K), each >= 1, every row summing to FREQ_TOTAL.

    Integers are held in float64, like the layers' (exp_table too): every product and sum is below 2^53, and
    the floor of a correctly rounded float64 quotient a / b is the integer a // b whenever (a // b + 1) * b <
    2^53 (a quotient just below an integer n is at least 1/b below it, more than half an ulp of n, so it never
    rounds up to n); here a < 2^40. Float division vectorises; int64 division does not.

    temperature_milli (sampling only; coding always uses 1000) divides the logits by temperature / 1000, in
    integers: distances below the maximum become d * 1000 // temperature_milli."""
    k = logits.shape[1]
    logits = logits.double()
    # max gives the first index of the maximum on ties, as argmax does, in a third of amax + argmax's time.
    peak, most_probable = logits.max(1, keepdim=True)
    distances = peak - logits
    if temperature_milli != 1000:
        distances = distances.mul_(1000).div_(temperature_milli).floor_()
    index = distances.clamp_(max=EXP_MAX).int().view(-1)
    weights = exp_table.double().index_select(0, index).view(distances.shape)
    total = weights.sum(1, keepdim=True)
    freq = weights.mul_(FREQ_TOTAL - k).div_(total).floor_().add_(1)
    # What integer division leaves over goes to the most probable code (the first one on ties).
    return freq.scatter_add_(1, most_probable, FREQ_TOTAL - freq.sum(1, keepdim=True))


class IntPrior:
    """The three levels' and the refinement stages' integer priors, rebuilt from exported tables."""

    def __init__(self, causal_blocks: int, cond_blocks: int, tables: dict[str, torch.Tensor],
                 device: torch.device | str = "cpu", refine_stages: int = 0, refine_groups: int = 1,
                 stage_blocks: int = 0, coding_block: int = 0) -> None:
        luts = {k[len("lut."):]: v for k, v in tables.items() if k.startswith("lut.")}
        self.levels = [IntLevelPrior(tables, luts, level, causal_blocks, cond_blocks, device, coding_block)
                       for level in range(3)]
        self.stages = [IntStagePrior(tables, luts, s, refine_groups, stage_blocks, device)
                       for s in range(refine_stages)]

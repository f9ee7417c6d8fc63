"""Where each position of a level sits when it is coded: tiles and coding blocks side by side on one canvas, and
the wavefront order the positions are coded in (docs/DESIGN.md section 4). numpy only, so that a runtime without
torch (DESIGN section 8) lays levels out with the very same code as `intprior.LevelState`.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

import numpy as np

KERNEL = 5  # the causal (type-A) kernel's size; the wavefront below assumes its reach
REACH = KERNEL // 2  # columns to the right (and rows above) that the causal field reaches
WAVEFRONT_SLOPE = REACH + 1  # t = j + (R + 1) i
PAD = KERNEL // 2  # sentinel rows and columns around each tile or block on the canvas
MAX_BLOCK = 1 << 16  # coding block sides: beyond any tile's grid


def causal_taps(kernel: int = KERNEL) -> list[tuple[int, int]]:
    """(row, column) of each tap of the type-A mask, raster order: the rows above the centre, and the columns left
    of it in its row (the centre itself excluded). Offsets into a canvas padded by kernel // 2."""
    centre = kernel // 2
    return [(r, c) for r in range(kernel) for c in range(kernel) if r < centre or (r == centre and c < centre)]


TAPS = causal_taps()


def level_blocks(coding_block: int | Sequence) -> list[tuple[int, int]]:
    """PriorConfig.coding_block -> (rows, columns) of each level's coding block (top, mid, bottom), 0 for the
    tile's whole height or width. ValueError for anything else than the forms PriorConfig describes."""
    entries = list(coding_block) if isinstance(coding_block, (list, tuple)) else [coding_block] * 3
    if len(entries) != 3:
        raise ValueError(f"coding block: one entry per level (top, mid, bottom), not {len(entries)}")
    blocks = []
    for entry in entries:
        shape = list(entry) if isinstance(entry, (list, tuple)) else [entry, entry]
        if len(shape) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_BLOCK
                                      for n in shape):
            raise ValueError(f"coding block {entry!r}: positions a side, or rows and columns, from 0 to {MAX_BLOCK}")
        blocks.append((shape[0], shape[1]))
    return blocks


def block_shape(block: int | tuple[int, int], h: int, w: int) -> tuple[int, int]:
    """Rows and columns of a coding block in an h x w tile: `block` positions a side (0: the whole tile), or
    (rows, columns), 0 standing for the tile's whole height or width."""
    rows, cols = block if isinstance(block, tuple) else (block, block)
    return (rows or max(h, 1), cols or max(w, 1))


def runs(values: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of equal consecutive values."""
    if values.size == 0:
        return []
    edges = [0] + (np.flatnonzero(values[1:] != values[:-1]) + 1).tolist() + [values.size]
    return list(zip(edges[:-1], edges[1:]))


def front_start(fronts: list[tuple[int, int]], position: int) -> int:
    """Start of the wavefront that holds `position` (fronts sorted and contiguous)."""
    return fronts[bisect.bisect_right(fronts, (position, float("inf"))) - 1][0]


@dataclass
class Layout:
    """One level's positions for several tiles, in decoding order (all int64 arrays of one row per position).

    Several tiles are laid side by side on one canvas, separated by 2 PAD sentinel columns, so no causal
    neighbourhood reaches across a separator and each tile's frequencies are exactly those it gets alone. The
    wavefront index is local to each tile, so all tiles advance together: one step per wavefront of the largest
    tile. A coding block (rows, columns) also cuts each tile into blocks, laid out like tiles: a block's causal
    context stops at its edges, and every block of a tile advances in the same step. Positions are ordered by
    (wavefront, tile, block, row), so each tile keeps its own range-coder stream."""

    sizes: list[tuple[int, int]]
    canvas_size: int  # positions of the flat canvas (sentinels included)
    order: np.ndarray  # raster position (tiles one after the other) of each position in decoding order
    centres: np.ndarray  # canvas index of each position
    neighbours: np.ndarray  # (positions, taps) canvas indices of its causal taps
    upper: np.ndarray  # row of the conditioning (per cell of the 2x coarser grid, or per sub-position)
    tiles: np.ndarray  # tile of each position
    blocks: np.ndarray  # coding block of each position within its tile (raster order of blocks)
    fronts: list[tuple[int, int]]  # [start, stop) of each wavefront
    segments: dict[int, list[tuple[int, int, int]]]  # wavefront start -> (tile, start, stop) of each tile's run


def layout(sizes: Sequence[tuple[int, int]], block: int | tuple[int, int] = 0, cond_positions: int = 1,
           taps: Sequence[tuple[int, int]] = TAPS) -> Layout:
    """The decoding-order layout of tiles of the given (h, w) grid sizes (see `Layout`); `cond_positions` 4 for
    sub-position conditioning (4 rows per cell of the 2x coarser grid)."""
    sizes = [(int(h), int(w)) for h, w in sizes]
    rows, cols, fronts, tiles, blocks, upper = [], [], [], [], [], []
    left, cond_base, height, max_blocks = 0, 0, 0, 1
    for tile, (h, w) in enumerate(sizes):
        r = np.repeat(np.arange(h, dtype=np.int64), w)
        c = np.tile(np.arange(w, dtype=np.int64), h)
        # Conditioning lives on the 2x coarser grid (with sub-positions: 4 rows per cell).
        cell = cond_base + (r // 2) * (w // 2) + c // 2
        upper.append(cell * 4 + 2 * (r % 2) + c % 2 if cond_positions == 4 else cell)
        cond_base += (h // 2) * (w // 2)
        bh, bw = block_shape(block, h, w)
        blocks_x = -(-w // bw)
        index = (r // bh) * blocks_x + c // bw  # the block of each position, in raster order
        local_r, local_c = r % bh, c % bw
        # Blocks side by side on the canvas (a full block's width, then the separator).
        rows.append(local_r)
        cols.append(local_c + left + index * (bw + 2 * PAD))
        fronts.append(local_c + WAVEFRONT_SLOPE * local_r)
        tiles.append(np.full_like(r, tile))
        blocks.append(index)
        blocks_count = blocks_x * -(-h // bh)
        left += blocks_count * (bw + 2 * PAD)
        height = max(height, min(h, bh))
        max_blocks = max(max_blocks, blocks_count)
    empty = np.zeros(0, dtype=np.int64)
    rows, cols, t, tiles, blocks, upper = (np.concatenate(x) if x else empty
                                           for x in (rows, cols, fronts, tiles, blocks, upper))
    canvas_width = left + 2 * PAD
    # Decoding order: by wavefront, then tile, then block, then row (a unique key per position: any sort agrees).
    order = np.argsort(((t * len(sizes) + tiles) * max_blocks + blocks) * max(height, 1) + rows, kind="stable")
    rows, cols, tiles, blocks, upper, t = (x[order] for x in (rows, cols, tiles, blocks, upper, t))
    tap_rows = np.array([r for r, _ in taps], dtype=np.int64)
    tap_cols = np.array([c for _, c in taps], dtype=np.int64)
    centres = (rows + PAD) * canvas_width + cols + PAD
    neighbours = (rows[:, None] + tap_rows) * canvas_width + cols[:, None] + tap_cols
    fronts_list = runs(t)
    segments: dict[int, list[tuple[int, int, int]]] = {}
    tile_of = tiles.tolist()
    for a, b in runs(t * len(sizes) + tiles):
        segments.setdefault(front_start(fronts_list, a), []).append((tile_of[a], a, b))
    return Layout(sizes, (height + 2 * PAD) * canvas_width, order, centres, neighbours, upper, tiles, blocks,
                  fronts_list, segments)

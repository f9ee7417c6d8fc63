"""The wavefront layout (hvqcodec/wavefront.py): the causal taps the priors are trained with, and no torch."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from hvqcodec import wavefront
from hvqcodec.priors import causal_mask


def test_taps_are_the_causal_mask_of_the_priors():
    assert wavefront.TAPS == [tuple(tap) for tap in causal_mask().nonzero().tolist()]
    assert len(wavefront.TAPS) == 12


def test_layout_reads_only_what_is_decoded_before_and_keeps_tiles_and_blocks_apart():
    """Every causal tap reads a sentinel or a position of an earlier wavefront of the same tile and block."""
    laid = wavefront.layout([(7, 9), (4, 5)], block=(4, 6), cond_positions=4)
    owner = np.full(laid.canvas_size, -1)
    owner[laid.centres] = laid.tiles * 1000 + laid.blocks
    front_of = np.empty(len(laid.order), dtype=np.int64)
    for index, (start, stop) in enumerate(laid.fronts):
        front_of[start:stop] = index
    front_at = np.full(laid.canvas_size, -1)
    front_at[laid.centres] = front_of
    read_owner, read_front = owner[laid.neighbours], front_at[laid.neighbours]
    same = read_owner == owner[laid.centres][:, None]
    assert ((read_owner == -1) | same).all()
    assert (read_front[same] < front_of.repeat(12).reshape(-1, 12)[same]).all()
    assert sorted(laid.order.tolist()) == list(range(7 * 9 + 4 * 5))
    # Each wavefront's positions come tile by tile, and the segments say so.
    for start, stop in laid.fronts:
        pieces = laid.segments[start]
        assert pieces[0][1] == start and pieces[-1][2] == stop
        assert all(laid.tiles[a:b].tolist() == [tile] * (b - a) for tile, a, b in pieces)


def test_wavefront_imports_no_torch():
    script = "import sys, hvqcodec.wavefront; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"

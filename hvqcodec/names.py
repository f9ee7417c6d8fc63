"""Names of the code streams, coarse to fine (no torch import: the CLI's fast commands use them)."""
from __future__ import annotations

LEVEL_NAMES = ("top", "mid", "bottom")
LEVEL_STRIDES = (16, 8, 4)
PAD_MULTIPLE = 16  # images are padded to multiples of the coarsest stride


def stream_names(refine_stages: int) -> tuple[str, ...]:
    """top, mid, bottom, then refine1, refine2, ... (the bottom level's refinement stages)."""
    return LEVEL_NAMES + tuple(f"refine{s + 1}" for s in range(refine_stages))

"""The quality ladder: which operating points (streams coded, lambda of entropy-constrained selection) a model
offers, calibrated on training images, and the search for the quality that fits a size.

Calibration measures every candidate point's mean bpp and PSNR on a set of training images (never the
evaluation set), keeps the previews and the concave hull of the others (no point that a mix of two
neighbours beats), and spreads them over quality 1-100 by rank. Higher quality therefore means a larger file and a higher PSNR on the calibration set.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np

from PIL import Image

from .codec import Codec, CompressedImage, OperatingPoint, shared_files
from .filecoding import compress_to_bpp  # noqa: F401 (part of this module's interface)

LAMBDAS = (0.0, 0.003, 0.01, 0.03, 0.1)  # squared latent distance per bit, for the bottom codes
STAGE_LAMBDAS = (0.0, 0.001, 0.003, 0.01)  # added to each refinement stage's trained weight
# Above this bottom weight, points with stages are not tried: a stage refines the bottom, so spending its bits on
# top of coarse bottom codes does not pay (measured on hvq-ladder: 4 streams at 0.1 lose to 3 at 0).
MAX_BOTTOM_LAMBDA_WITH_STAGES = 0.01
RESIDUAL_QUALITY = 76  # the lowest quality that codes the residual layer, when the ladder has it
MAX_BPP_GAP = 1.25  # neighbouring ladder points further apart in bpp than this get a point between them
# The residual layer's quantiser steps (residual.py), each tried on a few bases: 3 streams (and a variable-rate
# model's coarser bottoms) and 4. More streams under a residual lose: on hvq-vr8's calibration crops 5 and 6
# streams + residual were 0.1-0.4 bpp larger than 3 + residual at the same PSNR, at every step from 6 to 64.
RESIDUAL_STEPS = (4, 5, 6, 7, 8, 9, 11, 13, 16, 20, 24, 28, 32, 40, 48, 56, 64, 72, 80, 96)
# The residual layer's frequency tilt (brightness, colour slope: residual.steps). On hvq-vr8's calibration
# crops (benchmarks/residual_tilt.py, docs/ladder-experiments.md) it trades a little PSNR for more MS-SSIM:
# against flat steps, (40, 80) saves 12.3% of the bits at equal MS-SSIM for 1.45% more at equal PSNR (hvq-vr11)
# and (80, 112) 15.5% for 5.2% (hvq-vr12); steeper tilts save more and cost more, and a steeper colour slope
# alone (56:160 against 56:112) costs MS-SSIM. The tilt makes every step coarser above the
# block mean, so steps 4 and 5 keep the top; 7, 9 and 13 close gaps of 1.3-1.45x in bpp between neighbouring
# steps at the top (hvq-vr11's first ladder).
RESIDUAL_TILT = (80, 112)


def candidate_points(num_streams: int, lambdas: Sequence[float] = LAMBDAS,
                     stage_lambdas: Sequence[float] = STAGE_LAMBDAS,
                     bottom_lambdas: Sequence[float] = (),
                     residual_steps: Sequence[int] = (),
                     residual_tilt: tuple[int, int] = RESIDUAL_TILT) -> list[OperatingPoint]:
    """Previews (1 and 2 streams) as they are; 3 streams with every bottom lambda; with refinement stages,
    every pair of bottom (up to MAX_BOTTOM_LAMBDA_WITH_STAGES) and stage weights. A variable-rate model's
    trained bottom weights (bottom_lambdas) add the same points with each of them as the codebook-usage weight
    (and no prior weight on top). Each of residual_steps adds the residual layer on top of 3 streams (nearest
    codes, and each trained bottom weight) and of 4 streams (nearest codes), with `residual_tilt`."""
    points = [OperatingPoint(1), OperatingPoint(2)]
    points += [OperatingPoint(3, lam) for lam in lambdas]
    points += [OperatingPoint(s, lam, stage_lam) for s in range(4, num_streams + 1) for lam in lambdas
               if lam <= MAX_BOTTOM_LAMBDA_WITH_STAGES for stage_lam in stage_lambdas]
    for bottom_lam in sorted(set(b for b in bottom_lambdas if b > 0)):
        points.append(OperatingPoint(3, 0.0, None, bottom_lam))
        points += [OperatingPoint(s, 0.0, stage_lam, bottom_lam) for s in range(4, num_streams + 1)
                   for stage_lam in stage_lambdas]
    bases = [OperatingPoint(3)] + [OperatingPoint(3, bottom_lam=b) for b in sorted(set(bottom_lambdas)) if b > 0]
    bases += [OperatingPoint(4, 0.0, 0.0)] if num_streams >= 4 else []
    points += [replace(base, residual_step=step, residual_tilt=tuple(residual_tilt))
               for step in residual_steps for base in bases]
    return points


def measure_points(codec: Codec, images: Sequence[np.ndarray], points: Sequence[OperatingPoint],
                   on_step: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Mean whole-file bpp and PSNR (8-bit RGB) of each point over the images, in the order given.

    Points that differ only in their stream count share one compression (`shared_files`; a prefix's header
    varints may differ from a file made alone by a byte or two). Pictures come from the coded grids: the
    decoder reads exactly these codes back (tested), so range decoding them again would only cost time; a
    residual point's picture is the one `compress` coded its residual against (no second decoder pass)."""
    from .container import prefix_size, read_header, unpack
    from .residual import add_residual_tiles

    bpps: list[list[float]] = [[] for _ in points]
    psnrs: list[list[float]] = [[] for _ in points]
    for largest, members in shared_files(list(points)):
        for rgb in images:
            result = codec.compress(Image.fromarray(rgb), point=largest)
            header = read_header(result.data)
            height, width = rgb.shape[:2]
            for index in members:
                streams = points[index].streams
                if largest.residual_step:  # a residual file serves itself only (its streams are all needed)
                    picture = result.picture.copy()  # the codes' picture compress coded the residual against
                    add_residual_tiles(picture, unpack(result.data).streams[-1], result.tile_size, header.tilted)
                else:
                    picture = codec.reconstruct([codes[:streams] for codes in result.codes], width, height,
                                                result.tile_size)
                size = len(result.data) if largest.residual_step else prefix_size(header, streams)
                bpps[index].append(8 * size / (height * width))
                psnrs[index].append(psnr_uint8(picture, rgb))
                if on_step is not None:
                    on_step()
    return [{**point.to_entry(), "bpp": float(np.mean(b)), "psnr": float(np.mean(q))}
            for point, b, q in zip(points, bpps, psnrs)]


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def build_ladder(measured: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The previews (1 and 2 streams) and the concave hull of the full-resolution points (rising bpp, rising
    PSNR, falling dB per extra bit), spread over quality 1-100; when the hull has residual points, the points
    before the first of them take qualities 1..RESIDUAL_QUALITY - 1 and the rest RESIDUAL_QUALITY..100, so
    the default quality stays a point of codes alone (fast) and the residual layer is the top quarter.

    A point under the hull is dropped even when nothing cheaper beats it: between its neighbours on the hull
    it buys less quality per bit than going on to the next one does (such a point was quality 54 of
    hvq-ladder's first ladder: +0.2 bpp for +0.07 dB), unless the hull would otherwise leave a gap of more
    than MAX_BPP_GAP in bpp (`_fill_gaps`)."""
    front = []
    for point in sorted(measured, key=lambda p: (p["bpp"], -p["psnr"])):
        if not front or point["psnr"] > front[-1]["psnr"]:
            front.append(point)
    previews = [p for p in front if p["streams"] < 3]
    hull: list[dict[str, Any]] = []
    for point in (p for p in front if p["streams"] >= 3):
        while len(hull) >= 2 and _not_above(hull[-2], hull[-1], point):
            hull.pop()
        hull.append(point)
    front = previews + _fill_gaps(hull, [p for p in front if p["streams"] >= 3])
    split = next((i for i, p in enumerate(front) if p.get("residual_step")), len(front))
    if split in (0, len(front)):
        qualities = _spread(1, 100, len(front))
    else:
        qualities = _spread(1, RESIDUAL_QUALITY - 1, split) + _spread(RESIDUAL_QUALITY, 100, len(front) - split)
    return [{"quality": quality,
             **{k: p[k] for k in ("streams", "lambda", "stage_lambda", "bottom_lambda", "residual_step",
                                  "residual_tilt") if k in p},
             "calibration_bpp": round(p["bpp"], 5), "calibration_psnr": round(p["psnr"], 3)}
            for quality, p in zip(qualities, front)]


def _fill_gaps(hull: list[dict[str, Any]], front: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The hull with residual points of the front put back where two neighbours, the upper one a residual
    point, are more than MAX_BPP_GAP apart in bpp (`_between`). A transform coder's PSNR is nearly straight in
    bpp at high rates, so a strict hull drops points there that are a hair under a long chord, leaving a ladder
    with one step from 1.4 to 2.8 bpp (hvq-vr11's first calibration). Points of codes alone are left as the
    hull has them."""
    out = hull[:1]
    for following in hull[1:]:
        out += _between(out[-1], following, front) + [following]
    return out


def _between(low: dict[str, Any], high: dict[str, Any], front: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Residual points of the front to put between low and high: none when they are close enough, else the
    one nearest the gap's middle in log bpp, and recursively those on each side of it."""
    if not high.get("residual_step") or high["bpp"] <= MAX_BPP_GAP * low["bpp"]:
        return []
    inside = [p for p in front if p.get("residual_step") and low["bpp"] < p["bpp"] < high["bpp"]
              and low["psnr"] < p["psnr"] < high["psnr"]]
    if not inside:
        return []
    middle = np.log(low["bpp"] * high["bpp"]) / 2
    point = min(inside, key=lambda p: abs(np.log(p["bpp"]) - middle))
    return _between(low, point, front) + [point] + _between(point, high, front)


def _spread(low: int, high: int, count: int) -> list[int]:
    """count qualities from low to high, evenly (one: low)."""
    return [low + round((high - low) * i / max(1, count - 1)) for i in range(count)]


def _not_above(a: dict[str, Any], b: dict[str, Any], c: dict[str, Any]) -> bool:
    """Whether b lies on or under the straight line from a to c in the (bpp, PSNR) plane."""
    return ((b["bpp"] - a["bpp"]) * (c["psnr"] - a["psnr"]) - (b["psnr"] - a["psnr"]) * (c["bpp"] - a["bpp"])) >= 0

"""Rate-distortion plots with Pillow's ImageDraw only: PSNR and MS-SSIM against bpp, one line per codec."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

from .fileio import atomic_write_bytes

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
CODEC_COLORS = {"jpeg": (214, 39, 40), "webp": (44, 160, 44), "avif": (148, 103, 189), "jpeg2000": (255, 127, 14)}
HVQ_COLORS = [(0, 0, 0), (31, 119, 180), (23, 190, 207)]
LEFT, TOP, PANEL_W, PANEL_H, GAP, RIGHT = 90, 70, 540, 420, 110, 40
AXIS_SPACE = 70  # below the panels: tick labels and the x-axis title
LEGEND_COLUMN, LEGEND_ROW = 300, 17
GRID, AXIS = (225, 225, 225), (40, 40, 40)


@dataclass
class Curve:
    """One line of the plot; quality lists may hold None (missing) and may be None (metric absent)."""

    label: str
    bpp: Sequence[float]
    psnr: Sequence[float | None] | None
    ms_ssim: Sequence[float | None] | None
    color: tuple[int, int, int]
    dashed: bool = False
    point_labels: Sequence[str] | None = None  # text beside each marker (hvq's levels)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _lighter(color: tuple[int, int, int], amount: float = 0.45) -> tuple[int, int, int]:
    return tuple(round(c + (255 - c) * amount) for c in color)


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 x 10^k) that cover [lo, hi]."""
    if not hi > lo:
        lo, hi = lo - max(abs(lo) * 0.01, 0.01), hi + max(abs(hi) * 0.01, 0.01)
    raw = (hi - lo) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _tick_text(value: float, step: float) -> str:
    decimals = next((d for d in range(7) if abs(round(step, d) - step) < 1e-9 * step), 6)
    return f"{value:.{decimals}f}"


def _valid(curve: Curve, metric: str, xmax: float = math.inf) -> list[tuple[float, float, str]]:
    """(bpp, quality, label) of the curve's finite points up to xmax, by rate."""
    qualities = getattr(curve, metric)
    if qualities is None:
        return []
    labels = curve.point_labels or [""] * len(curve.bpp)
    return sorted((b, q, t) for b, q, t in zip(curve.bpp, qualities, labels)
                  if q is not None and math.isfinite(q) and b is not None and 0 < b <= xmax)


def _dashed(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], fill, width: int, dash: float = 7,
            gap: float = 5) -> None:
    for (xa, ya), (xb, yb) in zip(points, points[1:]):
        length = math.hypot(xb - xa, yb - ya)
        position = 0.0
        while position < length:
            end = min(position + dash, length)
            draw.line([(xa + (xb - xa) * position / length, ya + (yb - ya) * position / length),
                       (xa + (xb - xa) * end / length, ya + (yb - ya) * end / length)], fill=fill, width=width)
            position += dash + gap


def _vertical_text(canvas: Image.Image, text: str, centre: tuple[int, int], font) -> None:
    box = ImageDraw.Draw(canvas).textbbox((0, 0), text, font=font)
    label = Image.new("RGBA", (box[2] - box[0] + 4, box[3] - box[1] + 6), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((2 - box[0], 2 - box[1]), text, font=font, fill=AXIS)
    label = label.rotate(90, expand=True)
    canvas.paste(label, (centre[0] - label.width // 2, centre[1] - label.height // 2), label)


def _draw_panel(canvas: Image.Image, origin: tuple[int, int], curves: list[Curve], metric: str, xmax: float,
                title: str, ylabel: str) -> None:
    draw = ImageDraw.Draw(canvas)
    font, small = _font(14), _font(12)
    x0, y0 = origin
    draw.text((x0 + PANEL_W // 2, y0 - 12), title, font=font, fill=AXIS, anchor="ms")
    visible = [q for c in curves for _, q, _ in _valid(c, metric, xmax)]
    panel = Image.new("RGB", (PANEL_W, PANEL_H), "white")
    pen = ImageDraw.Draw(panel)
    xticks = nice_ticks(0, xmax)
    if visible:
        yticks = nice_ticks(min(visible), max(visible))
    else:
        yticks = [0.0, 1.0]
        pen.text((PANEL_W // 2, PANEL_H // 2), "no data (MS-SSIM needs images of 176 px or more)",
                 font=font, fill=AXIS, anchor="mm")
    (xlo, xhi), (ylo, yhi) = (xticks[0], xticks[-1]), (yticks[0], yticks[-1])

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (x - xlo) / (xhi - xlo) * (PANEL_W - 1), (1 - (y - ylo) / (yhi - ylo)) * (PANEL_H - 1)

    for x in xticks:
        pen.line([to_px(x, ylo), to_px(x, yhi)], fill=GRID)
    for y in yticks:
        pen.line([to_px(xlo, y), to_px(xhi, y)], fill=GRID)
    # The panel image clips lines that leave the axes; references first, so the measured curves lie on top.
    for curve in sorted(curves, key=lambda c: not c.dashed):
        points = [(to_px(b, q), label) for b, q, label in _valid(curve, metric)]
        line = [p for p, _ in points]
        if curve.dashed:
            _dashed(pen, line, curve.color, 2)
            continue
        if len(line) > 1:
            pen.line(line, fill=curve.color, width=3 if curve.point_labels else 2, joint="curve")
        radius = 5 if curve.point_labels else 3
        for (x, y), label in points:
            pen.ellipse([x - radius, y - radius, x + radius, y + radius], fill=curve.color, outline="white")
            if label:
                pen.text((x + 7, y - 7), label, font=small, fill=curve.color, anchor="lb")
    canvas.paste(panel, origin)
    draw.rectangle([x0, y0, x0 + PANEL_W - 1, y0 + PANEL_H - 1], outline=AXIS)
    for x in xticks:
        px = x0 + to_px(x, ylo)[0]
        draw.line([(px, y0 + PANEL_H), (px, y0 + PANEL_H + 5)], fill=AXIS)
        draw.text((px, y0 + PANEL_H + 8), _tick_text(x, xticks[1] - xticks[0]), font=small, fill=AXIS, anchor="mt")
    for y in yticks:
        py = y0 + to_px(xlo, y)[1]
        draw.line([(x0 - 5, py), (x0, py)], fill=AXIS)
        draw.text((x0 - 8, py), _tick_text(y, yticks[1] - yticks[0]), font=small, fill=AXIS, anchor="rm")
    draw.text((x0 + PANEL_W // 2, y0 + PANEL_H + 30), "bits per pixel (bpp)", font=font, fill=AXIS, anchor="mt")
    _vertical_text(canvas, ylabel, (x0 - 62, y0 + PANEL_H // 2), font)


def _x_limit(curves: list[Curve]) -> float:
    """Up to 2 bpp (where the codecs differ), further if hvq's own points need it; less if all data ends sooner."""
    rates = [b for c in curves for m in ("psnr", "ms_ssim") for b, _, _ in _valid(c, m)]
    own = [b for c in curves if c.point_labels for m in ("psnr", "ms_ssim") for b, _, _ in _valid(c, m)]
    if not rates:
        return 1.0
    return min(max(rates), max([2.0, *(1.15 * b for b in own)]))


def _legend(canvas: Image.Image, curves: list[Curve], top: int) -> None:
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    columns = max(1, (canvas.width - LEFT) // LEGEND_COLUMN)
    for index, curve in enumerate(curves):
        x = LEFT + (index % columns) * LEGEND_COLUMN
        y = top + (index // columns) * LEGEND_ROW + LEGEND_ROW // 2
        if curve.dashed:
            _dashed(draw, [(x, y), (x + 30, y)], curve.color, 2)
        else:
            draw.line([(x, y), (x + 30, y)], fill=curve.color, width=3 if curve.point_labels else 2)
            draw.ellipse([x + 11, y - 4, x + 19, y + 4], fill=curve.color)
        label = curve.label if len(curve.label) <= 40 else curve.label[:39] + "…"
        draw.text((x + 38, y), label, font=font, fill=AXIS, anchor="lm")


def draw_rd_plot(curves: list[Curve], title: str, subtitle: str = "") -> Image.Image:
    """Two panels (PSNR and MS-SSIM against bpp) and a legend below them."""
    xmax = _x_limit(curves)
    width = LEFT + 2 * PANEL_W + GAP + RIGHT
    columns = max(1, (width - LEFT) // LEGEND_COLUMN)
    legend_top = TOP + PANEL_H + AXIS_SPACE
    height = legend_top + math.ceil(len(curves) / columns) * LEGEND_ROW + 20
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((width // 2, 12), title, font=_font(18), fill=AXIS, anchor="mt")
    if subtitle:
        draw.text((width // 2, 34), subtitle, font=_font(12), fill=AXIS, anchor="mt")
    _draw_panel(canvas, (LEFT, TOP), curves, "psnr", xmax, "PSNR (RGB)", "PSNR (dB)")
    _draw_panel(canvas, (LEFT + PANEL_W + GAP, TOP), curves, "ms_ssim", xmax, "MS-SSIM (RGB)", "MS-SSIM")
    _legend(canvas, curves, legend_top)
    return canvas


def curves_from_results(results: dict[str, Any], references: Sequence[Any] = ()) -> list[Curve]:
    """The lossy codecs of a bench result as solid lines, hvq models with their levels marked, references
    (objects with name, bpp, psnr, ms_ssim) dashed in lighter colours."""
    curves = []
    hvq_index = 0
    for name, entry in results["codecs"].items():
        if entry.get("lossless"):
            continue
        points = entry["points"]
        bpp, psnr, score = ([p[k] for p in points] for k in ("bpp", "psnr", "ms_ssim"))
        if name.startswith("hvq:"):
            curves.append(Curve(name, bpp, psnr, score, HVQ_COLORS[hvq_index % len(HVQ_COLORS)],
                                point_labels=["R" if p.get("residual") else f"L{p['levels']}" for p in points]))
            hvq_index += 1
        else:
            curves.append(Curve(f"{name} (Pillow)", bpp, psnr, score, CODEC_COLORS.get(name, PALETTE[7])))
    for index, ref in enumerate(references):
        curves.append(Curve(ref.name, ref.bpp, ref.psnr, ref.ms_ssim, _lighter(PALETTE[index % len(PALETTE)]),
                            dashed=True))
    return curves


def save_rd_plot(results: dict[str, Any], path: str | Path, references: Sequence[Any] = ()) -> None:
    """Draw the RD plot of a bench result and write it as a PNG (atomically)."""
    lossless = [f"{name}: lossless, {entry['points'][0]['bpp']:.2f} bpp" for name, entry in results["codecs"].items()
                if entry.get("lossless")]
    has_hvq = any(name.startswith("hvq:") for name in results["codecs"])
    residual = any(p.get("residual") for name, entry in results["codecs"].items() if name.startswith("hvq:")
                   for p in entry["points"])
    previews = ["hvq: L1-L3 mark the progressive levels" + (", R the residual layer" if residual else "")
                ] if has_hvq else []
    subtitle = "; ".join([*previews, *lossless])
    image = draw_rd_plot(curves_from_results(results, references),
                         f"Rate-distortion, mean over {len(results['images'])} image(s)", subtitle)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())

"""`hvqcodec bench`: hvqcodec against the classic codecs that Pillow ships, on the same images, measured alike.

Every codec gets the same 8-bit RGB pixels, is encoded to bytes in memory and decoded back; bpp counts the whole
file (headers included), PSNR and MS-SSIM are taken on the decoded 8-bit RGB. hvq gives one point per
progressive level: the bytes a user keeps for that preview (header + the first L level streams + trailer).
Comparisons: Bjontegaard delta rates, the rate each classic codec needs for hvq's PSNR, hvq's size against PNG.
"""
from __future__ import annotations

import io
import json
import math
import multiprocessing
import statistics
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, features
from rich.console import Console
from rich.table import Table

from . import container
from .codec import OperatingPoint, shared_files
from .data import find_images, load_rgb
from .errors import HvqError
from .evaluate import write_report
from .metrics import MS_SSIM_MIN_SIDE, ms_ssim, psnr

QUALITIES = (5, 10, 20, 30, 40, 50, 60, 75, 85, 95)
JPEG2000_RATIOS = (200, 100, 60, 40, 24, 16, 10)  # compression ratios, i.e. 24 / bpp
# One 768x512 AVIF encode at speed 6 takes ~0.3 s on one core: the 240 Kodak encodes x 3 repeats stay well
# inside the 15-minute budget of a full run on 2 cores (speed 4 is ~3x slower for a few % of rate).
AVIF_SPEED = 6
HVQ_LEVELS = (1, 2, 3)
REPORT_NAME = "hvqcodec-bench"


@dataclass(frozen=True)
class ClassicCodec:
    """A codec reached through Pillow: its format, the Pillow feature it needs and the settings swept."""

    name: str
    pil_format: str
    feature: str
    settings: tuple[int, ...]
    lossless: bool = False

    def save_options(self, setting: int) -> dict[str, Any]:
        if self.name == "png":
            return {"optimize": True}
        if self.name == "jpeg":
            return {"quality": setting, "optimize": True}
        if self.name == "webp":
            return {"quality": setting, "method": 6}
        if self.name == "avif":
            # One encoder thread, like the other codecs: speeds compare, and --jobs does the parallelism.
            return {"quality": setting, "speed": AVIF_SPEED, "max_threads": 1}
        return {"quality_mode": "rates", "quality_layers": [setting], "irreversible": True}  # jpeg2000

    def label(self, setting: int) -> str:
        if self.lossless:
            return "lossless"
        return f"ratio {setting}:1" if self.name == "jpeg2000" else f"quality {setting}"


CLASSIC_CODECS = {c.name: c for c in (
    ClassicCodec("png", "PNG", "zlib", (0,), lossless=True),
    ClassicCodec("jpeg", "JPEG", "jpg", QUALITIES),
    ClassicCodec("webp", "WEBP", "webp", QUALITIES),
    ClassicCodec("avif", "AVIF", "avif", QUALITIES),
    ClassicCodec("jpeg2000", "JPEG2000", "jpg_2000", JPEG2000_RATIOS),
)}
CODEC_NAMES = ("hvq", *CLASSIC_CODECS)


# ---------------------------------------------------------------------------------------------------- planning

@dataclass
class BenchPlan:
    """What to run: images (with display names), codec names and hvq models, plus notes on what was skipped."""

    images: list[Path]
    names: list[str]
    classic: list[str]
    models: list[str]
    device: str = "auto"
    jobs: int = 1
    repeats: int = 3
    notes: list[str] = field(default_factory=list)
    reused: dict[str, Any] = field(default_factory=dict)  # classic codec -> its entry from an earlier run
    reused_from: str = ""
    effort: int = 0  # hvq encoder refinement steps


def reuse_classic(plan: BenchPlan, results_path: str | Path) -> None:
    """Take the plan's classic codecs that an earlier bench JSON of the same images holds from it instead of
    measuring them again (they do not change between hvq models); hvq is always measured. HvqError if the file
    is not a bench result or was made on other images."""
    try:
        earlier = json.loads(Path(results_path).read_text())
        codecs, images = earlier["results"]["codecs"], [i["name"] for i in earlier["results"]["images"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HvqError(f"{results_path}: not a readable hvqcodec bench result ({exc})") from None
    if images != plan.names:
        raise HvqError(f"{results_path} was measured on other images ({len(images)}) than these ({len(plan.names)})")
    plan.reused = {name: codecs[name] for name in plan.classic if name in codecs}
    plan.classic = [name for name in plan.classic if name not in plan.reused]
    plan.reused_from = str(results_path)


def default_images_dir() -> Path:
    """The three built-in sample photos (see sample_images/README.md)."""
    return Path(str(resources.files("hvqcodec") / "sample_images"))


def plan_bench(folder: str | Path | None, codecs: Sequence[str] | None, model: str | None = None,
               device: str = "auto", jobs: int = 1, repeats: int = 3) -> BenchPlan:
    """Resolve images, codecs and models. `codecs` None means all: then missing ones are skipped with a note;
    codecs asked for explicitly but unavailable raise HvqError."""
    from .zoo import available_models

    root = Path(folder) if folder is not None else default_images_dir()
    images = find_images(root)
    explicit = codecs is not None
    wanted = list(codecs) if explicit else list(CODEC_NAMES)
    unknown = [c for c in wanted if c not in CODEC_NAMES]
    if unknown:
        raise HvqError(f"unknown codec(s) {', '.join(unknown)} (valid: {', '.join(CODEC_NAMES)})")
    notes: list[str] = []
    classic = []
    for name in (c for c in wanted if c != "hvq"):
        codec = CLASSIC_CODECS[name]
        if features.check(codec.feature):
            classic.append(name)
        elif explicit:
            raise HvqError(f"codec {name}: this Pillow has no {codec.pil_format} support")
        else:
            notes.append(f"{name} skipped: this Pillow has no {codec.pil_format} support")
    models: list[str] = []
    if model and "hvq" not in wanted:
        notes.append(f"--model {model} ignored: hvq is not among the codecs")
    if "hvq" in wanted:
        installed = {n for n, e in available_models().items() if e.get("priors")}
        if model == "all":
            models = sorted(installed)
        elif model:
            models = [m.strip() for m in model.split(",") if m.strip()]
            missing = [m for m in models if m not in installed]
            if missing:
                known = ", ".join(sorted(installed)) or "none"
                raise HvqError(f"hvq model(s) {', '.join(missing)} not installed with priors (available: {known})")
        else:
            from .zoo import default_model
            default = default_model()
            models = [default] if default in installed else sorted(installed)[:1]
        if not models:
            message = "no installed hvq model has trained priors, so none can compress"
            if explicit:
                raise HvqError(message)
            notes.append(f"hvq skipped: {message}")
    return BenchPlan(images, [p.relative_to(root).as_posix() for p in images], classic, models, device, jobs,
                     repeats, notes)


# ------------------------------------------------------------------------------------------------- measurement

def image_quality(reference: np.ndarray, test: np.ndarray) -> tuple[float, float | None]:
    """PSNR (dB, 8-bit RGB) and MS-SSIM of two (H, W, 3) uint8 images; MS-SSIM is None when an image side is
    under MS_SSIM_MIN_SIDE."""
    a = torch.tensor(reference).permute(2, 0, 1)[None].double()  # a copy: decoded arrays may be read-only
    b = torch.tensor(test).permute(2, 0, 1)[None].double()
    score = float(ms_ssim(a / 255, b / 255)[0]) if min(reference.shape[:2]) >= MS_SSIM_MIN_SIDE else None
    return psnr(a, b, peak=255.0), score


def _timed(func: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """The result of func and the median of `repeats` wall-clock timings."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def _point(setting: str, nbytes: int, original: np.ndarray, decoded: np.ndarray, encode_seconds: float,
           decode_seconds: float) -> dict[str, Any]:
    height, width = original.shape[:2]
    quality, score = image_quality(original, decoded)
    return {"setting": setting, "bytes": nbytes, "bpp": 8 * nbytes / (width * height), "psnr": quality,
            "ms_ssim": score, "encode_seconds": encode_seconds, "decode_seconds": decode_seconds}


def _encode(image: Image.Image, codec: ClassicCodec, setting: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, codec.pil_format, **codec.save_options(setting))
    return buffer.getvalue()


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _single_threaded_decoders() -> None:
    """libavif decodes with every core by default; one thread, like the other decoders (see AVIF's encode)."""
    try:
        from PIL import AvifImagePlugin
        AvifImagePlugin.DEFAULT_MAX_THREADS = 1
    except ImportError:
        pass


def measure_classic(codec_name: str, rgb: np.ndarray, repeats: int = 3) -> list[dict[str, Any]]:
    """One point per setting of a classic codec on one (H, W, 3) uint8 image."""
    _single_threaded_decoders()
    codec = CLASSIC_CODECS[codec_name]
    image = Image.fromarray(rgb)
    points = []
    for setting in codec.settings:
        data, encode_seconds = _timed(lambda: _encode(image, codec, setting), repeats)
        decoded, decode_seconds = _timed(lambda: _decode(data), repeats)
        points.append(_point(codec.label(setting), len(data), rgb, decoded, encode_seconds, decode_seconds))
    return points


def _classic_task(task: tuple[str, int, str, int]) -> tuple[str, int, list[dict[str, Any]]]:
    """Pool worker (module level, so spawn can pickle it): (codec, image index, path, repeats) -> points."""
    codec_name, index, path, repeats = task
    return codec_name, index, measure_classic(codec_name, load_rgb(path), repeats)


def _init_worker() -> None:
    torch.set_num_threads(1)  # MS-SSIM in N workers must not start N x cores threads


def _run_classic(plan: BenchPlan) -> Iterator[tuple[str, int, list[dict[str, Any]]]]:
    """Yield (codec, image index, points) as they finish, over a spawn pool when plan.jobs > 1."""
    tasks = [(c, i, str(p), plan.repeats) for c in plan.classic for i, p in enumerate(plan.images)]
    if plan.jobs == 1 or len(tasks) < 2:
        yield from map(_classic_task, tasks)
        return
    with multiprocessing.get_context("spawn").Pool(min(plan.jobs, len(tasks)), initializer=_init_worker) as pool:
        yield from pool.imap_unordered(_classic_task, tasks)


def preview_bytes(data: bytes, levels: int) -> int:
    """Size of the .hvq file that holds only the first `levels` levels: header + those streams + trailer."""
    return container.prefix_size(container.read_header(data), levels)


def measure_hvq(codec: Any, rgb: np.ndarray, effort: int = 0,
                decoder_for: Callable[[bytes], Any] | None = None) -> list[dict[str, Any]]:
    """One point per operating point (single-run timings): compressed by `codec`, decompressed by
    `decoder_for(data)` (default: `codec`).

    A model with a calibrated quality ladder gives one point per ladder entry. Entries that share their rate
    weights share one compression (`shared_files`: the file of an entry with fewer streams is a prefix of it,
    counted by preview_bytes), except with encoder effort, which refines for the streams a point codes: then
    every entry is compressed on its own, as `compress -q` would. A model without a ladder gives one point per
    progressive level, as before.
    """
    if not codec.calibrated:
        entries = [{"quality": None, "streams": s, "lambda": 0.0} for s in HVQ_LEVELS]
    else:
        entries = codec.ladder
    points = []
    operating_points = [OperatingPoint.from_entry(e) for e in entries]
    files = (shared_files(operating_points) if effort == 0 or not codec.calibrated
             else [(point, [index]) for index, point in enumerate(operating_points)])
    for largest, members in files:
        start = time.perf_counter()
        data = codec.compress(Image.fromarray(rgb), point=largest, effort=effort).data
        encode_seconds = time.perf_counter() - start
        for index in members:
            entry, streams = entries[index], operating_points[index].file_streams
            start = time.perf_counter()
            decoded = (codec if decoder_for is None else decoder_for(data)).decompress(data, levels=streams).image
            decode_seconds = time.perf_counter() - start
            label = f"q {entry['quality']}" if entry["quality"] is not None else f"levels {entry['streams']}"
            point = _point(label, preview_bytes(data, streams), rgb, np.asarray(decoded.convert("RGB")),
                           encode_seconds, decode_seconds)
            points.append({"levels": streams, "quality": entry["quality"], **point,
                           **({"residual": True} if operating_points[index].residual_step else {})})
    return sorted(points, key=lambda p: (p["quality"] or 0, p["levels"]))


# ------------------------------------------------------------------------------------------------------ running

def run_bench(plan: BenchPlan, console: Console | None = None) -> dict[str, Any]:
    """Measure everything in the plan (with a progress bar on `console`) and return the results."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import api

    start = time.perf_counter()
    # What `hvqcodec compress` and `decompress` run: the runtime without torch where it is preferred (the CPU), else
    # the torch codec. Loaded first: errors before the long run.
    hvq = {f"hvq:{m}": api.coder_for(m, plan.device, plan.effort) for m in plan.models}
    per_image: dict[str, list] = {name: [None] * len(plan.images) for name in [*plan.classic, *hvq]}
    progress = Progress(TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True, disable=console is None)
    with progress:
        task = progress.add_task("benchmarking", total=len(per_image) * len(plan.images))
        for name, index, points in _run_classic(plan):
            per_image[name][index] = points
            progress.update(task, advance=1, description=f"{name} {plan.names[index]}")
        for name, codec in hvq.items():
            for index, path in enumerate(plan.images):
                progress.update(task, description=f"{name} {plan.names[index]}")
                per_image[name][index] = measure_hvq(codec, load_rgb(path), plan.effort,
                                                     lambda data: api.decoder_for(data, plan.device))
                progress.advance(task)
    codecs = {**plan.reused, **{name: _codec_entry(name, plan.names, images) for name, images in per_image.items()}}
    bd, same, png = compare(codecs)
    sizes = [load_rgb(p).shape[1::-1] for p in plan.images]  # as measured: EXIF orientation applied
    return {
        "codecs": codecs, "bd_rate": bd, "same_quality": same, "png_fraction": png,
        "images": [{"name": n, "width": w, "height": h} for n, (w, h) in zip(plan.names, sizes)],
        "settings": {"repeats": plan.repeats, "jobs": plan.jobs,
                     "device": str(next(iter(hvq.values())).device) if hvq else plan.device, "avif_speed": AVIF_SPEED,
                     "hvq_timing": "one compress and one decode per level and image (no repeats), by what the "
                                   "command line runs",
                     "hvq_coders": {name: type(coder).__name__ for name, coder in hvq.items()},
                     "hvq_effort": plan.effort,
                     "torch_threads": torch.get_num_threads(), "pillow": Image.__version__,
                     **({"reused": {"from": plan.reused_from, "codecs": sorted(plan.reused)}} if plan.reused else {})},
        "notes": plan.notes,
        "seconds_total": time.perf_counter() - start,
    }


def _codec_entry(name: str, image_names: list[str], per_image: list[list[dict]]) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    if name.startswith("hvq:"):
        entry["model"] = name[4:]
    else:
        entry["lossless"] = CLASSIC_CODECS[name].lossless
    entry["points"] = mean_points(per_image)
    entry["per_image"] = [{"image": n, "points": points} for n, points in zip(image_names, per_image)]
    return entry


def _mean(values: list[float | None]) -> float | None:
    """Mean, or None when any value is missing (an MS-SSIM of a small image): no mean over a subset."""
    return None if any(v is None for v in values) else sum(values) / len(values)


def mean_points(per_image: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per setting, the means over images of bpp, PSNR, MS-SSIM and the timings."""
    means = []
    for settings in zip(*per_image):
        point = {k: v for k, v in settings[0].items() if k in ("setting", "levels", "quality", "residual")}
        for key in ("bpp", "psnr", "ms_ssim", "encode_seconds", "decode_seconds"):
            point[key] = _mean([p[key] for p in settings])
        means.append(point)
    return means


# -------------------------------------------------------------------------------------------------- comparisons

def _clean_curve(rates: Sequence[float], qualities: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """(quality, log rate) sorted by quality; missing or infinite values dropped, equal qualities averaged."""
    pairs = [(q, math.log(r)) for r, q in zip(rates, qualities)
             if q is not None and math.isfinite(q) and r is not None and r > 0]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    q, log_rate = np.array(pairs).T
    unique, inverse = np.unique(q, return_inverse=True)
    return unique, np.bincount(inverse, log_rate) / np.bincount(inverse)


def _cubic_integral(q: np.ndarray, log_rate: np.ndarray, lo: float, hi: float, centre: float) -> float:
    primitive = np.polyint(np.polyfit(q - centre, log_rate, 3))
    return float(np.polyval(primitive, hi - centre) - np.polyval(primitive, lo - centre))


def _linear_integral(q: np.ndarray, log_rate: np.ndarray, lo: float, hi: float) -> float:
    # Exact for a piecewise-linear function: trapezoids between all its knots inside [lo, hi].
    knots = np.unique(np.concatenate([[lo, hi], q[(q > lo) & (q < hi)]]))
    values = np.interp(knots, q, log_rate)
    return float(((values[1:] + values[:-1]) / 2 * np.diff(knots)).sum())


def bd_rate(anchor_rates: Sequence[float], anchor_qualities: Sequence[float | None], test_rates: Sequence[float],
            test_qualities: Sequence[float | None], method: str | None = None) -> tuple[float | None, str]:
    """Bjontegaard delta rate of `test` against `anchor` in percent (negative: test needs fewer bits).

    log(rate) is modelled as a function of quality for each curve (a cubic fit, or piecewise-linear
    interpolation when either curve has fewer than 4 points), both are integrated over the overlapping quality
    interval, and the mean log-rate difference d gives 100 * (exp(d) - 1). Returns (None, method) when the
    quality ranges do not overlap. `method` forces "cubic" or "piecewise-linear".
    """
    qa, la = _clean_curve(anchor_rates, anchor_qualities)
    qt, lt = _clean_curve(test_rates, test_qualities)
    method = method or ("cubic" if min(len(qa), len(qt)) >= 4 else "piecewise-linear")
    if len(qa) < 2 or len(qt) < 2:
        return None, method
    lo, hi = max(qa[0], qt[0]), min(qa[-1], qt[-1])
    if lo >= hi:
        return None, method
    if method == "cubic":
        centre = (lo + hi) / 2  # the same fit, better conditioned than powers of ~40 dB
        diff = _cubic_integral(qt, lt, lo, hi, centre) - _cubic_integral(qa, la, lo, hi, centre)
    elif method == "piecewise-linear":
        diff = _linear_integral(qt, lt, lo, hi) - _linear_integral(qa, la, lo, hi)
    else:
        raise ValueError(f"unknown BD-rate method {method!r}")
    return 100 * math.expm1(diff / (hi - lo)), method


def rate_at_quality(rates: Sequence[float], qualities: Sequence[float | None], target: float) -> float | None:
    """The rate a curve needs for `target` quality: linear interpolation in (quality, log rate); None outside."""
    q, log_rate = _clean_curve(rates, qualities)
    if not len(q) or not q[0] <= target <= q[-1]:
        return None
    return math.exp(float(np.interp(target, q, log_rate)))


def ms_ssim_db(value: float | None) -> float | None:
    """MS-SSIM as -10 log10(1 - MS-SSIM): the usual scale for fits and BD-rates (inf for identical images)."""
    if value is None:
        return None
    return math.inf if value >= 1 else -10 * math.log10(1 - value)


def _curve(points: list[dict[str, Any]], metric: str) -> tuple[list[float], list[float | None]]:
    qualities = [p["psnr"] if metric == "psnr" else ms_ssim_db(p["ms_ssim"]) for p in points]
    return [p["bpp"] for p in points], qualities


def compare(codecs: dict[str, dict[str, Any]]) -> tuple[dict, dict, dict]:
    """BD-rates, same-PSNR rates and PNG fractions of every hvq model against every classic codec."""
    hvq = [n for n in codecs if n.startswith("hvq:")]
    lossy = [n for n in codecs if not n.startswith("hvq:") and not codecs[n]["lossless"]]
    bd: dict[str, dict] = {}
    same: dict[str, list] = {}
    png: dict[str, list] = {}
    for name in hvq:
        points = codecs[name]["points"]
        bd[name] = {}
        for anchor in lossy:
            bd[name][anchor] = {}
            for metric in ("psnr", "ms_ssim"):
                value, method = bd_rate(*_curve(codecs[anchor]["points"], metric), *_curve(points, metric))
                bd[name][anchor][metric] = {"bd_rate": value, "method": method}
        same[name] = []
        for point in points:
            needs = {}
            for anchor in lossy:
                rate = rate_at_quality(*_curve(codecs[anchor]["points"], "psnr"), point["psnr"])
                needs[anchor] = {"bpp": rate, "ratio": point["bpp"] / rate if rate else None}
            same[name].append({"levels": point["levels"], "quality": point.get("quality"), "bpp": point["bpp"],
                               "psnr": point["psnr"], "codecs": needs})
        if "png" in codecs:
            png_bpp = codecs["png"]["points"][0]["bpp"]
            png[name] = [{"levels": p["levels"], "bpp": p["bpp"], "png_bpp": png_bpp, "fraction": p["bpp"] / png_bpp}
                         for p in points]
    return bd, same, png


# ------------------------------------------------------------------------------------------------------- output

def json_safe(value: Any) -> Any:
    """Infinite or NaN floats (the PSNR of a lossless point) become null: JSON has no infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, results: dict[str, Any]) -> dict[str, Any]:
    """The results as a CompressAI-shaped report ({name, description, results})."""
    description = ("hvqcodec and Pillow's classic codecs on the same 8-bit RGB images: bpp of whole files, "
                   "RGB PSNR (null: lossless), 5-scale MS-SSIM (null: image side under 176 px), median timings; "
                   "BD-rates of hvq's level curve against each lossy codec (MS-SSIM in dB)")
    return write_report(Path(path), REPORT_NAME, description, json_safe(results))


def _fmt(value: float | None, spec: str, none: str = "-") -> str:
    if value is None:
        return none
    return "inf" if math.isinf(value) else format(value, spec)


def print_report(results: dict[str, Any], console: Console) -> None:
    """Rich tables: every codec point, the BD-rates, and the same-PSNR rates."""
    table = Table(title=f"mean over {len(results['images'])} image(s)")
    for column in ("codec", "setting", "bpp", "PSNR", "MS-SSIM", "encode ms", "decode ms"):
        table.add_column(column, justify="left" if column in ("codec", "setting") else "right")
    for name, entry in results["codecs"].items():
        for p in entry["points"]:
            table.add_row(name, p["setting"], _fmt(p["bpp"], ".4f"), _fmt(p["psnr"], ".2f"), _fmt(p["ms_ssim"], ".4f"),
                          _fmt(1000 * p["encode_seconds"], ".1f"), _fmt(1000 * p["decode_seconds"], ".1f"))
        table.add_section()
    console.print(table)
    if results["bd_rate"]:
        table = Table(title="BD-rate of hvq against each codec (negative: hvq needs fewer bits)")
        for column in ("hvq", "against", "BD-rate PSNR", "BD-rate MS-SSIM", "method"):
            table.add_column(column)
        for name, anchors in results["bd_rate"].items():
            for anchor, metrics in anchors.items():
                table.add_row(name, anchor, _fmt(metrics["psnr"]["bd_rate"], "+.1f", "no overlap"),
                              _fmt(metrics["ms_ssim"]["bd_rate"], "+.1f", "no overlap"), metrics["psnr"]["method"])
        console.print(table)
    for name, rows in results["same_quality"].items():
        anchors = list(rows[0]["codecs"]) if rows else []
        table = Table(title=f"{name}: bpp each codec needs for the same PSNR (x = hvq bpp / codec bpp; "
                            "-: outside the codec's range)")
        for column in ("quality", "streams", "bpp", "PSNR", *anchors, *(["of PNG"] if name in results["png_fraction"] else [])):
            table.add_column(column, justify="right")
        for i, row in enumerate(rows):
            cells = [f"{c['bpp']:.3f} (x{c['ratio']:.2f})" if c["bpp"] else "-" for c in row["codecs"].values()]
            if name in results["png_fraction"]:
                cells.append(f"{100 * results['png_fraction'][name][i]['fraction']:.1f}%")
            table.add_row("-" if row.get("quality") is None else str(row["quality"]), str(row["levels"]),
                          _fmt(row["bpp"], ".4f"), _fmt(row["psnr"], ".2f"), *cells)
        console.print(table)
    for note in results["notes"]:
        console.print(f"note: {note}")


# --------------------------------------------------------------------------------------------------- references

@dataclass
class Reference:
    """A published RD curve in CompressAI's JSON format; either quality list may be absent."""

    name: str
    bpp: list[float]
    psnr: list[float] | None
    ms_ssim: list[float] | None


def _read_reference(path: Path) -> Reference | str:
    """A Reference, or why the file is skipped."""
    try:
        report = json.loads(path.read_text())
        results = report["results"]
        bpp = [float(v) for v in results["bpp"]]
    except (OSError, ValueError, KeyError, TypeError):
        return "not a CompressAI results file"

    def series(key: str) -> list[float] | None:
        values = results.get(key)
        return [float(v) for v in values] if isinstance(values, list) and len(values) == len(bpp) else None

    decibels = series("ms-ssim-db-rgb")
    score = series("ms-ssim-rgb") or (decibels and [1 - 10 ** (-v / 10) for v in decibels])
    quality = series("psnr-rgb")
    if quality is None and score is None:
        return "no psnr-rgb or ms-ssim-rgb list as long as its bpp list"
    return Reference(str(report.get("name") or path.stem), bpp, quality, score)


def load_references(folder: str | Path) -> tuple[list[Reference], list[str]]:
    """Every *.json in folder with results.bpp and psnr-rgb and/or ms-ssim-rgb (ms-ssim-db-rgb is converted);
    returns the curves and notes about the files skipped."""
    root = Path(folder)
    if not root.is_dir():
        raise HvqError(f"{folder}: not a folder")
    curves, notes = [], []
    for path in sorted(root.glob("*.json")):
        read = _read_reference(path)
        if isinstance(read, str):
            notes.append(f"reference {path.name} skipped: {read}")
        else:
            curves.append((path.stem, read))
    names = [c.name for _, c in curves]
    for stem, curve in curves:  # several files may share a name (CPU and CUDA runs): use their file names
        if names.count(curve.name) > 1:
            curve.name = stem
    return [c for _, c in curves], notes

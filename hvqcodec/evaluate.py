"""Evaluation of an autoencoder on a folder of images: quality per level, code usage, raw rate, speed."""
from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from .autoencoder import LEVEL_NAMES, LEVEL_STRIDES, HierarchicalVQVAE
from .data import load_rgb, to_tensor
from .fileio import atomic_write_bytes
from .metrics import MS_SSIM_MIN_SIDE, ms_ssim, psnr


def quantise_pixels(image: torch.Tensor) -> torch.Tensor:
    """What a codec writes out: [0, 1] floats rounded to 8 bits (returned on the [0, 1] scale)."""
    return (image.clamp(0, 1) * 255).round() / 255


@torch.no_grad()
def evaluate_autoencoder(model: HierarchicalVQVAE, paths: list[Path],
                         on_image: Callable[[Path], None] | None = None) -> dict:
    """Per-image and mean metrics of the full reconstruction (3 levels) and the two previews (1 and 2 levels).

    Quality is measured on the 8-bit output, as a user would see it. Time is encode + full decode of one
    image (after one warm-up image), the median over images.
    """
    model.eval()
    config = model.config
    counts = [torch.zeros(k, dtype=torch.int64) for k in config.codebook_sizes]
    per_image, seconds = [], []
    for index, path in enumerate(paths):
        image = to_tensor(load_rgb(path))
        h, w = image.shape[-2:]
        start = time.perf_counter()
        codes = model.encode(image)
        full = model.decode(codes)[..., :h, :w]
        elapsed = time.perf_counter() - start
        if index > 0 or len(paths) == 1:
            seconds.append(elapsed)
        record = {"image": path.name, "width": w, "height": h, "seconds": elapsed,
                  "raw_index_bpp": sum(g.numel() * math.log2(k) for g, k in zip(codes, config.codebook_sizes)) / (h * w)}
        for levels in (3, 2, 1):
            recon = full if levels == 3 else model.decode(codes[:levels])[..., :h, :w]
            recon = quantise_pixels(recon)
            record[f"psnr_{levels}"] = psnr(recon, image)
            if min(h, w) >= MS_SSIM_MIN_SIDE:
                record[f"ms_ssim_{levels}"] = float(ms_ssim(recon, image)[0])
        for i, grid in enumerate(codes):
            counts[i] += torch.bincount(grid.flatten(), minlength=counts[i].numel())
        per_image.append(record)
        if on_image is not None:
            on_image(path)

    def mean(key: str) -> float | None:
        values = [r[key] for r in per_image if key in r]
        return sum(values) / len(values) if values else None

    usage = {}
    for name, count, k in zip(LEVEL_NAMES, counts, config.codebook_sizes):
        p = count[count > 0].double() / count.sum()
        usage[name] = {"codebook_size": k, "used": int((count > 0).sum()),
                       "dead_fraction": float((count == 0).sum()) / k,
                       "perplexity": float(torch.exp(-(p * p.log()).sum())),
                       "index_bits": math.log2(k), "stride": LEVEL_STRIDES[LEVEL_NAMES.index(name)]}
    return {
        "images": len(per_image),
        "psnr": {"full": mean("psnr_3"), "top_mid": mean("psnr_2"), "top": mean("psnr_1")},
        "ms_ssim": {"full": mean("ms_ssim_3"), "top_mid": mean("ms_ssim_2"), "top": mean("ms_ssim_1")},
        "raw_index_bpp": mean("raw_index_bpp"),
        "raw_index_bpp_nominal": config.raw_index_bpp(),
        "code_usage": usage,
        "parameters": sum(p.numel() for p in model.parameters()),
        "encode_decode_seconds_median": statistics.median(seconds) if seconds else None,
        "threads": torch.get_num_threads(),
        "per_image": per_image,
    }


def write_report(path: Path, name: str, description: str, results: dict) -> dict:
    """Benchmark results as JSON in CompressAI's {name, description, results} shape, plus the command line."""
    report = {"name": name, "description": description,
              "command": " ".join(["python"] + [Path(sys.argv[0]).as_posix()] + sys.argv[1:]), "results": results}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(report, indent=2) + "\n").encode())
    return report

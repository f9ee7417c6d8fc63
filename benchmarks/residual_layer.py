"""The residual layer on top of a model's points: bits, PSNR and the margin over JPEG on the same images.

For each image and each base quality, the file of that quality is made and decoded; then the residual layer
(hvqcodec/residual.py) is coded on top of the decoded picture at each step and decoded again. Printed: mean
whole-file bpp (base file + residual stream), mean RGB PSNR, and JPEG's PSNR at that bpp on the same images
(interpolated in log-bpp from a bench JSON's per-image JPEG points), with the residual's median encode and
decode times.

    python benchmarks/residual_layer.py --images 8 --qualities 59 --steps 24,32,40,56,72
    python benchmarks/residual_layer.py --images 8 --qualities 59 --steps 24,40,72 --rounding 0.25
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image

from hvqcodec import residual
from hvqcodec.codec import load_codec

ROOT = Path(__file__).resolve().parent.parent


def jpeg_curve(bench_json: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean bpp and PSNR of each JPEG setting over the named images of a bench run."""
    per_image = {entry["image"]: entry["points"]
                 for entry in json.loads(bench_json.read_text())["results"]["codecs"]["jpeg"]["per_image"]}
    rows = [per_image[name] for name in names]
    bpp = np.array([np.mean([row[i]["bpp"] for row in rows]) for i in range(len(rows[0]))])
    psnr = np.array([np.mean([row[i]["psnr"] for row in rows]) for i in range(len(rows[0]))])
    return bpp, psnr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/datasets/kodak")
    parser.add_argument("--images", type=int, default=8, help="The first N images, sorted by name.")
    parser.add_argument("--model", default="hvq-vr8")
    parser.add_argument("--qualities", default="59", help="Base qualities, comma-separated.")
    parser.add_argument("--steps", default="24,32,40,56,72", help="Residual steps, comma-separated (0: none).")
    parser.add_argument("--rounding", type=float, default=residual.ROUNDING, help="The quantiser's rounding offset.")
    parser.add_argument("--jpeg", type=Path, default=ROOT / "benchmarks/results/bench-kodak.json",
                        help="A bench JSON with per-image JPEG points of the same images.")
    parser.add_argument("--json", type=Path, help="Write the results here.")
    args = parser.parse_args()
    residual.ROUNDING = args.rounding
    paths = sorted(args.data.glob("*.png"))[:args.images]
    codec = load_codec(args.model, "cpu")
    jpeg_bpp, jpeg_psnr = jpeg_curve(args.jpeg, [p.name for p in paths])
    qualities = [int(q) for q in args.qualities.split(",")]
    steps = [int(s) for s in args.steps.split(",")]
    measured: dict[tuple[int, int], list[tuple[float, float]]] = {}
    times = []
    for path in paths:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        height, width = rgb.shape[:2]
        for quality in qualities:
            base = codec.compress(rgb, quality=quality)
            picture = np.asarray(codec.decompress(base.data).image.convert("RGB"))
            for step in steps:
                size, decoded = len(base.data), picture
                if step:
                    start = time.perf_counter()
                    encoded = residual.encode_residual(rgb, picture, step)
                    middle = time.perf_counter()
                    decoded = residual.decode_residual(encoded.data, picture)
                    times.append((middle - start, time.perf_counter() - middle))
                    size += len(encoded.data)
                mse = np.mean((decoded.astype(np.float64) - rgb) ** 2)
                measured.setdefault((quality, step), []).append((8 * size / (height * width),
                                                                 10 * math.log10(255 ** 2 / mse)))
        print(path.name, flush=True)
    rows = []
    print(f"{args.model}, {len(paths)} images, rounding {residual.ROUNDING}")
    for (quality, step), values in sorted(measured.items()):
        bpp, psnr = np.mean(values, axis=0)
        jpeg = float(np.interp(np.log(bpp), np.log(jpeg_bpp), jpeg_psnr))
        rows.append({"quality": quality, "step": step, "bpp": float(bpp), "psnr": float(psnr), "jpeg_psnr": jpeg})
        print(f"quality {quality:3d} step {step:3d}: {bpp:.4f} bpp {psnr:.3f} dB; JPEG at that bpp {jpeg:.3f} dB "
              f"({psnr - jpeg:+.3f})")
    if times:
        encode, decode = np.median(np.array(times), axis=0)
        print(f"residual layer alone, median per image: encode {encode:.3f} s, decode {decode:.3f} s")
    if args.json:
        args.json.write_text(json.dumps({"name": "residual-layer", "description": __doc__.split("\n")[0],
                                         "command": "python benchmarks/residual_layer.py " + " ".join(
                                             f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                             if k not in ("json", "data", "jpeg")),
                                         "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""The residual layer's frequency tilt against flat steps: BD-rate in PSNR and in MS-SSIM, on training crops.

For each image (by default the model's own ladder calibration crops: training data, never Kodak) the picture
of `--base` streams is made once (float32, as under a residual layer); then the residual layer is coded on
top of it at each step, with each tilt (brightness slope, colour slope: residual.steps), and decoded. Printed
per tilt: mean whole-file bpp, RGB PSNR and MS-SSIM at each step, and the BD-rate against the flat steps
(negative: fewer bits for the same quality).

`--shrink` also decodes each stream with its nonzero coefficients put back at (|q| - delta) steps instead of |q|
(the same bits; a decoder-side reconstruction offset, which the format does not have): PSNR and MS-SSIM per
delta show whether one would pay.

    python benchmarks/residual_tilt.py --tilts 0:0,18:18,18:48,24:64,32:32,32:64,48:96
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from hvqcodec import residual
from hvqcodec.bench import bd_rate, ms_ssim_db
from hvqcodec.codec import OperatingPoint, load_codec
from hvqcodec.container import _varint
from hvqcodec.data import center_crops, load_rgb
from hvqcodec.metrics import ms_ssim
from hvqcodec.zoo import read_manifest


def _quality(decoded: np.ndarray, rgb: np.ndarray) -> tuple[float, float]:
    mse = np.mean((decoded.astype(np.float64) - rgb) ** 2)
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].double() / 255  # noqa: E731
    return float(10 * np.log10(255 ** 2 / mse)), float(ms_ssim(as_tensor(decoded), as_tensor(rgb))[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="hvq-vr10")
    parser.add_argument("--calibration-of", default="hvq-vr10",
                        help="Take the images and crop size of this model's ladder calibration.")
    parser.add_argument("--base", type=int, default=3, help="Streams of codes under the residual.")
    parser.add_argument("--steps", default="12,16,24,32,40,56,72,96")
    parser.add_argument("--tilts", default="0:0,18:18,18:48,24:64,32:32,32:64,48:48,48:96",
                        help="brightness:colour slopes, comma-separated; the first is the reference.")
    parser.add_argument("--shrink", default="",
                        help="Reconstruction offsets to try, comma-separated (e.g. -0.07,0.05,0.1).")
    parser.add_argument("--json", type=Path, help="Write the results here.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    calibration = read_manifest()["models"][args.calibration_of]["ladder_calibration"]
    crops = center_crops([load_rgb(p) for p in calibration["images"]], calibration["crop"])
    images = [(c.permute(1, 2, 0) * 255).round().byte().numpy() for c in crops]
    codec = load_codec(args.model, "cpu")
    bases = []
    for rgb in images:
        result = codec.compress(rgb, point=OperatingPoint(args.base))
        bases.append((len(result.data), codec.reconstruct(result.codes, rgb.shape[1], rgb.shape[0],
                                                          result.tile_size, float32=True)))
    steps = [int(s) for s in args.steps.split(",")]
    tilts = [tuple(int(v) for v in t.split(":")) for t in args.tilts.split(",")]
    shrinks = [float(d) for d in args.shrink.split(",") if d]
    rows = []
    for tilt in tilts:
        points = []
        for step in steps:
            values, shrunk = [], {delta: [] for delta in shrinks}
            for (base_bytes, picture), rgb in zip(bases, images):
                encoded = residual.encode_residual(rgb, picture, step, tilt)
                decoded = residual.decode_residual(encoded.data, picture, tilted=residual.is_tilted(tilt))
                # The file grows by the stream, its length (a varint) and the residual flag byte.
                size = base_bytes + len(encoded.data) + len(_varint(len(encoded.data))) + 1
                values.append((8 * size / rgb.shape[0] / rgb.shape[1],
                               *_quality(decoded, rgb)))
                if shrinks:
                    signed = residual.quantise(rgb, picture, step, tilt)  # what the stream holds (tested)
                    for delta in shrinks:
                        moved = np.sign(signed) * np.maximum(np.abs(signed) - delta, 0)
                        shrunk[delta].append(_quality(residual.add_residual(picture, moved, step, tilt), rgb))
            bpp, psnr, msssim = np.mean(values, axis=0)
            points.append({"step": step, "bpp": float(bpp), "psnr": float(psnr), "ms_ssim": float(msssim),
                           **({"shrink": {str(delta): dict(zip(("psnr", "ms_ssim"), map(float, np.mean(q, axis=0))))
                                          for delta, q in shrunk.items()}} if shrinks else {})})
            for delta, q in shrunk.items():
                change = np.mean(q, axis=0) - (psnr, msssim)
                print(f"  tilt {tilt[0]}:{tilt[1]} step {step}: delta {delta:+.2f}: PSNR {change[0]:+.3f} dB, "
                      f"MS-SSIM {change[1]:+.5f}", flush=True)
        key = f"{tilt[0]}:{tilt[1]}"
        reference = rows[0]["points"] if rows else points
        bd = {metric: bd_rate([p["bpp"] for p in reference], [quality(p) for p in reference],
                              [p["bpp"] for p in points], [quality(p) for p in points])[0]
              for metric, quality in (("psnr", lambda p: p["psnr"]), ("ms_ssim", lambda p: ms_ssim_db(p["ms_ssim"])))}
        rows.append({"tilt": list(tilt), "points": points, "bd_rate_vs_first": bd})
        print(f"tilt {key:>6}: BD-rate PSNR {bd['psnr']:+6.2f}%  MS-SSIM {bd['ms_ssim']:+6.2f}%   " +
              " ".join(f"{p['bpp']:.3f}/{p['psnr']:.2f}/{p['ms_ssim']:.4f}" for p in points), flush=True)
    if args.json:
        command = "python benchmarks/residual_tilt.py " + " ".join(
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "json" and v != "")
        args.json.write_text(json.dumps({"name": "residual-tilt", "description": __doc__.split("\n")[0],
                                         "command": command, "images": calibration["images"],
                                         "crop": calibration["crop"], "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

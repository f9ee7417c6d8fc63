"""The autoencoder's decoder in float32 and with its bulk in bfloat16 (`HierarchicalVQVAE.decode(...,
low_precision=True)`, what `auto` picks where bf16 is native): mean RGB PSNR over Kodak at a few qualities, the
worst image's change, the largest pixel difference, and median decoder times, interleaved in one process. The
codes (and so the files) are the same either way.

    python benchmarks/decoder_precision.py [--model hvq-vr5] [--qualities 34,75,100] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hvqcodec.codec import load_codec
from hvqcodec.device import native_bf16

KODAK = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "kodak"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--qualities", default="34,75,100")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = load_codec(args.model, "cpu", "float32")
    paths = sorted(KODAK.glob("*.png"))[:args.images]
    results = {"model": codec.name, "native_bf16": native_bf16(torch.device("cpu")), "threads": args.threads,
               "qualities": {}}
    print(f"{codec.name}, {len(paths)} Kodak images, {args.threads} threads, native bf16: {results['native_bf16']}")
    for quality in map(int, args.qualities.split(",")):
        psnr = {False: [], True: []}
        seconds = {False: [], True: []}
        largest = 0
        for path in paths:
            rgb = np.asarray(Image.open(path).convert("RGB"))
            codes = [c[None] for c in codec.encode_codes(rgb, codec.operating_point(quality))]
            original = torch.from_numpy(rgb.copy()).permute(2, 0, 1).double()
            pictures = {}
            for low in (False, True):
                start = time.perf_counter()
                with torch.no_grad():
                    out = codec.autoencoder.decode(codes, low_precision=low)[0]
                seconds[low].append(time.perf_counter() - start)
                pictures[low] = out.clamp(0, 1).mul(255).round()[:, :rgb.shape[0], :rgb.shape[1]].double()
                psnr[low].append(10 * np.log10(255 ** 2 / ((pictures[low] - original) ** 2).mean().item()))
            largest = max(largest, int((pictures[False] - pictures[True]).abs().max()))
        change = np.array(psnr[True]) - np.array(psnr[False])
        row = {"psnr_float32": float(np.mean(psnr[False])), "psnr_bfloat16": float(np.mean(psnr[True])),
               "psnr_change": float(change.mean()), "worst_image_change": float(change.min()),
               "largest_pixel_difference": largest,
               "decoder_seconds_float32": statistics.median(seconds[False]),
               "decoder_seconds_bfloat16": statistics.median(seconds[True])}
        results["qualities"][quality] = row
        print(f"quality {quality:>3}: PSNR {row['psnr_float32']:.4f} -> {row['psnr_bfloat16']:.4f} dB "
              f"({row['psnr_change']:+.4f}, worst image {row['worst_image_change']:+.4f}), largest pixel "
              f"difference {largest}, decoder {row['decoder_seconds_float32']:.3f} -> "
              f"{row['decoder_seconds_bfloat16']:.3f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "name": "decoder-precision", "description": __doc__.split("\n\n")[0],
            "command": "python benchmarks/decoder_precision.py " + " ".join(
                f"--{k} {v}" for k, v in vars(args).items() if v is not None and k != "json"),
            "results": results}, indent=1))


if __name__ == "__main__":
    main()

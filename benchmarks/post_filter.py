"""The post-filter's correction in float32 and in bfloat16 (what the bfloat16 decoder runs since hvqcodec 0.18):
mean RGB PSNR over Kodak at a few qualities, the worst image's change, the largest pixel difference and the
filter's median time each way, on the same decoder output (the rest of the decoder in bfloat16, as `auto`
runs it where bf16 is native), interleaved in one process.

    python benchmarks/post_filter.py [--model hvq-vr12] [--qualities 26,51,75] [--json out.json]
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
    parser.add_argument("--qualities", default="26,51,75")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = load_codec(args.model, "cpu", "float32")
    post_filter = codec.autoencoder.post_filter
    if post_filter is None:
        raise SystemExit(f"{codec.name} has no post-filter")
    inputs: list[torch.Tensor] = []
    post_filter.register_forward_pre_hook(lambda module, a: inputs.append(a[0]))
    paths = sorted(KODAK.glob("*.png"))[:args.images]
    results = {"model": codec.name, "native_bf16": native_bf16(torch.device("cpu")), "threads": args.threads,
               "qualities": {}}
    print(f"{codec.name}, {len(paths)} Kodak images, {args.threads} threads, native bf16: {results['native_bf16']}")
    for quality in map(int, args.qualities.split(",")):
        psnr = {False: [], True: []}
        seconds = {False: [], True: []}
        largest, changed = 0, []
        for path in paths:
            rgb = np.asarray(Image.open(path).convert("RGB"))
            codes = [c[None] for c in codec.encode_codes(rgb, codec.operating_point(quality))]
            original = torch.from_numpy(rgb.copy()).permute(2, 0, 1).double()
            inputs.clear()
            with torch.no_grad():
                codec.autoencoder.decode(codes, low_precision=True)
                unfiltered = inputs[0]
                pictures = {}
                for low in (False, True):
                    start = time.perf_counter()
                    out = post_filter(unfiltered, low)[0]
                    seconds[low].append(time.perf_counter() - start)
                    pictures[low] = out.clamp(0, 1).mul(255).round()[:, :rgb.shape[0], :rgb.shape[1]].double()
                    psnr[low].append(10 * np.log10(255 ** 2 / ((pictures[low] - original) ** 2).mean().item()))
            largest = max(largest, int((pictures[False] - pictures[True]).abs().max()))
            changed.append(float((pictures[False] != pictures[True]).double().mean()))
        change = np.array(psnr[True]) - np.array(psnr[False])
        row = {"psnr_float32_filter": float(np.mean(psnr[False])), "psnr_bfloat16_filter": float(np.mean(psnr[True])),
               "psnr_change": float(change.mean()), "worst_image_change": float(change.min()),
               "largest_pixel_difference": largest, "values_changed": float(np.mean(changed)),
               "filter_seconds_float32": statistics.median(seconds[False]),
               "filter_seconds_bfloat16": statistics.median(seconds[True])}
        results["qualities"][quality] = row
        print(f"quality {quality:>3}: PSNR {row['psnr_float32_filter']:.4f} -> {row['psnr_bfloat16_filter']:.4f} dB "
              f"({row['psnr_change']:+.4f}, worst image {row['worst_image_change']:+.4f}), largest pixel difference "
              f"{largest}, {100 * row['values_changed']:.2f}% of values changed, filter "
              f"{row['filter_seconds_float32']:.3f} -> {row['filter_seconds_bfloat16']:.3f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "name": "post-filter-precision", "description": __doc__.split("\n\n")[0],
            "command": "python benchmarks/post_filter.py " + " ".join(
                f"--{k} {v}" for k, v in vars(args).items() if v is not None and k != "json"),
            "results": results}, indent=1))


if __name__ == "__main__":
    main()

"""The autoencoder's decoder in float32 and with its bulk in bfloat16 (`HierarchicalVQVAE.decode(...,
low_precision=True)`, what `auto` picks where bf16 is native): mean RGB PSNR over Kodak at a few qualities, the
worst image's change, the largest pixel difference, the share of values changed and median times, interleaved in
one process. The codes (and so the files) are the same either way.

--part post-filter compares only the post-filter's correction in float32 and in bfloat16 (what the bfloat16
decoder runs since hvqcodec 0.18), on the same decoder output (the rest of the decoder in bfloat16), timing the
filter alone.

    python benchmarks/decoder_precision.py [--model hvq-vr5] [--qualities 34,75,100] [--json out.json]
    python benchmarks/decoder_precision.py --part post-filter --qualities 26,51,75 [--json out.json]
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
    parser.add_argument("--part", choices=("decoder", "post-filter"), default="decoder",
                        help="what runs in float32 against bfloat16: the whole decoder, or the post-filter only")
    parser.add_argument("--qualities", default="34,75,100")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = load_codec(args.model, "cpu", "float32")
    post_filter = codec.autoencoder.post_filter
    filter_only = args.part == "post-filter"
    if filter_only and post_filter is None:
        raise SystemExit(f"{codec.name} has no post-filter")
    unfiltered: list[torch.Tensor] = []  # the filter's input, for --part post-filter
    if filter_only:
        post_filter.register_forward_pre_hook(lambda module, inputs: unfiltered.append(inputs[0]))

    def run(codes: list[torch.Tensor], low: bool) -> torch.Tensor:
        """The timed part at one precision: the decoder, or the filter on the bfloat16 decoder's output."""
        return post_filter(unfiltered[0], low)[0] if filter_only else codec.autoencoder.decode(codes, low)[0]

    paths = sorted(KODAK.glob("*.png"))[:args.images]
    results = {"model": codec.name, "part": args.part, "native_bf16": native_bf16(torch.device("cpu")),
               "threads": args.threads, "qualities": {}}
    print(f"{codec.name}, {args.part}, {len(paths)} Kodak images, {args.threads} threads, native bf16: "
          f"{results['native_bf16']}")
    for quality in map(int, args.qualities.split(",")):
        psnr = {False: [], True: []}
        seconds = {False: [], True: []}
        largest, changed = 0, []
        for path in paths:
            rgb = np.asarray(Image.open(path).convert("RGB"))
            codes = [c[None] for c in codec.encode_codes(rgb, codec.operating_point(quality))]
            original = torch.from_numpy(rgb.copy()).permute(2, 0, 1).double()
            pictures = {}
            with torch.no_grad():
                if filter_only:
                    unfiltered.clear()
                    codec.autoencoder.decode(codes, low_precision=True)
                for low in (False, True):
                    start = time.perf_counter()
                    out = run(codes, low)
                    seconds[low].append(time.perf_counter() - start)
                    pictures[low] = out.clamp(0, 1).mul(255).round()[:, :rgb.shape[0], :rgb.shape[1]].double()
                    psnr[low].append(10 * np.log10(255 ** 2 / ((pictures[low] - original) ** 2).mean().item()))
            largest = max(largest, int((pictures[False] - pictures[True]).abs().max()))
            changed.append(float((pictures[False] != pictures[True]).double().mean()))
        change = np.array(psnr[True]) - np.array(psnr[False])
        # The keys each part's results have always had (decoder-precision.json, post-filter-bf16.json).
        psnr_keys = ("psnr_float32_filter", "psnr_bfloat16_filter") if filter_only else ("psnr_float32",
                                                                                       "psnr_bfloat16")
        timed = "filter" if filter_only else "decoder"
        row = {psnr_keys[0]: float(np.mean(psnr[False])), psnr_keys[1]: float(np.mean(psnr[True])),
               "psnr_change": float(change.mean()), "worst_image_change": float(change.min()),
               "largest_pixel_difference": largest, "values_changed": float(np.mean(changed)),
               f"{timed}_seconds_float32": statistics.median(seconds[False]),
               f"{timed}_seconds_bfloat16": statistics.median(seconds[True])}
        results["qualities"][quality] = row
        print(f"quality {quality:>3}: PSNR {row[psnr_keys[0]]:.4f} -> {row[psnr_keys[1]]:.4f} dB "
              f"({row['psnr_change']:+.4f}, worst image {row['worst_image_change']:+.4f}), largest pixel "
              f"difference {largest}, {100 * row['values_changed']:.2f}% of values changed, {timed} "
              f"{row[f'{timed}_seconds_float32']:.3f} -> {row[f'{timed}_seconds_bfloat16']:.3f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "name": f"{args.part}-precision", "description": __doc__.split("\n\n")[0],
            "command": "python benchmarks/decoder_precision.py " + " ".join(
                f"--{k} {v}" for k, v in vars(args).items() if v is not None and k != "json"),
            "results": results}, indent=1))


if __name__ == "__main__":
    main()

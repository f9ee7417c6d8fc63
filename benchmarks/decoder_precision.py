"""The autoencoder's decoder in float32 and with its bulk in bfloat16 (`HierarchicalVQVAE.decode(...,
low_precision=True)`, what `auto` picks where bf16 is native): mean RGB PSNR over Kodak at a few qualities, the
worst image's change, the largest pixel difference, the share of values changed and median times, interleaved in
one process. The codes (and so the files) are the same either way.

--part post-filter compares only the post-filter's correction in float32 and in bfloat16 (what the bfloat16
decoder runs since hvqcodec 0.18), on the same decoder output (the rest of the decoder in bfloat16), timing the
filter alone. --part half-stage compares the half-resolution stage (the upsampling to /2 and its ConvNeXt blocks)
in float32 and in bfloat16, the rest as the bfloat16 decoder runs it (bfloat16 there since hvqcodec 0.19), timing
the whole decoder. --part mlp compares, in the bfloat16 decoder, the ConvNeXt blocks' MLPs as autocast runs them
(LayerNorm in float32, the layer scale applied in float32) and all in bfloat16 (`ConvNeXtBlock._bfloat16_mlp`,
since hvqcodec 0.19), timing the whole decoder.

    python benchmarks/decoder_precision.py [--model hvq-vr5] [--qualities 34,75,100] [--json out.json]
    python benchmarks/decoder_precision.py --part post-filter --qualities 26,51,75 [--json out.json]
    python benchmarks/decoder_precision.py --part half-stage --qualities 26,51,75 --repeats 3 [--json out.json]
    python benchmarks/decoder_precision.py --part mlp --qualities 26,51,75 --repeats 3 [--json out.json]
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
from hvqcodec.convnext import ConvNeXtBlock
from hvqcodec.device import native_bf16

KODAK = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "kodak"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--part", choices=("decoder", "post-filter", "half-stage", "mlp"), default="decoder",
                        help="what runs in float32 against bfloat16: the whole decoder, the post-filter only, the "
                             "half-resolution stage only, or the ConvNeXt MLPs (autocast against all bfloat16)")
    parser.add_argument("--qualities", default="34,75,100")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each precision per image, interleaved")
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
        """The timed part at one precision: the decoder, the filter on the bfloat16 decoder's output, or the
        bfloat16 decoder with its half-resolution stage at that precision."""
        if filter_only:
            return post_filter(unfiltered[0], low)[0]
        if args.part == "half-stage":
            codec.autoencoder.half_stage_low_precision = low
            return codec.autoencoder.decode(codes, True)[0]
        if args.part == "mlp":
            ConvNeXtBlock.bfloat16_mlp = low
            return codec.autoencoder.decode(codes, True)[0]
        return codec.autoencoder.decode(codes, low)[0]

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
                outputs = {}
                for _ in range(args.repeats):
                    for low in (False, True):
                        start = time.perf_counter()
                        outputs[low] = run(codes, low)
                        seconds[low].append(time.perf_counter() - start)
                for low, out in outputs.items():
                    pictures[low] = out.clamp(0, 1).mul(255).round()[:, :rgb.shape[0], :rgb.shape[1]].double()
                    psnr[low].append(10 * np.log10(255 ** 2 / ((pictures[low] - original) ** 2).mean().item()))
            largest = max(largest, int((pictures[False] - pictures[True]).abs().max()))
            changed.append(float((pictures[False] != pictures[True]).double().mean()))
        change = np.array(psnr[True]) - np.array(psnr[False])
        # The keys each part's results have always had (decoder-precision.json, post-filter-bf16.json).
        psnr_keys = {"post-filter": ("psnr_float32_filter", "psnr_bfloat16_filter"),
                     "half-stage": ("psnr_float32_half_stage", "psnr_bfloat16_half_stage"),
                     "mlp": ("psnr_autocast_mlp", "psnr_bfloat16_mlp")}.get(
            args.part, ("psnr_float32", "psnr_bfloat16"))
        timed = "filter" if filter_only else "decoder"
        seconds_keys = tuple(f"{timed}_seconds_{key.split('_')[1]}" + ("_mlp" if args.part == "mlp" else "")
                             for key in psnr_keys)
        row = {psnr_keys[0]: float(np.mean(psnr[False])), psnr_keys[1]: float(np.mean(psnr[True])),
               "psnr_change": float(change.mean()), "worst_image_change": float(change.min()),
               "largest_pixel_difference": largest, "values_changed": float(np.mean(changed)),
               seconds_keys[0]: statistics.median(seconds[False]), seconds_keys[1]: statistics.median(seconds[True])}
        results["qualities"][quality] = row
        print(f"quality {quality:>3}: PSNR {row[psnr_keys[0]]:.4f} -> {row[psnr_keys[1]]:.4f} dB "
              f"({row['psnr_change']:+.4f}, worst image {row['worst_image_change']:+.4f}), largest pixel "
              f"difference {largest}, {100 * row['values_changed']:.2f}% of values changed, {timed} "
              f"{row[seconds_keys[0]]:.3f} -> {row[seconds_keys[1]]:.3f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "name": f"{args.part}-precision", "description": __doc__.split("\n\n")[0],
            "command": "python benchmarks/decoder_precision.py " + " ".join(
                f"--{k} {v}" for k, v in vars(args).items() if v is not None and k != "json"),
            "results": results}, indent=1))


if __name__ == "__main__":
    main()

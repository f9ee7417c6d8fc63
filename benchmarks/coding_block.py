"""Rate cost and decode speed of coding blocks (prior config `coding_block`): the level priors' causal context
stops at block edges and all blocks of a tile are decoded in lockstep, so a level takes columns + 3 (rows - 1)
sequential steps instead of w + 3 (h - 1). For each block setting (as `models export --coding-block` takes it:
N, RxC, or one per level such as 0,32,64): the three levels' cross-entropy under the integer prior (the coded
size, to within the coder's 0.04%) on Kodak at the default quality, relative to the first setting, and the
median time of decoding the three levels' streams (prior + range decoder, no autoencoder), all in one process.

    python benchmarks/coding_block.py --model hvq-vr4 --blocks 0 64 0,32,64 0,32,32x64 32 [--images 24] [--json out.json]
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

from hvqcodec.codec import load_codec, grid_sizes
from hvqcodec.entropy import decode_level, encode_level
from hvqcodec.intprior import LevelState
from hvqcodec.priors import level_blocks, parse_coding_block

KODAK = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "kodak"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--blocks", nargs="+", default=["0", "64", "0,32,64", "32"])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--timed", type=int, default=4, help="images whose decode is timed")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of timed decodes (all settings per round)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codec = load_codec(args.model, "cpu")
    paths = sorted(KODAK.glob("*.png"))[:args.images]
    all_codes = []
    for path in paths:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        all_codes.append((rgb.shape[:2], codec.encode_codes(rgb, codec.operating_point())[:3]))

    def use(spec: str) -> None:
        for level, block in zip(codec.prior.levels, level_blocks(parse_coding_block(spec))):
            level.block = block

    results, streams = {}, {}
    pixels = sum(h * w for (h, w), _ in all_codes)
    for spec in args.blocks:
        use(spec)
        bits = [0.0, 0.0, 0.0]
        streams[spec] = []
        for (height, width), codes in all_codes:
            encoded = [encode_level(codec.prior.levels[level], codes[level], codes[:level]) for level in range(3)]
            bits = [total + e.cross_entropy_bits for total, e in zip(bits, encoded)]
            streams[spec].append([e.data for e in encoded])
        height, width = all_codes[0][0]
        steps = sum(len(LevelState(codec.prior.levels[level], [grid_sizes(height, width)[level]],
                                   [all_codes[0][1][:level]]).fronts) for level in range(3))
        results[spec] = {"bpp_levels": [b / pixels for b in bits], "bpp": sum(bits) / pixels,
                         "steps_first_image": steps}
    # Timings interleaved (every setting once per round), so that a machine's drift hits them all alike.
    seconds: dict[str, list[float]] = {spec: [] for spec in args.blocks}
    for _ in range(args.repeats):
        for spec in args.blocks:
            use(spec)
            for ((height, width), codes), data in list(zip(all_codes, streams[spec]))[:args.timed]:
                start = time.perf_counter()
                decoded = []
                for level in range(3):
                    size = grid_sizes(height, width)[level]
                    decoded += decode_level(codec.prior.levels[level], [data[level]], [size], [decoded])
                seconds[spec].append(time.perf_counter() - start)
                assert all(torch.equal(a, b) for a, b in zip(decoded, codes)), "round trip differs"
    for spec in args.blocks:
        results[spec]["decode_seconds_median"] = statistics.median(seconds[spec])
    base = results[args.blocks[0]]
    for block, r in results.items():
        r["rate_vs_first"] = r["bpp"] / base["bpp"]
        r["decode_vs_first"] = r["decode_seconds_median"] / base["decode_seconds_median"]
        print(f"block {block:>10}: levels {r['bpp']:.4f} bpp (x{r['rate_vs_first']:.4f}; top/mid/bottom "
              + "/".join(f"{b:.4f}" for b in r["bpp_levels"])
              + f"), {r['steps_first_image']} steps, level decode {r['decode_seconds_median']:.3f} s "
              f"(x{r['decode_vs_first']:.2f})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"name": "coding-block", "description": __doc__.split("\n\n")[0],
                                               "command": "python benchmarks/coding_block.py " + " ".join(
                                                   f"--{k.replace('_', '-')} " + (" ".join(v) if k == "blocks" else str(v))
                                                   for k, v in vars(args).items() if v is not None and k != "json"),
                                               "results": {str(k): v for k, v in results.items()}}, indent=1))


if __name__ == "__main__":
    main()

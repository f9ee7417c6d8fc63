"""Decode time of two models on the same images, alternating (A, B, A, B, ...) so that a busy machine slows both
alike: the ratio of their medians is what to read, not the seconds.

    python benchmarks/decode_pair.py hvq-vr2 hvq-vr3 --images 4 --rounds 3 [--quality 75] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from hvqcodec.codec import load_codec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs=2)
    parser.add_argument("--data", default="../shared/datasets/kodak")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quality", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    codecs = [load_codec(name, "cpu") for name in args.models]
    paths = sorted(Path(args.data).glob("*.png"))[:args.images]
    files = [[codec.compress(Image.open(p), args.quality).data for p in paths] for codec in codecs]
    seconds: list[list[float]] = [[], []]
    for _ in range(args.rounds):
        for i in range(len(paths)):
            for m, codec in enumerate(codecs):
                start = time.perf_counter()
                codec.decompress(files[m][i])
                seconds[m].append(time.perf_counter() - start)
    medians = [statistics.median(s) for s in seconds]
    for name, median, data in zip(args.models, medians, files):
        print(f"{name}: median decode {median:.3f} s, {sum(map(len, data))} bytes for {len(paths)} images")
    print(f"{args.models[1]} / {args.models[0]}: {medians[1] / medians[0]:.3f}x decode time")


if __name__ == "__main__":
    main()

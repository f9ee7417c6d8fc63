"""BD-rates of a bench run's hvq points against its classic codecs, with hvq's points limited to a bpp range.

Over the overlapping range, as `hvqcodec bench` computes them (its own bd_rate); limiting hvq's points shows what
a BD-rate says about one part of the curve (e.g. the range an older model covered):

    python benchmarks/bd_range.py benchmarks/results/bench-kodak.json --max-bpp 1.03 0.6
"""
from __future__ import annotations

import argparse
import json

from hvqcodec.bench import _curve, bd_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", help="A JSON written by `hvqcodec bench --json`.")
    parser.add_argument("--max-bpp", type=float, nargs="+", default=[float("inf")])
    args = parser.parse_args()
    codecs = json.load(open(args.results))["results"]["codecs"]
    classic = [name for name in codecs if not name.startswith("hvq:") and not codecs[name]["lossless"]]
    for name in (n for n in codecs if n.startswith("hvq:")):
        for limit in args.max_bpp:
            points = [p for p in codecs[name]["points"] if p["bpp"] <= limit]
            figures = []
            for anchor in classic:
                values = [bd_rate(*_curve(codecs[anchor]["points"], metric), *_curve(points, metric))[0]
                          for metric in ("psnr", "ms_ssim")]
                figures.append(f"{anchor} " + " / ".join("-" if v is None else f"{v:+.1f}%" for v in values))
            print(f"{name}, {len(points)} points up to {limit} bpp (PSNR / MS-SSIM): " + "; ".join(figures))


if __name__ == "__main__":
    main()

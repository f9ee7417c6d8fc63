"""The priors' 8-bit products through int8 matmuls (torch._int_mm) against float32 addmm: median encode and
decode seconds of whole Kodak files, both codecs loaded in one process and timed interleaved. Either route
gives the same integers (the files are compared byte for byte), so only speed is at stake: this is what
decides `intprior.int8_matmul_available` (int8 only where the CPU has VNNI or AMX).

    python benchmarks/int8_route.py [--model hvq-vr5] [--images 3] [--repeats 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from hvqcodec import intprior
from hvqcodec.codec import Codec
from hvqcodec.device import cpu_supports
from hvqcodec.zoo import default_model, load_bundle

KODAK = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "kodak"


def codec_with_route(model: str, int8: bool) -> Codec:
    """A codec whose integer priors take the int8 route (where torch can) or the float32 one."""
    chosen = intprior.int8_matmul_available
    intprior.int8_matmul_available = lambda device_type: int8 and intprior.int8_matmul_works(device_type)
    try:
        return Codec(load_bundle(model), "cpu")
    finally:
        intprior.int8_matmul_available = chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = args.model or default_model()
    if not intprior.int8_matmul_works("cpu"):
        raise SystemExit("torch._int_mm is not available in this torch build: nothing to compare")
    cpu = {name: cpu_supports(name) for name in ("avx2", "avx512", "vnni", "amx_tile")}
    codecs = {"float32": codec_with_route(model, False), "int8": codec_with_route(model, True)}
    paths = sorted(KODAK.glob("*.png"))[:args.images]
    times = {route: {"encode": [], "decode": []} for route in codecs}
    for path in paths:
        for codec in codecs.values():  # warm-up: first calls allocate and build lookup tables
            codec.decompress(codec.compress(path).data)
        for _ in range(args.repeats):
            files = {}
            for route, codec in codecs.items():
                start = time.perf_counter()
                files[route] = codec.compress(path).data
                times[route]["encode"].append(time.perf_counter() - start)
                start = time.perf_counter()
                codec.decompress(files[route])
                times[route]["decode"].append(time.perf_counter() - start)
            if files["int8"] != files["float32"]:
                raise SystemExit(f"{path.name}: the two routes wrote different files")
    medians = {route: {part: statistics.median(values) for part, values in parts.items()}
               for route, parts in times.items()}
    print(f"{model}, {len(paths)} Kodak images x {args.repeats}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"CPU flags {cpu}; chosen route here: {'int8' if intprior.int8_matmul_available('cpu') else 'float32'}")
    for route, parts in medians.items():
        print(f"  {route:8s} encode {parts['encode']:.3f} s   decode {parts['decode']:.3f} s")
    print(f"  int8 / float32: encode x{medians['int8']['encode'] / medians['float32']['encode']:.2f}, "
          f"decode x{medians['int8']['decode'] / medians['float32']['decode']:.2f}; files identical")
    if args.json:
        results = {"model": model, "images": [p.name for p in paths], "repeats": args.repeats,
                   "threads": args.threads, "cpu_flags": cpu, "chosen_route": "int8" if intprior.int8_matmul_available("cpu") else "float32",
                   "seconds_median": medians, "files_identical": True}
        Path(args.json).write_text(json.dumps({
            "name": "int8-route", "description": __doc__.splitlines()[0], "command": "python benchmarks/int8_route.py "
            + f"--model {model} --images {args.images} --repeats {args.repeats} --threads {args.threads}",
            "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""The level priors' step function in C (hvqcodec/_stepkernel.c) against the torch version, on Kodak files.

Median encode and decode seconds of whole files, both codecs loaded in one process and timed interleaved, with
the time spent in the three levels' wavefront decoding beside the total. Both give the same integers: the files
and the decoded pictures are compared byte for byte.

    python benchmarks/step_kernel.py [--model hvq-vr6] [--images 4] [--repeats 3] [--json out.json]
    python benchmarks/step_kernel.py --max-positions 1000000   # the C function for the encoder's batches too
    python benchmarks/step_kernel.py --baseline float32   # the int8 path (AVX-512 VNNI) against the float32 one
    python benchmarks/step_kernel.py --baseline no-prefetch   # with and without the C function's prefetching
    python benchmarks/step_kernel.py --baseline torch-projections   # the conditioning projections in C or torch
    python benchmarks/step_kernel.py --baseline vnni   # the int8 path's products on AMX tiles or with AVX-512 VNNI

The baseline codec is built and warmed up with HVQ_STEP_KERNEL=0 (torch everywhere) or, with --baseline float32,
HVQ_STEP_KERNEL_INT8=0 (the C float32 step function, torch conditioning stacks and stage heads: hvqcodec 0.17's
path); with --baseline no-prefetch both are the same codec, the C function's prefetching turned off for the
baseline's calls (`stepkernel.set_prefetch`; with HVQ_STEP_KERNEL_INT8=0 in the environment, the float32 path's), and
likewise with --baseline vnni, AMX tiles turned off for the baseline's calls (`stepkernel.set_amx`); with
--baseline torch-projections the baseline computes the levels' conditioning projections with torch's int8 matmul
and float32 passes instead of `stepkernel.LinearKernel` (hvqcodec 0.19). The other one takes every C function this
CPU has. Both search candidates with the C `smallest`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import hvqcodec.codec as codec_module
from hvqcodec import stepkernel
from hvqcodec.codec import Codec
from hvqcodec.device import cpu_supports
from hvqcodec.zoo import default_model, load_bundle

KODAK = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "kodak"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-positions", type=int, default=stepkernel.max_positions(),
                        help="batches of this many positions or more use the torch version (default: "
                             "stepkernel.max_positions(), which depends on GOMP_SPINCOUNT)")
    parser.add_argument("--baseline", choices=("torch", "float32", "no-prefetch", "torch-projections", "vnni"),
                        default="torch",
                        help="what the C function is compared with: the torch step function, the C float32 path, "
                             "the C function without prefetching, the conditioning projections in torch, or the "
                             "int8 products with AVX-512 VNNI instead of AMX tiles")
    parser.add_argument("--json")
    args = parser.parse_args()
    stepkernel.MAX_POSITIONS = args.max_positions
    if not stepkernel.available():
        raise SystemExit("the C step function is not built (or HVQ_STEP_KERNEL=0): nothing to compare")
    torch.set_num_threads(args.threads)
    model = args.model or default_model()
    paths = sorted(KODAK.glob("*.png"))[:args.images]
    base = args.baseline
    if base in ("float32", "torch-projections") and not stepkernel.int8_available():
        raise SystemExit("no int8 path here (AVX-512 VNNI, or HVQ_STEP_KERNEL_INT8=0): nothing to compare")
    if base == "vnni" and not (stepkernel.int8_available() and stepkernel.amx_int8_supported()):
        raise SystemExit("no AMX int8 tiles here (or no int8 path): nothing to compare")
    # The baseline's switch is read as kernels are made: at load, and at first use (warm-up on one image). The
    # prefetching switch is the C module's, set before each call below.
    switch = {"float32": "HVQ_STEP_KERNEL_INT8", "torch": "HVQ_STEP_KERNEL"}.get(base)
    if switch:
        os.environ[switch] = "0"
    baseline = Codec(load_bundle(model), "cpu")
    baseline.decompress(baseline.compress(paths[0]).data)
    if switch:
        del os.environ[switch]
    if base == "torch-projections":  # the kernels made in the warm-up forgotten: the torch version from now on
        for level in baseline.prior.levels:
            level._linear_kernels = dict.fromkeys(level._linear_kernels)
    codecs = {base: baseline, "C": Codec(load_bundle(model), "cpu")}
    if any(level.kernel is None for level in codecs["C"].prior.levels):
        raise SystemExit(f"{model}'s priors do not use the C step function (16-bit tables?)")
    if base == "float32" and not all(level.kernel.int8 for level in codecs["C"].prior.levels):
        raise SystemExit(f"{model}'s priors do not take the int8 path")

    level_seconds = [0.0]
    decode_level = codec_module.decode_level

    def timed_decode_level(*a, **k):
        start = time.perf_counter()
        try:
            return decode_level(*a, **k)
        finally:
            level_seconds[0] += time.perf_counter() - start
    codec_module.decode_level = timed_decode_level

    times = {name: {"encode": [], "decode": [], "levels": []} for name in codecs}
    for path in paths:
        for codec in codecs.values():  # warm-up: first calls allocate and build lookup tables
            codec.decompress(codec.compress(path).data)
        for _ in range(args.repeats):
            files, pictures = {}, {}
            for name, codec in codecs.items():
                stepkernel.set_prefetch(name != "no-prefetch")
                stepkernel.set_amx(name != "vnni")
                start = time.perf_counter()
                files[name] = codec.compress(path).data
                times[name]["encode"].append(time.perf_counter() - start)
                level_seconds[0] = 0.0
                start = time.perf_counter()
                pictures[name] = codec.decompress(files[name])
                times[name]["decode"].append(time.perf_counter() - start)
                times[name]["levels"].append(level_seconds[0])
            if files["C"] != files[base]:
                raise SystemExit(f"{path.name}: the two step functions wrote different files")
            if not np.array_equal(np.asarray(pictures["C"].image), np.asarray(pictures[base].image)):
                raise SystemExit(f"{path.name}: the two step functions decoded different pictures")
    medians = {name: {part: statistics.median(values) for part, values in parts.items()}
               for name, parts in times.items()}
    ratios = {part: medians["C"][part] / medians[base][part] for part in ("encode", "decode", "levels")}
    print(f"{model}, {len(paths)} Kodak images x {args.repeats}, {args.threads} threads, "
          f"{platform.processor() or platform.machine()}")
    for name, parts in medians.items():
        print(f"  {name:6s} encode {parts['encode']:.3f} s   decode {parts['decode']:.3f} s   "
              f"(levels' wavefronts {parts['levels']:.3f} s)")
    print(f"  C / {base}: encode x{ratios['encode']:.2f}, decode x{ratios['decode']:.2f}, levels "
          f"x{ratios['levels']:.2f}; files and pictures identical")
    if args.json:
        spin = os.environ.get("GOMP_SPINCOUNT")  # read by torch's OpenMP runtime when it loads
        command = ("" if spin is None else f"GOMP_SPINCOUNT={spin} ") + "python benchmarks/step_kernel.py " + " ".join(
            f"--{k} {v}" for k, v in (("model", model), ("images", args.images), ("repeats", args.repeats),
                                      ("threads", args.threads), ("max-positions", args.max_positions),
                                      ("baseline", base)))
        Path(args.json).write_text(json.dumps({
            "name": "step-kernel", "description": __doc__.splitlines()[0], "command": command,
            "results": {"model": model, "images": [p.name for p in paths], "machine": platform.machine(),
                        "max_positions": args.max_positions, "gomp_spincount": spin,
                        "cpu_flags": {name: cpu_supports(name) for name in ("avx2", "avx512", "vnni", "amx_tile")},
                        "baseline": base, "seconds_median": medians, f"c_over_{base}": ratios,
                        "identical": True}}, indent=1) + "\n")


if __name__ == "__main__":
    main()

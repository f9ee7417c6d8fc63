"""Where the runtime's time goes (`runtime.Runtime`, what `hvqcodec compress` and `decompress` run on a CPU), in
process: a decode split into its levels' wavefront decoding, the refinement stages and the picture
(`Runtime.reconstruct`: the autoencoder's decoder), then the PNG it writes; an encode into the encoder network,
the entropy-constrained choice of the bottom codes, the levels' and the stages' coding. Medians of --repeats.

Parts that run on several threads at once (tiles side by side, a level's stream coded on a side thread while the
next codes are chosen) are summed over threads, so an encode's parts may add up to more than its wall-clock time.

    python benchmarks/runtime_split.py                      # kodim01, default quality
    python benchmarks/runtime_split.py --large --repeats 2  # benchmarks/codec.py's 4000x3000 photo
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the command line runs the runtime (cli.common)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class CallTimer:
    """timer(owner, name, part): owner.name replaced by a wrapper that adds each call's seconds to spent[part]
    (part: a name, or a function of the call's positional arguments giving one); safe from several threads.
    benchmarks/decode_split.py uses it too."""

    def __init__(self, spent: dict[str, float]) -> None:
        self.spent, self.lock = spent, threading.Lock()

    def __call__(self, owner, name: str, part) -> None:
        function = getattr(owner, name)

        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                with self.lock:
                    self.spent[part(a) if callable(part) else part] += time.perf_counter() - start
        setattr(owner, name, wrapper)


def main() -> None:
    from hvqcodec import imageio, npcoding, npencoder, runtime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=str(ROOT.parent / "shared" / "datasets" / "kodak" / "kodim01.png"))
    parser.add_argument("--large", action="store_true", help="the 4000x3000 photo of benchmarks/codec.py")
    parser.add_argument("--quality", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory()  # removed when main returns
    if args.large:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from codec import make_large_image

        args.image = str(Path(scratch.name) / "large.png")
        print(make_large_image(Path(args.image)))
    engine = runtime.load_runtime()
    spent: dict[str, float] = collections.defaultdict(float)
    timed = CallTimer(spent)
    timed(engine, "decode_level_streams", lambda a: f"decode: level {a[0]} (wavefronts)")
    timed(engine, "decode_stage_streams", lambda a: f"decode: refinement stage {a[0]}")
    timed(engine, "reconstruct", "decode: picture (the decoder)")
    timed(npencoder.NumpyEncoder, "encode_latent", "encode: encoder network")
    timed(npcoding.TileEncoder, "_ecvq_bottom", "encode: bottom codes chosen (entropy-constrained)")
    timed(npcoding.TileEncoder, "_level_stream", "encode: levels coded")
    timed(npcoding.TileEncoder, "_reused_stream", "encode: levels coded")  # (the bottom's, since 0.24)
    timed(npcoding.TileEncoder, "_stages", "encode: refinement stages chosen and coded")
    runs: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(args.repeats):
        spent.clear()
        start = time.perf_counter()
        compressed = engine.compress(args.image, args.quality)
        runs["encode: total (wall)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        decoded = engine.decompress(compressed.data)
        runs["decode: total (wall)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        png = imageio.encode_image(decoded.image, "PNG")
        runs["PNG written (in memory)"].append(time.perf_counter() - start)
        for part, seconds in spent.items():
            runs[part].append(seconds)
    medians = {part: statistics.median(values) for part, values in sorted(runs.items())}
    width, height = decoded.image.size
    print(f"{Path(args.image).name} ({width}x{height}), {engine.name}, {len(compressed.data)} bytes, "
          f"{engine.threads} threads, medians of {args.repeats}:")
    for part, seconds in medians.items():
        print(f"  {part:55s} {seconds:7.3f} s")
    if args.json:
        record = {"name": "runtime-split", "description": __doc__.splitlines()[0],
                  "command": "python benchmarks/runtime_split.py" + (" --large" if args.large else "")
                  + f" --repeats {args.repeats} --json {args.json}",
                  "results": {"image": Path(args.image).name, "width": width, "height": height,
                              "model": engine.name, "bytes": len(compressed.data), "png_bytes": len(png),
                              "threads": engine.threads, "seconds_median": medians,
                              "seconds": {part: list(values) for part, values in runs.items()},
                              "pixels_mean": float(np.asarray(decoded.image).mean())}}
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""The range coder in C (hvqcodec 0.24, `_stepkernel`'s stream coders and level loops) against constriction
(HVQ_RANGE_CODER=constriction: the Python loops over constriction's coder), in the runtime without torch
(`runtime.Runtime`, what `hvqcodec compress` and `decompress` run on a CPU): compress and decompress medians over
a folder (Kodak), the two coders interleaved image by image (these machines drift), and whether both write the
same bytes and decode the same pictures.

    python benchmarks/range_coder.py [--data ../shared/datasets/kodak] [--limit N] [--repeats 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the command line runs the runtime (cli.common)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CODERS = {"C": "", "constriction": "constriction"}  # HVQ_RANGE_CODER for each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "kodak"))
    parser.add_argument("--limit", type=int, default=0, help="the first N images only")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    from hvqcodec import runtime
    from hvqcodec.data import find_images
    from hvqcodec.imageio import load_image

    engine = runtime.load_runtime()
    images = [load_image(path) for path in find_images(args.data)[:args.limit or None]]
    engine.compress(images[0])  # a warm-up: the encoder's kernels are prepared on first use
    times = {coder: {"compress": [], "decompress": []} for coder in CODERS}
    digests: dict[str, set] = {"files": set(), "pictures": set()}
    same = True
    for _ in range(args.repeats):
        for image in images:
            outputs = []
            for coder, setting in CODERS.items():
                os.environ["HVQ_RANGE_CODER"] = setting
                start = time.perf_counter()
                data = engine.compress(image).data
                middle = time.perf_counter()
                picture = np.asarray(engine.decompress(data).image)
                times[coder]["compress"].append(middle - start)
                times[coder]["decompress"].append(time.perf_counter() - middle)
                outputs.append((hashlib.sha256(data).hexdigest(), hashlib.sha256(picture.tobytes()).hexdigest()))
            same &= len(set(outputs)) == 1
    os.environ.pop("HVQ_RANGE_CODER", None)
    medians = {coder: {what: statistics.median(values) for what, values in parts.items()}
               for coder, parts in times.items()}
    results = {"images": len(images), "repeats": args.repeats, "threads": engine.threads,
               "seconds_median": medians,
               "decompress_ratio": medians["C"]["decompress"] / medians["constriction"]["decompress"],
               "compress_ratio": medians["C"]["compress"] / medians["constriction"]["compress"],
               "same_files_and_pictures": same}
    for coder, parts in medians.items():
        print(f"{coder:13s} compress {parts['compress']:.4f} s  decompress {parts['decompress']:.4f} s (medians)")
    print(f"C / constriction: compress x{results['compress_ratio']:.3f}, decompress x{results['decompress_ratio']:.3f};"
          f" same files and pictures: {same}")
    if args.json:
        command = "python benchmarks/range_coder.py" + (f" --limit {args.limit}" if args.limit else "") + \
            f" --repeats {args.repeats} --json {args.json}"
        Path(args.json).write_text(json.dumps({"name": "range-coder", "description": __doc__.split("\n\n")[0],
                                               "command": command, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()

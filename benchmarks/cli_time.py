"""Wall-clock time of the command line: `hvqcodec compress` and `decompress` of one Kodak image, each in a fresh
process as a user runs them, beside `python -c "import torch"` (what every codec command pays first).

Ways to run the same commands, interleaved so that all see the same machine: the console script
(`hvqcodec.cli:run`: `compress` and `decompress` without torch where the runtime runs, torch imported with the
garbage collector off, then frozen, as are the objects left before the interpreter shuts down); the same with
HVQ_RUNTIME=torch (both with the torch codec); that with the collector on during the imports (as
hvqcodec 0.19 ran); and the bare click group (`hvqcodec.cli:main`, as hvqcodec 0.11 ran, torch codec).
Medians of --repeats runs each.

    python benchmarks/cli_time.py [--image ../shared/datasets/kodak/kodim01.png] [--repeats 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = {"HVQ_RUNTIME": "torch"}
# name: (code, environment)
ENTRIES = {"console script (run)": ("from hvqcodec.cli import run; run()", {}),
           "run, torch codec": ("from hvqcodec.cli import run; run()", TORCH),
           # As hvqcodec 0.19 ran: torch imported with the garbage collector on (cli.common.codec_imports).
           "run, torch codec, collecting during imports": ("from hvqcodec.cli import common, run; "
                                                           "common.collect_during_imports = True; run()", TORCH),
           "click group (main)": ("from hvqcodec.cli import main; main()", TORCH)}


def wall(command: list[str], environment: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, **(environment or {})})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=str(ROOT.parent / "shared" / "datasets" / "kodak" / "kodim01.png"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        packed, unpacked = str(Path(tmp) / "image.hvq"), str(Path(tmp) / "image.png")
        python = [sys.executable, "-c"]
        wall(python + [ENTRIES["console script (run)"][0], "compress", args.image, "-o", packed])  # warm the disk cache
        for _ in range(args.repeats):
            times.setdefault("import torch", []).append(wall(python + ["import torch"]))
            for entry, (code, environment) in ENTRIES.items():
                times.setdefault(f"compress, {entry}", []).append(
                    wall(python + [code, "compress", args.image, "-o", packed, "--force"], environment))
                times.setdefault(f"decompress, {entry}", []).append(
                    wall(python + [code, "decompress", packed, "-o", unpacked, "--force"], environment))
    results = []
    for name, values in times.items():
        results.append({"what": name, "seconds_median": statistics.median(values), "seconds": values})
        print(f"{name:58s} {statistics.median(values):.2f} s  (runs: {', '.join(f'{v:.2f}' for v in values)})")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "name": "cli-time", "description": __doc__.split("\n\n")[0],
            "command": f"python benchmarks/cli_time.py --image {args.image} --repeats {args.repeats}",
            "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()

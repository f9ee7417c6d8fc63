"""Encode and decode times when another program keeps a core busy, by OpenMP wait policy.

torch's OpenMP threads spin while they wait for work by default. That is fastest on an idle machine, but as
soon as another process is busy every parallel operation waits for a core: the codec's many small operations
then run many times slower. Threads that sleep at once (OMP_WAIT_POLICY=PASSIVE) are slow on an idle machine
instead. `hvqcodec compress / decompress / sample` set GOMP_SPINCOUNT=3000, a short spin (unless a policy or
spin count is set already); this measures why. Each condition runs in a fresh process (the policy is read when torch loads):
median in-process compress and decompress times of the first Kodak images, on an idle machine and beside one
CPU-bound process (a Python busy loop).

    python benchmarks/busy_machine.py [--model hvq-vr3] [--images 1] [--repeats 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

KODAK = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "kodak"

CHILD = r"""
import json, statistics, sys, time
import torch
from hvqcodec.codec import load_codec
from hvqcodec.imageio import load_image
model, repeats, paths = sys.argv[1] or None, int(sys.argv[2]), sys.argv[3:]
codec = load_codec(model, "cpu")
images = [load_image(p) for p in paths]
codec.decompress(codec.compress(images[0]).data)  # warm-up
encode, decode = [], []
for _ in range(repeats):
    for image in images:
        start = time.perf_counter(); data = codec.compress(image).data; encode.append(time.perf_counter() - start)
        start = time.perf_counter(); codec.decompress(data); decode.append(time.perf_counter() - start)
print(json.dumps({"threads": torch.get_num_threads(), "encode_seconds_median": statistics.median(encode),
                  "decode_seconds_median": statistics.median(decode)}))
"""


# What each condition sets (libgomp, torch's OpenMP: GOMP_SPINCOUNT is how long an idle thread spins before it
# sleeps; PASSIVE makes it 0, the default is 300,000; the CLI sets 3000, hvqcodec.cli.OPENMP_SPIN_COUNT).
CONDITIONS = {"(default)": {}, "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
              "GOMP_SPINCOUNT=3000": {"GOMP_SPINCOUNT": "3000"}}


def run_condition(model: str | None, repeats: int, paths: list[str], settings: dict[str, str]) -> dict:
    env = dict(os.environ)
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        env.pop(name, None)
    env.update(settings)
    out = subprocess.run([sys.executable, "-c", CHILD, model or "", str(repeats), *paths], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    paths = [str(p) for p in sorted(KODAK.glob("*.png"))[:args.images]]
    results = []
    for load in ("idle", "one busy process"):
        busy = (subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load != "idle" else None)
        try:
            time.sleep(0.5 if busy else 0)
            for condition, settings in CONDITIONS.items():
                r = run_condition(args.model, args.repeats, paths, settings)
                r.update(load=load, omp_wait_policy=condition)
                results.append(r)
                print(f"{load:17s} {r['omp_wait_policy']:22s} {r['threads']} threads: "
                      f"encode {r['encode_seconds_median']:.2f} s, decode {r['decode_seconds_median']:.2f} s",
                      flush=True)
        finally:
            if busy:
                busy.kill()
                busy.wait()
    if args.json:
        Path(args.json).write_text(json.dumps({
            "name": "busy-machine", "description": __doc__.split("\n\n")[0],
            "command": "python benchmarks/busy_machine.py " + " ".join(
                f"--{k} {v}" for k, v in vars(args).items() if v is not None and k != "json"),
            "images": [Path(p).name for p in paths], "results": results}, indent=1))


if __name__ == "__main__":
    main()

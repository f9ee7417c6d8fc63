"""CUDA check, for a machine with a GPU: the integer probabilities are identical on CUDA and CPU, files encoded
on one device decode bit-exactly on the other, and how long each takes.

    python benchmarks/gpu_check.py [--model NAME] [--images 6] [--json OUT | --update]

Exits 0 when every check passes, 1 when one fails, 2 when there is no CUDA device.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hvqcodec.codec import load_codec
from hvqcodec.data import find_images
from hvqcodec.entropy import level_frequencies, stage_frequencies

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, *args):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "kodak"))
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--json", help="write the results JSON here")
    parser.add_argument("--update", action="store_true", help="write the committed benchmarks/results/gpu_check.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    cpu, cuda = load_codec(args.model, "cpu"), load_codec(args.model, "cuda")
    records, ok = [], True
    for path in find_images(args.data)[:args.images]:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        codes = cpu.encode_codes(rgb)  # every stream, nearest codes
        on_gpu = [c.cuda() for c in codes]
        same_probabilities = all(
            torch.equal(level_frequencies(cpu.prior.levels[l], codes[l], codes[:l])[0].cpu(),
                        level_frequencies(cuda.prior.levels[l], on_gpu[l], on_gpu[:l])[0].cpu())
            for l in range(3))
        same_probabilities &= all(
            torch.equal(stage_frequencies(cpu.prior.stages[s], codes, codes[3 + s]).cpu(),
                        stage_frequencies(cuda.prior.stages[s], on_gpu, on_gpu[3 + s]).cpu())
            for s in range(len(cpu.prior.stages)))
        record = {"image": path.name, "probabilities_equal": same_probabilities}
        for source, target, name in ((cpu, cuda, "cpu_to_cuda"), (cuda, cpu, "cuda_to_cpu")):
            compressed, encode_s = timed(source.compress, path)
            decoded, decode_s = timed(target.decompress, compressed.data)
            expected = source.encode_codes(rgb, source.operating_point())
            exact = all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(decoded.codes[0], expected))
            record[name] = {"codes_equal": exact, "encode_seconds": encode_s, "decode_seconds": decode_s,
                            "bytes": len(compressed.data)}
            ok &= exact
        ok &= same_probabilities
        records.append(record)
        print(json.dumps(record))
    summary = {
        "name": "hvqcodec-gpu-check", "description": f"{torch.cuda.get_device_name()} vs CPU, model {cpu.name}",
        "results": {"all_passed": ok, "per_image": records, **{
            f"{d}_{k}_median": statistics.median(r[d][f"{k}_seconds"] for r in records)
            for d in ("cpu_to_cuda", "cuda_to_cpu") for k in ("encode", "decode")}},
    }
    out = args.json or (ROOT / "benchmarks" / "results" / "gpu_check.json" if args.update else None)
    if out is not None:
        Path(out).write_text(json.dumps(summary, indent=2) + "\n")
    print("PASSED" if ok else "FAILED", json.dumps(summary["results"], default=str)[:400])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

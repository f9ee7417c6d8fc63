"""Issue 8's large-image target: `hvqcodec compress` and `decompress` of a 4000x3000 photo (benchmarks/codec.py's
`make_large_image`), each in a fresh process as a user runs them: wall-clock seconds and peak RSS, interleaved with
the same commands under a reference so that both see the same machine (these machines' speed drifts by 10% or
more between minutes).

References: HVQ_RUNTIME=torch (the torch codec: the default), or --baseline-tree DIR: another checkout's hvqcodec
(its C modules built in place: `python setup.py build_ext --inplace` there), run with PYTHONPATH=DIR, to measure a
change against the commit before it. Medians of --repeats runs each; the decompressed pictures are compared byte
for byte with the reference's where both run the same runtime.

    python benchmarks/large_image.py [--repeats 3] [--quality 75] [--json out.json]
    python benchmarks/large_image.py --baseline-tree ../base --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from codec import make_large_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS, TARGET_RSS_MB = 10.0, 2048


def timed(command: list[str], environment: dict[str, str], folder: str) -> tuple[float, float]:
    """Run `command` in `folder` (not this checkout: `python -c` puts the working folder first on sys.path, ahead
    of PYTHONPATH); (wall seconds, peak RSS in MB) of that process (os.wait4's own figure, children apart)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=environment, cwd=folder, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed: {process.stderr.read().decode(errors='replace')[-500:]}")
    process.stderr.close()
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quality", type=int, default=None)
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="another checkout's hvqcodec as the reference (default: this one with HVQ_RUNTIME=torch)")
    parser.add_argument("--json")
    args = parser.parse_args()
    cli = [sys.executable, "-c", "from hvqcodec.cli import run; run()"]
    base_environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    if args.baseline_tree:
        reference_name = f"baseline tree {args.baseline_tree}"
        reference_environment = {**os.environ, "PYTHONPATH": str(args.baseline_tree.resolve())}
    else:
        reference_name = "HVQ_RUNTIME=torch"
        reference_environment = {**base_environment, "HVQ_RUNTIME": "torch"}
    entries = {"this tree": base_environment, reference_name: reference_environment}
    quality = [] if args.quality is None else ["--quality", str(args.quality)]
    runs: dict[str, dict[str, list]] = {name: {"compress": [], "decompress": [], "compress_rss_mb": [],
                                              "decompress_rss_mb": [], "bytes": []} for name in entries}
    with tempfile.TemporaryDirectory() as scratch:
        image = Path(scratch) / "large.png"
        source = make_large_image(image)
        pictures: dict[str, bytes] = {}
        for repeat in range(args.repeats):
            for name, environment in entries.items():
                packed, picture = Path(scratch) / f"{len(pictures)}.hvq", Path(scratch) / f"{len(pictures)}.png"
                seconds, rss = timed(cli + ["compress", str(image), "-o", str(packed), "--force"] + quality,
                                     environment, scratch)
                runs[name]["compress"].append(seconds)
                runs[name]["compress_rss_mb"].append(rss)
                runs[name]["bytes"].append(packed.stat().st_size)
                seconds, rss = timed(cli + ["decompress", str(packed), "-o", str(picture), "--force"], environment,
                                     scratch)
                runs[name]["decompress"].append(seconds)
                runs[name]["decompress_rss_mb"].append(rss)
                pictures[name] = picture.read_bytes()
                print(f"{repeat + 1}/{args.repeats} {name}: compress {runs[name]['compress'][-1]:.2f} s "
                      f"({runs[name]['compress_rss_mb'][-1]:.0f} MB), decompress {seconds:.2f} s ({rss:.0f} MB), "
                      f"{packed.stat().st_size} bytes", flush=True)
    medians = {name: {key: statistics.median(values) for key, values in parts.items()} for name, parts in runs.items()}
    for name, median in medians.items():
        print(f"{name}: compress {median['compress']:.2f} s, decompress {median['decompress']:.2f} s (medians); "
              f"peak RSS {max(runs[name]['compress_rss_mb']):.0f} / {max(runs[name]['decompress_rss_mb']):.0f} MB")
    ours = medians["this tree"]
    print(f"target: {TARGET_SECONDS:.0f} s each way and {TARGET_RSS_MB} MB: compress "
          f"{'met' if ours['compress'] <= TARGET_SECONDS else 'missed'}, decompress "
          f"{'met' if ours['decompress'] <= TARGET_SECONDS else 'missed'}, memory "
          f"{'met' if max(max(runs['this tree'][k]) for k in ('compress_rss_mb', 'decompress_rss_mb')) <= TARGET_RSS_MB else 'missed'}")
    same = len(set(pictures.values())) == 1
    print("decompressed pictures identical to the reference's" if same else
          "decompressed pictures differ from the reference's (another runtime or decoder: expected within rounding)")
    if args.json:
        command = "python benchmarks/large_image.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "json")
        record = {"name": "large-image", "description": __doc__.splitlines()[0],
                  "command": command.strip() + f" --json {args.json}",
                  "results": {"image": source, "machine": platform.processor() or platform.machine(),
                              "cpus": os.cpu_count(), "reference": reference_name, "seconds_median": medians,
                              "runs": runs, "pictures_identical": same,
                              "targets": {"seconds": TARGET_SECONDS, "peak_rss_mb": TARGET_RSS_MB}}}
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()

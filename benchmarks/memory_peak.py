"""Peak resident memory of one compress or one decompress of a large image, and where it happens (the stack
at the peak, sampled every 5 ms), in this process alone.

    python benchmarks/memory_peak.py compress      # 4000x3000 (made as benchmarks/codec.py makes it) -> /tmp file
    python benchmarks/memory_peak.py decompress    # the file the compress run wrote
    python benchmarks/memory_peak.py compress --effort 1 --image photo.png
"""
import argparse
import os
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch

from hvqcodec.codec import load_codec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from codec import make_large_image  # noqa: E402 (benchmarks/codec.py: the same 4000x3000 photo)

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("mode", choices=["compress", "decompress"])
parser.add_argument("--model", default=None)
parser.add_argument("--image", help="image to compress (default: a 4000x3000 resize of the first CLIC 2025 photo)")
parser.add_argument("--effort", type=int, default=0)
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()
torch.set_num_threads(args.threads)
work = Path(tempfile.gettempdir()) / "hvqcodec-memory-peak"
work.mkdir(exist_ok=True)
source = Path(args.image) if args.image else work / "large.png"
if args.mode == "compress" and not args.image and not source.exists():
    make_large_image(source)
codec = load_codec(args.model, "cpu")
main_thread = threading.main_thread().ident
peak = [0.0, None]
done = threading.Event()


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def watch() -> None:
    while not done.is_set():
        now = resident_mb()
        if now > peak[0] + 20:
            peak[0], peak[1] = now, traceback.extract_stack(sys._current_frames()[main_thread])
        time.sleep(0.005)


before = resident_mb()
threading.Thread(target=watch, daemon=True).start()
start = time.perf_counter()
if args.mode == "compress":
    (work / "large.hvq").write_bytes(codec.compress(source, effort=args.effort).data)
else:
    codec.decompress((work / "large.hvq").read_bytes())
done.set()
print(f"{args.mode}: {time.perf_counter() - start:.1f} s, resident before {before:.0f} MB, peak {peak[0]:.0f} MB at")
for frame in (peak[1] or [])[-12:]:
    if "torch/nn/modules" not in frame.filename:
        print(f"  {Path(frame.filename).name}:{frame.lineno} {frame.name}: {frame.line}")

"""The decompressed picture's PNG: Pillow's writer (zlib level 3, one thread) against hvqcodec's
(`pngwrite.encode_png`: the C kernel's adaptive row filters, deflate in parts on two threads), interleaved, on
decoded pictures: kodim01 at the default quality, and the 4000x3000 photo of benchmarks/codec.py (decoded from
its .hvq; made first if missing). Medians of --repeats, bytes, and whether both decode to the same pixels.

    python benchmarks/png_write.py [--repeats 5] [--json benchmarks/results/png-write.json]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the command line runs the runtime (cli.common)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def pillow_png(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG", compress_level=3)
    return buffer.getvalue()


def measure(name: str, picture: np.ndarray, repeats: int) -> dict:
    from hvqcodec import pngwrite

    writers = {"pillow": pillow_png, "hvqcodec": pngwrite.encode_png}
    seconds: dict[str, list[float]] = {label: [] for label in writers}
    sizes = {}
    for _ in range(repeats):
        for label, write in writers.items():
            start = time.perf_counter()
            data = write(picture)
            seconds[label].append(time.perf_counter() - start)
            sizes[label] = len(data)
            same = np.array_equal(np.asarray(Image.open(io.BytesIO(data))), picture)
            assert same, f"{label}: the PNG does not decode to the picture"
    medians = {label: statistics.median(values) for label, values in seconds.items()}
    print(f"{name} ({picture.shape[1]}x{picture.shape[0]}): " + ", ".join(
        f"{label} {medians[label]:.3f} s ({sizes[label]} bytes)" for label in writers))
    return {"picture": name, "width": picture.shape[1], "height": picture.shape[0],
            "seconds_median": medians, "seconds": seconds, "bytes": sizes, "both_decode_to_the_picture": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    from codec import make_large_image

    from hvqcodec import api

    kodim01 = ROOT.parent / "shared" / "datasets" / "kodak" / "kodim01.png"
    pictures = {"kodim01, decoded": np.asarray(api.decompress(api.compress(kodim01)).convert("RGB"))}
    with tempfile.TemporaryDirectory() as folder:
        large = Path(folder) / "large.png"
        source = make_large_image(large)
        pictures[f"{source}, decoded"] = np.asarray(api.decompress(api.compress(large)).convert("RGB"))
    results = [measure(name, picture, args.repeats) for name, picture in pictures.items()]
    if args.json:
        Path(args.json).write_text(json.dumps({
            "name": "png-write", "description": " ".join(__doc__.split("\n\n")[0].split()),
            "command": "python benchmarks/png_write.py" + (f" --repeats {args.repeats}" if args.repeats != 5 else "")
            + f" --json {args.json}", "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()

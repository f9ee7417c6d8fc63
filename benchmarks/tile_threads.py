"""Tiles side by side or one after the other, in the runtime without torch: the first four 1024x1024 tiles of the
4000x3000 photo of benchmarks/codec.py, encoded (`TileEncoder.encode_tile`) and decoded (`NumpyDecoder.decode`)
one after the other on two threads, and two at a time on one thread each, interleaved; the same bytes and pixels
either way (checked).

    python benchmarks/tile_threads.py [--repeats 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the command line runs the runtime

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from codec import make_large_image  # noqa: E402 (benchmarks/codec.py: the same photo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    from hvqcodec import container, runtime

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "large.png"
        source = make_large_image(path)
        Image.MAX_IMAGE_PIXELS = None
        rgb = np.asarray(Image.open(path).convert("RGB"))
    tiles = [rgb[t:t + h, l:l + w] for t, l, h, w in container.tile_grid(rgb.shape[1], rgb.shape[0], 1024)[:4]]
    two = runtime.load_runtime(threads=2)
    encoder = two.tile_encoder()
    single = encoder.with_threads(1)
    point = two.operating_point(None)
    decoder = two.decoder
    times: dict[str, list[float]] = {}

    def timed(name: str, function):
        start = time.perf_counter()
        result = function()
        times.setdefault(name, []).append(time.perf_counter() - start)
        return result

    single.encode_tile(tiles[0][:256, :256], point)  # warm-up
    for _ in range(args.repeats):
        apart = timed("encode, one after the other, 2 threads", lambda: [encoder.encode_tile(t, point) for t in tiles])
        with ThreadPoolExecutor(2) as pool:
            together = timed("encode, 2 tiles side by side, 1 thread each",
                             lambda: list(pool.map(lambda t: single.encode_tile(t, point), tiles)))
        assert [e for _, e in apart] == [e for _, e in together]
        codes = [c for c, _ in apart]
        pictures = timed("decode, one after the other, 2 threads", lambda: [decoder.decode(c, 2) for c in codes])
        with ThreadPoolExecutor(2) as pool:
            side = timed("decode, 2 tiles side by side, 1 thread each",
                         lambda: list(pool.map(lambda c: decoder.decode(c, 1), codes)))
        assert all(np.array_equal(a, b) for a, b in zip(pictures, side))
    results = [{"what": name, "seconds_median": statistics.median(values), "seconds": values}
               for name, values in times.items()]
    for row in results:
        print(f"{row['what']:48s} {row['seconds_median']:.2f} s  (runs: "
              f"{', '.join(f'{v:.2f}' for v in row['seconds'])})")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "name": "tile-threads", "description": __doc__.split("\n\n")[0], "source": source,
            "command": "python benchmarks/tile_threads.py " + " ".join(sys.argv[1:]), "results": results},
            indent=1) + "\n")


if __name__ == "__main__":
    main()

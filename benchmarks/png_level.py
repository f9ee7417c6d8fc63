"""What zlib level the decompressed PNGs are written at (imageio._SAVE_OPTIONS): bytes and time per level on
decoded Kodak pictures (every fourth image, qualities 40, 75 and 95, decoded by the runtime without torch).

    python benchmarks/png_level.py [--data ../shared/datasets/kodak] [--levels 1,3,6] [--json out.json]
"""
from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "kodak"))
    parser.add_argument("--levels", default="1,3,6")
    parser.add_argument("--json")
    args = parser.parse_args()
    from hvqcodec import runtime
    from hvqcodec.codec import load_codec

    codec = load_codec()
    levels = [int(level) for level in args.levels.split(",")]
    totals = {level: {"bytes": 0, "seconds": 0.0} for level in levels}
    pictures = 0
    for path in sorted(Path(args.data).glob("*.png"))[::4]:
        for quality in (40, 75, 95):
            data = codec.compress(path, quality).data
            image = runtime.runtime_for(data).decompress(data).image
            pictures += 1
            for level in levels:
                buffer = io.BytesIO()
                start = time.perf_counter()
                image.save(buffer, "PNG", compress_level=level)
                totals[level]["seconds"] += time.perf_counter() - start
                totals[level]["bytes"] += len(buffer.getvalue())
    reference = totals[max(levels)]["bytes"]
    for level, total in totals.items():
        print(f"zlib level {level}: {total['bytes']:,} bytes ({total['bytes'] / reference - 1:+.1%} against level "
              f"{max(levels)}), {total['seconds'] / pictures:.3f} s a picture")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "name": "png-level", "description": __doc__.split("\n\n")[0],
            "command": f"python benchmarks/png_level.py --levels {args.levels}", "pictures": pictures,
            "results": [{"level": level, **total} for level, total in totals.items()]}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Pack the training photos compactly for a lent GPU machine, whose copy of the working tree (carried folders
included) may hold at most 64 MiB: every image re-encoded as WebP (default quality 90), the long side capped
(default 1024 px; an original that is smaller than its re-encoding is copied as it is), the folder layout kept (so `<out>/cid22/validation` is still the validation set).

    python benchmarks/gpu_pack.py                     # ../shared/datasets/train -> runs/gpu-data
    python benchmarks/gpu_pack.py --quality 85 --long-side 896 --out runs/gpu-data

Lossy re-encoding adds mild artefacts; training's random 0.5-1x downscale before cropping hides most of them
(as it does for the JPEG sources). Prints the packed size per top-level folder and in all.
"""
from __future__ import annotations

import argparse
import collections
import shutil
from pathlib import Path

from PIL import Image
from rich.progress import track

from hvqcodec.data import find_images

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "train"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "gpu-data"))
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--long-side", type=int, default=1024)
    args = parser.parse_args()
    source, out = Path(args.data), Path(args.out)
    sizes: dict[str, int] = collections.defaultdict(int)
    paths = find_images(source)
    for path in track(paths, description="packing"):
        image = Image.open(path).convert("RGB")
        scale = args.long_side / max(image.size)
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        relative = path.relative_to(source).with_suffix(".webp")
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, "WEBP", quality=args.quality, method=4)
        if scale >= 1 and path.stat().st_size <= target.stat().st_size:  # the original is smaller: keep it as is
            target.unlink()
            relative = path.relative_to(source)
            target = out / relative
            shutil.copyfile(path, target)
        sizes[relative.parts[0] if len(relative.parts) > 1 else "."] += target.stat().st_size
    for folder, size in sorted(sizes.items()):
        print(f"  {folder:24s} {size / 2 ** 20:6.1f} MiB")
    print(f"{len(paths)} images -> {out}: {sum(sizes.values()) / 2 ** 20:.1f} MiB")


if __name__ == "__main__":
    main()

"""Training data: find images, decode them once into a uint8 cache, draw random crops from the cache."""
from __future__ import annotations

import fnmatch
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm"}


def find_images(folder: str | Path, exclude: Sequence[str] = (), skip_under: Sequence[str | Path] = ()) -> list[Path]:
    """Image files below folder, sorted; `exclude` are glob patterns, `skip_under` folders to leave out."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{folder}: not a folder")
    skipped = [Path(p).resolve() for p in skip_under]
    found = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if any(fnmatch.fnmatch(str(path), pattern) for pattern in exclude):
            continue
        resolved = path.resolve()
        if any(resolved.is_relative_to(s) for s in skipped):
            continue
        found.append(path)
    if not found:
        raise DataError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def load_rgb(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """Decode an image as (H, W, 3) uint8 RGB, EXIF orientation applied, optionally downscaled."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            if max_side and max(image.size) > max_side:
                scale = max_side / max(image.size)
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                image = image.resize(size, Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0


class CropSampler:
    """Random crops from images held in memory as uint8: random downscale (0.5-1x) and horizontal flips.

    The downscale hides the JPEG artefacts of the sources; drawing from a seeded generator (saved in
    checkpoints) makes a resumed run see exactly the crops it would have seen.
    """

    def __init__(self, images: list[np.ndarray], crop: int, min_scale: float = 0.5, max_scale: float = 1.0) -> None:
        if not images:
            raise DataError("no training images")
        self.images = [torch.from_numpy(im).permute(2, 0, 1) for im in images]  # uint8 (3, H, W) views
        self.crop = crop
        self.min_scale, self.max_scale = min_scale, max_scale

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        crops = []
        for _ in range(batch_size):
            image = self.images[int(torch.randint(len(self.images), (1,), generator=generator))]
            _, h, w = image.shape
            scale = self.min_scale + (self.max_scale - self.min_scale) * float(torch.rand(1, generator=generator))
            # Source window that becomes `crop` pixels after scaling; never larger than the image.
            src = min(math.ceil(self.crop / scale), h, w)
            top = int(torch.randint(h - src + 1, (1,), generator=generator))
            left = int(torch.randint(w - src + 1, (1,), generator=generator))
            patch = image[:, top:top + src, left:left + src][None].float() / 255.0
            if src != self.crop:
                patch = F.interpolate(patch, size=(self.crop, self.crop), mode="bilinear",
                                      antialias=True, align_corners=False).clamp(0, 1)
            if float(torch.rand(1, generator=generator)) < 0.5:
                patch = patch.flip(-1)
            crops.append(patch)
        return torch.cat(crops)


def center_crops(images: list[np.ndarray], size: int) -> torch.Tensor:
    """Center crops (N, 3, size, size) for validation; smaller images are edge-padded up to size."""
    out = []
    for image in images:
        h, w, _ = image.shape
        top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
        patch = image[top:top + size, left:left + size]
        ph, pw = size - patch.shape[0], size - patch.shape[1]
        if ph or pw:
            patch = np.pad(patch, ((0, ph), (0, pw), (0, 0)), mode="edge")
        out.append(to_tensor(patch))
    return torch.cat(out)

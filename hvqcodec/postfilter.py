"""A small full-resolution filter after the decoder, and its training on a shipped model's reconstructions.

Why: the decoder's last layers are linear at full resolution (a 2x2 transposed convolution from the /2
features, and the detail head's 4x4 pixel shuffle from /4), so nothing nonlinear looks at neighbouring pixels
there. A residual filter of three 3x3 convolutions (32 channels, GELU) trained on the decoder's own outputs
gained 0.10-0.16 dB on held-out crops after 12 CPU-minutes (`benchmarks/postfilter_probe.py`), for about 11k
multiply-adds a pixel. The codes do not change (the filter is after the decoder), so a model's priors, ladder
streams and files stay valid: `hvqcodec models add-filter` makes a new model from an old one plus a filter.

Training caches the decoder's reconstructions (float16) of random training crops at several qualities once,
then trains only the filter on patches of them: ten times as many steps in the same minutes as running the
decoder each step.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .metrics import psnr

POST_FILTER_FORMAT = "hvqcodec-post-filter"


class PostFilter(nn.Module):
    """rgb + f(rgb): `layers` 3x3 convolutions (3 -> channels -> ... -> 3) with GELU between them; the last
    one starts at zero, so a new filter is the identity and a model with it decodes as the model without."""

    def __init__(self, channels: int, layers: int) -> None:
        super().__init__()
        if layers < 2 or channels < 1:
            raise ValueError(f"a post-filter needs at least 2 layers and 1 channel, not {layers} x {channels}")
        sizes = [3] + [channels] * (layers - 1) + [3]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(sizes[:-1], sizes[1:]))
        nn.init.zeros_(self.convs[-1].weight)
        nn.init.zeros_(self.convs[-1].bias)

    def forward(self, rgb: torch.Tensor, low_precision: bool = False) -> torch.Tensor:
        """low_precision: the correction f(rgb) in bfloat16 (added to rgb in float32). Channels-last either way:
        oneDNN's 3x3 convolutions with 3 or 32 channels run faster so (`benchmarks/decoder_precision.py --part post-filter`)."""
        x = rgb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(rgb.device.type, dtype=torch.bfloat16, enabled=low_precision):
            for conv in self.convs[:-1]:
                # GELU on the channels-last tensor as a contiguous (N, H, W, C) one: the same values, about half
                # the time of torch's strided kernel at full resolution; in place at inference (the same values,
                # no second full-resolution table to allocate and fill).
                y = conv(x).permute(0, 2, 3, 1)
                x = (F.gelu(y) if torch.is_grad_enabled() else torch.ops.aten.gelu_(y)).permute(0, 3, 1, 2)
            correction = self.convs[-1](x)
        return rgb + correction.to(rgb.dtype)


@dataclass
class PostFilterOptions:
    data: str
    out: str
    model: str | None = None
    val: str | None = None
    exclude: Sequence[str] = ()
    channels: int = 32
    layers: int = 3
    # Qualities whose reconstructions train the filter: every stream count of the ladder, previews included
    # (the filter runs on every decode).
    qualities: Sequence[int] = (1, 9, 26, 51, 75, 92, 100)
    crops: int = 200
    crop: int = 192
    val_crops: int = 40
    val_crop: int = 256
    batch: int = 8
    patch: int = 64
    lr: float = 1e-3
    steps: int = 100_000
    time_budget: float = 0.0  # minutes; 0: run all steps
    seed: int = 0
    command: str = ""  # how it was run, for the manifest


def random_crops(paths: Sequence[Path], size: int, rng: random.Random, max_side: int | None = 1024) -> list[np.ndarray]:
    """One random size x size crop of each image (long side first reduced to max_side); smaller images skipped."""
    from .data import load_rgb

    out = []
    for path in paths:
        rgb = load_rgb(path, max_side)
        h, w = rgb.shape[:2]
        if h >= size and w >= size:
            top, left = rng.randrange(h - size + 1), rng.randrange(w - size + 1)
            out.append(np.ascontiguousarray(rgb[top:top + size, left:left + size]))
    return out


@torch.no_grad()
def reconstructions(codec, crops: Sequence[np.ndarray], qualities: Sequence[int],
                    progress: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's outputs (of a model without a post-filter: what a filter sees), clamped to [0, 1]
    ((N * Q, 3, S, S) float16, crop-major), and the crops ((N, 3, S, S) uint8)."""
    recon = []
    for rgb in crops:
        for quality in qualities:
            codes = codec.encode_codes(rgb, codec.operating_point(quality))
            recon.append(codec.autoencoder.decode([c[None] for c in codes])[0].clamp(0, 1).half())
            if progress is not None:
                progress()
    return torch.stack(recon), torch.stack([torch.from_numpy(rgb).permute(2, 0, 1) for rgb in crops])


@torch.no_grad()
def evaluate(post_filter: PostFilter, recon: torch.Tensor, originals: torch.Tensor,
             qualities: Sequence[int]) -> list[dict]:
    """PSNR of the 8-bit pictures without and with the filter, per quality."""
    rows = []
    for index, quality in enumerate(qualities):
        picked = recon[index::len(qualities)].float()
        before = picked.mul(255).round()
        after = torch.cat([post_filter(x[None]) for x in picked]).clamp(0, 1).mul(255).round()
        rows.append({"quality": quality, "psnr_without": psnr(before, originals, 255),
                     "psnr_with": psnr(after, originals, 255)})
    return rows


def train_post_filter(options: PostFilterOptions, status: Callable[[str, float], None] | None = None) -> dict:
    """Train a post-filter for a shipped model (codes and decoder fixed); writes out/checkpoint.pt and
    out/train_log.jsonl and returns the checkpoint. status(text, fraction done) reports progress."""
    from .codec import load_codec
    from .data import find_images
    from .errors import HvqError
    from .fileio import atomic_torch_save

    torch.manual_seed(options.seed)
    rng = random.Random(options.seed)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    codec = load_codec(options.model, "cpu")
    if codec.autoencoder.post_filter is not None:
        raise HvqError(f"model {codec.name} has a post-filter already: train one for a model without")
    skip = [options.val] if options.val else []
    paths = find_images(options.data, options.exclude, skip_under=skip)
    if not paths:
        raise HvqError(f"{options.data}: no training images found")
    rng.shuffle(paths)
    say = status or (lambda text, fraction: None)
    crops = random_crops(paths[:options.crops], options.crop, rng)
    if not crops:
        raise HvqError(f"{options.data}: no training image is at least {options.crop} pixels on each side (--crop)")
    val_crops = []
    if options.val:
        val_paths = find_images(options.val, options.exclude)
        val_crops = random_crops(val_paths[:options.val_crops], options.val_crop, random.Random(1), None)
    total = (len(crops) + len(val_crops)) * len(options.qualities)
    done = [0]

    def tick() -> None:
        done[0] += 1
        say(f"decoding crops ({done[0]}/{total})", 0.2 * done[0] / total)
    recon, targets = reconstructions(codec, crops, options.qualities, tick)
    val_recon, val_targets = reconstructions(codec, val_crops, options.qualities, tick) if val_crops else (None, None)

    post_filter = PostFilter(options.channels, options.layers)
    optimiser = torch.optim.Adam(post_filter.parameters(), lr=options.lr)
    started = time.perf_counter()
    budget = 60 * options.time_budget
    count, size, per_crop = recon.shape[0], options.crop, len(options.qualities)
    log_path = out / "train_log.jsonl"
    step, running = 0, None
    with log_path.open("a") as log:
        while step < options.steps:
            elapsed = time.perf_counter() - started
            fraction = min(1.0, max(step / options.steps, elapsed / budget if budget else 0.0))
            if fraction >= 1.0:
                break
            for group in optimiser.param_groups:  # cosine to zero over the steps or the time budget
                group["lr"] = options.lr * 0.5 * (1 + math.cos(math.pi * fraction))
            index = torch.randint(count, (options.batch,))
            top, left = (int(v) for v in torch.randint(size - options.patch + 1, (2,)))
            x = recon[index, :, top:top + options.patch, left:left + options.patch].float()
            y = targets[index // per_crop, :, top:top + options.patch, left:left + options.patch].float() / 255
            loss = F.mse_loss(post_filter(x), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            step += 1
            value = loss.item()
            running = value if running is None else 0.99 * running + 0.01 * value
            if step % 500 == 0:
                log.write(json.dumps({"step": step, "loss": running, "seconds": round(elapsed, 1)}) + "\n")
                log.flush()
                say(f"step {step}, loss {running:.6f} ({-10 * math.log10(max(running, 1e-12)):.2f} dB)",
                    0.2 + 0.75 * fraction)
    post_filter.eval()
    validation = evaluate(post_filter, val_recon, val_targets, options.qualities) if val_crops else []
    checkpoint = {"format": POST_FILTER_FORMAT, "config": {"channels": options.channels, "layers": options.layers},
                  "state_dict": post_filter.state_dict(), "model": codec.name, "model_sha256": codec.sha256,
                  "steps": step, "options": asdict(options),
                  "validation": validation}
    atomic_torch_save(checkpoint, out / "checkpoint.pt")
    return checkpoint


def load_post_filter(path: str | Path) -> tuple[dict, PostFilter]:
    """A `train post-filter` checkpoint and the filter it holds (ValueError for anything else)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many exception types for foreign files
        raise ValueError(f"{path}: unreadable ({type(exc).__name__})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != POST_FILTER_FORMAT:
        raise ValueError(f"{path}: not a checkpoint of `hvqcodec train post-filter`")
    post_filter = PostFilter(checkpoint["config"]["channels"], checkpoint["config"]["layers"])
    post_filter.load_state_dict(checkpoint["state_dict"])
    return checkpoint, post_filter.eval()

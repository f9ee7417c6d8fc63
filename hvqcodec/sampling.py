"""Sampling new images from the priors: ancestral sampling, top level first, then every level and stage below
conditioned on those above, then the decoder (the generative use of a hierarchical VQ-VAE).

Each code is drawn from the same integer frequencies the range decoder would use, through the same decode
loops (`decode_level`, `decode_stage`), by an integer sampler in place of the range decoder. The sampler's
random numbers come from a counter-based integer hash (splitmix64) keyed by (seed, image, stream), so the same
seed gives the same codes, and hence the same image up to the decoder's float rounding, on any machine, thread
count or batch size.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import numpy as np
import torch

from .codec import Codec, grid_sizes
from .entropy import decode_level, decode_stage
from .errors import HvqError
from .intprior import FREQ_BITS, FREQ_TOTAL

_MASK = (1 << 64) - 1


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic, identical on every platform)."""
    z = values + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class IntegerSampler:
    """Stands in for a range decoder: draws each symbol from its integer frequencies with an integer RNG."""

    def __init__(self, seed: int, image: int, stream: int) -> None:
        key = np.array([(seed * 1_000_003 + image * 8191 + stream) & _MASK], dtype=np.uint64)
        with np.errstate(over="ignore"):
            self.key = _splitmix64(key)[0]
        self.counter = 0

    def decode(self, family, probabilities: np.ndarray) -> np.ndarray:
        # The probabilities are integer frequencies / 2^FREQ_BITS, exact in float64: recover the integers.
        freq = np.rint(probabilities * FREQ_TOTAL).astype(np.int64)
        counters = np.arange(self.counter, self.counter + len(freq), dtype=np.uint64)
        self.counter += len(freq)
        with np.errstate(over="ignore"):
            draws = (_splitmix64(counters ^ self.key) >> np.uint64(64 - FREQ_BITS)).astype(np.int64)
        return (np.cumsum(freq, axis=1) <= draws[:, None]).sum(axis=1)


@contextlib.contextmanager
def _temperature(codec: Codec, temperature: float) -> Iterator[None]:
    milli = round(temperature * 1000)
    if not 50 <= milli <= 5000:
        raise HvqError(f"temperature {temperature} is not in 0.05..5")
    priors = codec.prior.levels + codec.prior.stages
    for prior in priors:
        prior.temperature_milli = milli
    try:
        yield
    finally:
        for prior in priors:
            prior.temperature_milli = 1000


@torch.no_grad()
def sample_codes(codec: Codec, count: int, height: int, width: int, seed: int = 0, temperature: float = 1.0,
                 given: Sequence[torch.Tensor] = (), streams: int | None = None) -> list[list[torch.Tensor]]:
    """Code grids of `count` images of height x width: the `given` leading streams kept, the rest sampled."""
    if max(height, width) > codec.tile_size:
        raise HvqError(f"sample size {width}x{height}: at most {codec.tile_size} pixels on a side")
    streams = streams or codec.num_streams
    sizes = grid_sizes(height, width)
    codes: list[list[torch.Tensor]] = [[g.to(codec.device) for g in given] for _ in range(count)]
    with _temperature(codec, temperature):
        for stream in range(len(given), streams):
            samplers = [IntegerSampler(seed, image, stream) for image in range(count)]
            if stream < 3:
                grids = decode_level(codec.prior.levels[stream], samplers, [sizes[stream]] * count, codes)
            else:
                grids = [decode_stage(codec.prior.stages[stream - 3], sampler, image_codes)
                         for sampler, image_codes in zip(samplers, codes)]
            for image_codes, grid in zip(codes, grids):
                image_codes.append(grid)
    return codes


def sample_images(codec: Codec, count: int = 1, size: tuple[int, int] = (256, 256), seed: int = 0,
                  temperature: float = 1.0, source: bytes | None = None, keep_levels: int = 1) -> list[np.ndarray]:
    """(H, W, 3) uint8 samples. With `source` (.hvq bytes), its first keep_levels streams are kept and the
    rest sampled: variations of that picture, at its size."""
    given: list[torch.Tensor] = []
    width, height = size
    if source is not None:
        decoded = codec.decompress(source, levels=keep_levels)
        if len(decoded.codes) != 1:
            raise HvqError("variations need a file of one tile (at most "
                           f"{codec.tile_size} pixels on a side)")
        given = decoded.codes[0][:keep_levels]
        width, height = decoded.image.size
    codes = sample_codes(codec, count, height, width, seed, temperature, given)
    return [codec.decode_codes(image_codes, height, width) for image_codes in codes]


def grid(images: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Images of one size side by side in a near-square grid, white gaps between them."""
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    h, w = images[0].shape[:2]
    canvas = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), 255, np.uint8)
    for index, image in enumerate(images):
        r, c = divmod(index, columns)
        canvas[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = image
    return canvas

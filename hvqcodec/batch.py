"""Compressing many files on several cores: one worker process per core, each with its own codec and one
torch thread (the prior's wavefront steps are small: processes scale where threads do not)."""
from __future__ import annotations

import multiprocessing
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:
    from .codec import Progress

_codec = None


def _start(model: str | None, device: str) -> None:
    global _codec
    import torch

    from .codec import load_codec

    torch.set_num_threads(1)
    _codec = load_codec(model, device)


def _compress(task: tuple[str | bytes, int | None, float | None, int, int],
              progress: Progress | None = None) -> tuple[bytes, float, list[str]]:
    source, quality, target_bpp, max_pixels, effort = task
    if target_bpp is not None:
        from .ladder import compress_to_bpp

        result, _ = compress_to_bpp(_codec, source, target_bpp, max_pixels, effort)
    else:
        result = _codec.compress(source, quality, max_pixels=max_pixels, effort=effort, progress=progress)
    return result.data, result.bpp, list(result.warnings)


def compress_many(sources: Sequence[str | bytes], model: str | None, device: str, quality: int | None,
                  target_bpp: float | None, max_pixels: int, jobs: int, effort: int = 0,
                  progress: Progress | None = None) -> Iterator[tuple[bytes, float, list[str]]]:
    """Results in the order of `sources`, computed by `jobs` worker processes (in this process when 1, where
    `progress(done, total)` follows each file's tiles). A source is a path or an image file's bytes."""
    global _codec
    tasks = [(s if isinstance(s, bytes) else str(s), quality, target_bpp, max_pixels, effort) for s in sources]
    if jobs <= 1:
        from .codec import load_codec

        _codec = load_codec(model, device)  # cached: the CLI has loaded it already
        for task in tasks:
            yield _compress(task, progress)
        return
    with multiprocessing.get_context("spawn").Pool(jobs, initializer=_start, initargs=(model, device)) as pool:
        yield from pool.imap(_compress, tasks)

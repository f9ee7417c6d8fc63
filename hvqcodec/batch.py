"""Compressing files: each image by the coder that suits it (the runtime without torch, or the torch codec), and
many files on several cores: one worker process per core, each with its own coders on one thread (the priors'
steps are small: processes scale where threads do not)."""
from __future__ import annotations

import contextlib
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterator, Sequence

from .api import Imports, coder_for
from .imageio import load_image

if TYPE_CHECKING:
    from .filecoding import Progress

_model: str | None = None
_device = "auto"
_imports: Imports = contextlib.nullcontext
_in_worker = False


def _start(model: str | None, device: str, imports: Imports) -> None:
    global _model, _device, _imports, _in_worker
    _model, _device, _imports, _in_worker = model, device, imports, True


def _compress(task: tuple[str | bytes, int | None, float | None, int, int],
              progress: Progress | None = None) -> tuple[bytes, float, list[str]]:
    from .filecoding import compress_to_bpp

    source, quality, target_bpp, max_pixels, effort = task
    if _in_worker:  # one core to itself: its coder on one thread
        loaded = load_image(source)
        coder = coder_for(_model, _device, effort, _imports, 1)
    else:
        # The coder loads (its model read, its kernels prepared: 0.2 s) on a side thread while the image decodes
        # (a 12-megapixel PNG: 0.4-0.7 s), each on one core.
        with ThreadPoolExecutor(1, thread_name_prefix="hvqcodec-load") as side:
            pending = side.submit(coder_for, _model, _device, effort, _imports, None)
            loaded = load_image(source)  # (an image error is raised once the coder has loaded, as before)
            coder = pending.result()
    if target_bpp is not None:
        result, _ = compress_to_bpp(coder, loaded, target_bpp, max_pixels, effort)
    else:
        result = coder.compress(loaded, quality, max_pixels=max_pixels, effort=effort, progress=progress)
    return result.data, result.bpp, list(result.warnings)


def compress_many(sources: Sequence[str | bytes], model: str | None, device: str, quality: int | None,
                  target_bpp: float | None, max_pixels: int, jobs: int, effort: int = 0,
                  progress: Progress | None = None, imports: Imports = contextlib.nullcontext
                  ) -> Iterator[tuple[bytes, float, list[str]]]:
    """Results (file bytes, bpp, warnings) in the order of `sources`, computed by `jobs` worker processes (in this
    process when 1, where `progress(done, total)` follows each file's tiles). A source is a path or an image file's
    bytes; each is compressed by the coder `api.coder_for` chooses."""
    global _model, _device, _imports
    tasks = [(s if isinstance(s, bytes) else str(s), quality, target_bpp, max_pixels, effort) for s in sources]
    if jobs <= 1:
        _model, _device, _imports = model, device, imports
        for task in tasks:
            yield _compress(task, progress)
        return
    with multiprocessing.get_context("spawn").Pool(jobs, initializer=_start, initargs=(model, device, imports)) as pool:
        yield from pool.imap(_compress, tasks)

"""The `hvqcodec` command line: a thin layer over the package's API, a module per group of commands (coding.py:
compress, decompress, info, bench, sample; training.py: train; zoo.py: models; common.py: what they share).
Importing it imports no torch: `--help`, `info` and `models list` start at once, and a bomb is refused from its
header alone."""
from __future__ import annotations

import click

from .coding import bench, compress, decompress, info, sample
from .common import OPENMP_SPIN_COUNT  # noqa: F401 (the spin count the codec commands set)
from .training import train
from .zoo import models


def _step_function() -> str:
    """Which step function the level priors use on the CPU (`stepkernel` imports no torch: --version stays fast)."""
    from .. import stepkernel

    if stepkernel.available():
        if stepkernel.int8_available():
            return "step function: C, int8 path (AVX-512 VNNI" + (", AMX tiles)" if stepkernel.amx_int8() else ")")
        return "step function: C, int8 path off (HVQ_STEP_KERNEL_INT8=0)" if stepkernel.int8_supported() else \
            "step function: C"
    return "step function: torch (HVQ_STEP_KERNEL=0)" if stepkernel.built() else \
        "step function: torch (the C one is not built)"


def _decoder_kernels() -> str:
    """What the runtime's decoder runs on (`decoderkernel` imports numpy only)."""
    from .. import decoderkernel

    if not decoderkernel.available():
        return "decoder: plain numpy (the C kernels are not built)"
    return f"decoder: C, {decoderkernel.path()}" + (", bfloat16 tiles (AMX)" if decoderkernel.bf16_available() else "")


def _print_version(context: click.Context, _parameter, value: bool) -> None:
    """--version, made only when asked for (the kernels' checks import numpy: --help and info stay fast)."""
    if not value or context.resilient_parsing:
        return
    from importlib.metadata import version

    click.echo(f"{context.info_name} {version('hvqcodec')} ({_step_function()}; {_decoder_kernels()})")
    context.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version, the step function and the decoder kernels in use, and exit.")
def main() -> None:
    """hvqcodec: a learned image codec (hierarchical VQ-VAE + PixelCNN priors + range coding).

    \b
    Examples:
      hvqcodec compress photo.png                 # writes photo.hvq (quality 75)
      hvqcodec compress photo.png -q 95           # larger file, better picture
      hvqcodec compress photo.png --bpp 0.3       # the best quality that fits 0.3 bits per pixel
      hvqcodec decompress photo.hvq -o back.png
      hvqcodec decompress photo.hvq --levels 1    # quick preview from the top level
      hvqcodec info photo.hvq
      hvqcodec train autoencoder --data ../shared/datasets/train --out runs/ae
      hvqcodec models list
      hvqcodec bench                              # hvq vs PNG/JPEG/WebP/AVIF on built-in photos
      hvqcodec sample -n 8 --seed 1 -o samples.png
    """


for command in (compress, decompress, info, bench, sample, train, models):
    main.add_command(command)


def run() -> None:
    """The `hvqcodec` console script: the command group, then the interpreter's exit without a last garbage
    collection over every object torch's import made. That collection is most of the time Python takes to shut
    down after importing torch (0.9 s of `python -c "import torch"`), and freezing saves 0.6 s of a Kodak
    `compress` or `decompress` (5.58 -> 4.95 s, 5.94 -> 5.31 s, medians of seven interleaved runs on a 2-core
    AVX2 machine: `benchmarks/cli_time.py`, results/cli-time.json). Freezing moves those objects out of the
    collector's reach; exit handlers and file closing still run as usual. Only the console script does this: in
    a long-lived process (tests, the Python API) frozen objects would never be collected. For the same reason
    only here do the codec commands import torch with the collector off and freeze what the imports made
    (`common.codec_imports`)."""
    import gc

    from . import common

    common.console_script = True
    _reuse_freed_memory()
    try:
        main()
    finally:
        gc.freeze()


def _reuse_freed_memory() -> None:
    """The console script's large arrays from the heap, kept there once freed, so that the next array reuses the
    pages: glibc gives each large array its own mapping and returns it when the array is freed, and the kernel
    zeroes every page of the next fresh one (on a 12-megapixel decode, 7% of the CPU time went to that). Peak memory
    is unchanged; freed pages are not handed back until exit. glibc only; like `gc.freeze`, not for long-lived
    processes (the Python API)."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
    mallopt(m_mmap_max, 0)  # no mapping of its own for any allocation: all from the heap
    mallopt(m_trim_threshold, 1 << 30)  # and freed memory kept there (up to 1 GiB past the top)

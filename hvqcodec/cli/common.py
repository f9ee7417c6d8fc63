"""What the command line's commands share: one-line user errors, option types and options, input and output
paths, standard streams, progress over files, OpenMP's spin."""
from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import Callable

import click
from rich.console import Console

from ..errors import HvqError


console = Console(stderr=True)


def user_errors(func: Callable) -> Callable:
    """Turn the package's user-facing errors into one-line click errors (no tracebacks)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except HvqError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.Abort() from None
    return wrapper


def int_list(count: int | None, maximum: int | None = None) -> click.ParamType:
    """Comma-separated positive integers: `count` of them (any number, at least one, for None), each at most
    `maximum` when given."""
    what = f"{count if count else 'a list of'} comma-separated integers"
    bound = f" from 1 to {maximum}" if maximum else " (positive)"

    class IntList(click.ParamType):
        name = what

        def convert(self, value, param, ctx):
            if isinstance(value, (tuple, list)):
                return tuple(value)
            try:
                numbers = tuple(int(v) for v in str(value).split(","))
            except ValueError:
                self.fail(f"{value!r} is not {what}", param, ctx)
            if (count and len(numbers) != count) or min(numbers) <= 0 or (maximum and max(numbers) > maximum):
                self.fail(f"{value!r}: expected {what}{bound}", param, ctx)
            return numbers
    return IntList()


class FloatList(click.ParamType):
    """Comma-separated non-negative numbers (any count)."""
    name = "comma-separated numbers"

    def convert(self, value, param, ctx):
        if isinstance(value, (tuple, list)):
            return tuple(value)
        try:
            numbers = tuple(float(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a list of comma-separated numbers", param, ctx)
        if any(not n >= 0 for n in numbers):
            self.fail(f"{value!r}: every value must be a number >= 0", param, ctx)
        return numbers


def _short_openmp_spin() -> None:
    """Let torch's idle OpenMP threads spin only briefly before they sleep (unless the user chose a policy).
    Spinning threads make every parallel operation wait for a core as soon as another program is busy; threads
    that sleep at once slow every operation down on an idle machine. Measured with hvq-vr4 on 2 cores
    (`benchmarks/busy_machine.py`, kodim01, encode / decode): libgomp's default spin 0.47 / 1.09 s idle but 11.5 /
    5.9 s beside one busy process; OMP_WAIT_POLICY=PASSIVE 0.94 / 1.21 s idle, 0.73 / 1.17 s busy;
    GOMP_SPINCOUNT=3000 0.47 / 0.96 s idle, 1.20 / 1.42 s busy. Only takes effect before torch is imported,
    as here: the codec commands import it lazily. (GOMP_SPINCOUNT is libgomp's, which Linux builds of torch
    use; other OpenMP runtimes ignore it.)"""
    import os

    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", str(OPENMP_SPIN_COUNT))


OPENMP_SPIN_COUNT = 3000

def _numpy_blas_one_thread() -> None:
    """numpy's BLAS on one thread (unless the user chose), set before numpy is imported: the runtime without torch
    shares bands of rows out over its own threads, and OpenBLAS's threads beside them (spinning while they wait)
    made kodim01's decoder 0.54-0.63 s instead of 0.33 s on 2 cores (hvqcodec/npdecoder.py)."""
    import os
    import sys

    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


# Set by the console script (`cli.run`) only: a long-lived process (tests, the Python API) must never freeze its
# objects, which would then never be collected. `benchmarks/cli_time.py` turns the import half off to measure it.
console_script = False
collect_during_imports = False


@contextlib.contextmanager
def codec_imports():
    """Around a codec command's lazy imports (torch and the codec): libgomp's spin set first
    (`_short_openmp_spin`), and in the console script no garbage collection during the imports, their objects
    frozen afterwards. Importing torch makes a few hundred thousand objects that live as long as the process;
    the collector's full passes over them while they are made, and again during coding, take 0.2-0.3 s of a
    Kodak `compress` or `decompress` (`benchmarks/cli_time.py`)."""
    _short_openmp_spin()
    if not console_script or collect_during_imports:
        yield
        return
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()



max_pixels_option = click.option(
    "--max-pixels", type=click.IntRange(1), default=None, metavar="N",
    help="Refuse images (and files that decode to images) over N pixels (default 100,000,000).")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True, help="Where to run; auto picks CUDA when available.")


# As an input, standard input; as -o, standard output (the default output of standard input), as in cjpeg or
# cwebp: `hvqcodec compress - < photo.png > photo.hvq`, `hvqcodec decompress photo.hvq -o - | display`.
STANDARD_STREAM = "-"


def _output_paths(inputs: tuple[str, ...], output: str | None, suffix: str) -> list[Path | None]:
    """Where each input's result goes: beside it with `suffix`, or -o (a file for one input, else a folder);
    None for standard output."""
    if STANDARD_STREAM in inputs and len(inputs) > 1:
        raise click.BadParameter("'-' (standard input) must be the only input")
    if output == STANDARD_STREAM or (output is None and inputs == (STANDARD_STREAM,)):
        if len(inputs) > 1:
            raise click.BadParameter("standard output takes the result of one input only", param_hint="-o")
        return [None]
    if output is None:
        return [Path(p).with_suffix(suffix) for p in inputs]
    target = Path(output)
    if len(inputs) == 1 and not target.is_dir():
        return [target]
    if not target.is_dir():
        raise click.BadParameter(f"{output} is not a folder (needed for several inputs)", param_hint="-o")
    return [target / Path(p).with_suffix(suffix).name for p in inputs]


def _check_outputs(paths: list[Path | None], force: bool) -> None:
    for path in paths:
        if path is None:
            if sys.stdout.isatty():
                raise click.ClickException("refusing to write binary data to a terminal: redirect standard output "
                                           "or give -o FILE")
            continue
        if path.exists() and not force:
            raise click.ClickException(f"{path} exists (use --force to overwrite)")
        if not path.parent.is_dir():
            raise click.ClickException(f"{path.parent}: no such folder")


@contextlib.contextmanager
def _file_progress(sources: list, targets: list, verb: str):
    """A transient progress display over (source, target) pairs: a bar over the files when there are several;
    for a single file, a bar over its parts (a large image's tiles, a decode's streams and tiles) once there is
    more than one. Yields the codec's progress(done, total) callback for those parts (None for several files)
    and the pairs to iterate."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    single = len(sources) == 1
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        parts = None
        if single:
            parts_task = progress.add_task(f"{verb} {sources[0]}", total=None, visible=False)

            def parts(done: int, total: int) -> None:
                progress.update(parts_task, completed=done, total=total, visible=total > 1)
        files_task = progress.add_task(verb, total=len(sources), visible=not single)
        yield parts, progress.track(list(zip(sources, targets)), task_id=files_task)


HEADER_PREFIX_BYTES = 1 << 16  # enough for the header of any file up to thousands of tiles


def _read_header(path: str):
    """The header of an .hvq file, from its first bytes only (the whole file when the header is longer)."""
    from .. import container

    head = _read(path, HEADER_PREFIX_BYTES)
    try:
        return container.read_header(head)
    except container.ContainerError:
        if len(head) < HEADER_PREFIX_BYTES:
            raise
        return container.read_header(_read(path))


@contextlib.contextmanager
def _about(path: str):
    """Name the file in the one-line error of anything wrong with it (several files may be in one command)."""
    try:
        yield
    except HvqError as exc:
        raise click.ClickException(f"{_shown(path)}: {exc}") from None


def _write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _shown(path: str | Path | None) -> str:
    """How messages name an input or output: standard streams as <stdin> / <stdout>."""
    return "<stdout>" if path is None else "<stdin>" if str(path) == STANDARD_STREAM else str(path)


def _read(path: str, limit: int = -1) -> bytes:
    if path == STANDARD_STREAM:
        return sys.stdin.buffer.read(limit)
    try:
        with open(path, "rb") as handle:
            return handle.read(limit)
    except FileNotFoundError:
        raise click.ClickException(f"{path}: no such file") from None
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot read ({exc.strerror})") from None


CODING_BLOCK_HELP = ("Code the levels in independent blocks decoded in lockstep (fewer sequential steps, a little "
                     "more rate): N positions a side, RxC rows x columns, or one per level (top, mid, bottom) as "
                     "in 0,32,64; 0 is a whole tile (or its whole height or width). Fixed into the model's files.")


def _coding_block(ctx, param, value: str | None):
    """--coding-block SPEC -> PriorConfig.coding_block (None when not given)."""
    if value is None:
        return None
    from ..priors import parse_coding_block

    try:
        return parse_coding_block(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None

"""The `hvqcodec` command line: a thin layer over the package's API."""
from __future__ import annotations

import contextlib
import functools
import shlex
import sys
from pathlib import Path
from typing import Callable

import click
from rich.console import Console

from .errors import HvqError

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


def _step_function() -> str:
    """Which step function the level priors use on the CPU (`stepkernel` imports no torch: --version stays fast)."""
    from . import stepkernel

    if stepkernel.available():
        return "step function: C"
    return "step function: torch (HVQ_STEP_KERNEL=0)" if stepkernel.built() else \
        "step function: torch (the C one is not built)"


max_pixels_option = click.option(
    "--max-pixels", type=click.IntRange(1), default=None, metavar="N",
    help="Refuse images (and files that decode to images) over N pixels (default 100,000,000).")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True, help="Where to run; auto picks CUDA when available.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="hvqcodec", message=f"%(prog)s %(version)s ({_step_function()})")
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


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-o", "--output", type=click.Path(allow_dash=True),
              help="Output file (one input) or folder (several); '-' for standard output.")
@click.option("--model", default=None, help="Model name (default: the shipped default; see `hvqcodec models list`).")
@click.option("-q", "--quality", type=click.IntRange(1, 100), default=None,
              help="1-100: higher gives a larger file and a better picture (default 75).")
@click.option("--bpp", "target_bpp", type=click.FloatRange(0, min_open=True), default=None,
              help="Aim for this many bits per pixel: the highest quality whose file fits.")
@click.option("--effort", type=click.IntRange(0, 100), default=0, show_default=True,
              help="Encoder refinement steps: a better picture for about the same size from quality 42 up "
                   "(0.1-0.5 dB on Kodak at 5); each step costs a decoder pass forwards and backwards (5: a "
                   "4-5x slower encode). Files and decoding are unchanged.")
@max_pixels_option
@click.option("--jobs", type=click.IntRange(0), default=0, show_default=True,
              help="Worker processes for many files (0: one per core from 4 files on, on the CPU).")
@device_option
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@user_errors
def compress(images, output, model, quality, target_bpp, effort, max_pixels, jobs, device, force) -> None:
    """Compress images into .hvq files.

    \b
    Examples:
      hvqcodec compress photo.png                  # -> photo.hvq, default quality
      hvqcodec compress photo.png -q 90            # larger file, better picture
      hvqcodec compress photo.png --bpp 0.5        # the best quality that fits 0.5 bits per pixel
      hvqcodec compress photo.png -q 100 --effort 5    # slower encode, better picture, same size
      hvqcodec compress *.png -o compressed/       # into a folder
      hvqcodec compress photo.jpg -o out.hvq --force
      hvqcodec compress - < photo.png > photo.hvq  # standard input to standard output
    """
    _short_openmp_spin()
    import os

    from .batch import compress_many
    from .codec import load_codec
    from .container import DEFAULT_MAX_PIXELS
    from .device import resolve_device
    from .fileio import atomic_write_bytes

    if quality is not None and target_bpp is not None:
        raise click.UsageError("give either --quality or --bpp, not both")
    limit = max_pixels or DEFAULT_MAX_PIXELS
    targets = _output_paths(images, output, ".hvq")
    _check_outputs(targets, force)
    resolved = str(resolve_device(device))
    if jobs == 0:
        jobs = min(os.cpu_count() or 1, len(images)) if len(images) >= 4 and resolved == "cpu" else 1
    load_codec(model, resolved)  # a bad model name fails here, once, before any worker starts
    sources = [_read(STANDARD_STREAM) if image == STANDARD_STREAM else image for image in images]
    names = [_shown(image) for image in images]
    with _file_progress(names, targets, "compressing") as (parts, pairs):
        results = compress_many(sources, model, resolved, quality, target_bpp, limit, jobs, effort, parts)
        for source, target in pairs:
            data, bpp, notes, used = next(results)
            if target_bpp is not None and bpp > target_bpp:
                console.print(f"[yellow]warning[/]: {source}: even quality {used} takes {bpp:.4f} bpp")
            for note in notes:
                console.print(f"[yellow]warning[/]: {source}: {note}")
            if target is None:
                _write_stdout(data)
            else:
                atomic_write_bytes(target, data)
            console.print(f"{source} -> {_shown(target)}: {len(data):,} bytes, {bpp:.4f} bpp")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-o", "--output", type=click.Path(allow_dash=True),
              help="Output image (one input) or folder (several); the suffix picks the format (default .png); "
                   "'-' for PNG on standard output.")
@click.option("--levels", type=click.IntRange(1, 11), help="Decode only the first N streams: 1 top, 2 top + mid (quick, coarse previews), 3 all levels, 4+ adds refinement stages.")
@max_pixels_option
@device_option
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@user_errors
def decompress(files, output, levels, max_pixels, device, force) -> None:
    """Decompress .hvq files into images.

    A truncated file decodes to the preview its complete levels allow, with a warning.

    \b
    Examples:
      hvqcodec decompress photo.hvq                # -> photo.png
      hvqcodec decompress photo.hvq -o photo.webp  # lossless WebP
      hvqcodec decompress photo.hvq --levels 2 -o preview.png
      hvqcodec decompress photo.hvq -o - > photo.png   # PNG on standard output ('-' reads standard input)
    """
    _short_openmp_spin()
    from . import container

    limit = max_pixels or container.DEFAULT_MAX_PIXELS
    targets = _output_paths(files, output, ".png")
    _check_outputs(targets, force)
    stdin = _read(STANDARD_STREAM) if STANDARD_STREAM in files else None
    for source in files:  # every header checked before torch is even imported: a bomb costs nothing
        header = container.read_header(stdin) if source == STANDARD_STREAM else _read_header(source)
        container.check_limits(header, container.TILE_SIZE, limit)
    from .codec import codec_for
    from .imageio import encode_image, save_image

    with _file_progress([_shown(f) for f in files], targets, "decompressing") as (parts, pairs):
        for source, (name, target) in zip(files, pairs):
            data = stdin if source == STANDARD_STREAM else _read(source)
            decoded = codec_for(data, device).decompress(data, levels, limit, progress=parts)
            for note in decoded.warnings:
                console.print(f"[yellow]warning[/]: {name}: {note}")
            if target is None:
                _write_stdout(encode_image(decoded.image, "PNG"))
            else:
                save_image(decoded.image, target, force=force)
            console.print(f"{name} -> {_shown(target)} ({decoded.image.width}x{decoded.image.height} "
                          f"{decoded.image.mode}, {decoded.levels} levels)")


HEADER_PREFIX_BYTES = 1 << 16  # enough for the header of any file up to thousands of tiles


def _read_header(path: str):
    """The header of an .hvq file, from its first bytes only (the whole file when the header is longer)."""
    from . import container

    head = _read(path, HEADER_PREFIX_BYTES)
    try:
        return container.read_header(head)
    except container.ContainerError:
        if len(head) < HEADER_PREFIX_BYTES:
            raise
        return container.read_header(_read(path))


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


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@user_errors
def info(files) -> None:
    """Show the header of .hvq files: model, size, mode, levels, bytes per level, bpp.

    \b
    Examples:
      hvqcodec info photo.hvq
    """
    from . import container
    from .names import stream_names

    out = Console()
    for path in files:
        data = _read(path)
        parsed = container.unpack(data)
        header = parsed.header
        pixels = header.width * header.height
        out.print(f"[bold]{_shown(path)}[/]: hvq format {header.version}, model {header.model_name} "
                  f"({header.model_hash}), {header.width}x{header.height} {header.mode}, "
                  f"{header.num_tiles} tile(s), {header.levels} stream(s)"
                  + (f" ([yellow]truncated[/]: {parsed.truncated_levels} stream(s) missing)" if parsed.truncated_levels else ""))
        for name, lengths in zip(stream_names(container.MAX_LEVELS - 3), header.stream_lengths):
            out.print(f"  {name:>6}: {sum(lengths):>9,} bytes  {8 * sum(lengths) / pixels:.4f} bpp")
        if header.alpha_length:
            out.print(f"   alpha: {header.alpha_length:>9,} bytes  {8 * header.alpha_length / pixels:.4f} bpp")
        out.print(f"  header: {header.header_size + container.TRAILER_BYTES:>9,} bytes (with the trailing checksum)")
        out.print(f"   total: {len(data):>9,} bytes  {8 * len(data) / pixels:.4f} bpp")


def _codec_list(ctx, param, value: str | None) -> tuple[str, ...] | None:
    """--codecs: comma-separated names, checked against the known codecs."""
    from .bench import CODEC_NAMES

    if value is None:
        return None
    names = tuple(dict.fromkeys(v.strip().lower() for v in value.split(",") if v.strip()))
    unknown = [n for n in names if n not in CODEC_NAMES]
    if unknown or not names:
        raise click.BadParameter(f"unknown codec(s): {', '.join(unknown) or '(none given)'}; "
                                 f"valid: {','.join(CODEC_NAMES)}")
    return names


@main.command()
@click.argument("folder", metavar="[DIR]", required=False, type=click.Path(file_okay=False))
@click.option("--codecs", callback=_codec_list, metavar="LIST",
              help="Comma-separated codecs out of hvq,png,jpeg,webp,avif,jpeg2000 (default: all that are available).")
@click.option("--model", default=None, metavar="NAMES",
              help="hvq model(s) to test, comma-separated, or 'all' (default: the default model).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write the results as JSON (CompressAI's shape).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write an RD plot (PNG): PSNR and MS-SSIM vs bpp.")
@click.option("--reference", type=click.Path(file_okay=False, exists=True),
              help="Folder of CompressAI result JSONs to draw as dashed reference curves.")
@device_option
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True,
              help="Processes for the classic codecs (hvq runs in the main process).")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True,
              help="Runs per classic encode/decode; the median time is reported.")
@click.option("--reuse", "reuse_path", type=click.Path(dir_okay=False, exists=True), metavar="RESULTS.json",
              help="Take the classic codecs' results from an earlier --json of the same images (hvq is measured).")
@click.option("--effort", type=click.IntRange(0, 100), default=0, show_default=True,
              help="hvq encoder refinement steps (as `compress --effort`): every quality compressed on its own.")
@user_errors
def bench(folder, codecs, model, json_path, plot_path, reference, device, jobs, repeats, reuse_path, effort) -> None:
    """Benchmark hvq against PNG, JPEG, WebP, AVIF and JPEG 2000 (through Pillow) on a folder of images.

    Every codec codes the same 8-bit RGB pixels in memory: bpp of the whole file, RGB PSNR, MS-SSIM, median
    encode and decode times. hvq gives one point per entry of the model's quality ladder (previews are the
    bytes of a file holding only their streams). Prints tables with BD-rates and same-PSNR rates. Without DIR,
    three built-in photos.

    \b
    Examples:
      hvqcodec bench                                   # the built-in sample photos, all codecs
      hvqcodec bench ../shared/datasets/kodak --json bench.json --plot rd.png \\
          --reference ../shared/reference/compressai-kodak
      hvqcodec bench photos/ --codecs hvq,jpeg,avif --jobs 2
      hvqcodec bench photos/ --model hvq-ecvq,hvq-ladder --codecs hvq,jpeg
      hvqcodec bench ../shared/datasets/kodak --reuse old.json --json new.json   # a new model, same rivals
      hvqcodec bench ../shared/datasets/kodak --codecs hvq,jpeg --effort 10      # the slow, better encoder
    """
    from . import bench as bench_module
    from .rdplot import save_rd_plot

    plan = bench_module.plan_bench(folder, codecs, model, device, jobs, repeats)
    plan.effort = effort
    if reuse_path:
        bench_module.reuse_classic(plan, reuse_path)
    references, notes = bench_module.load_references(reference) if reference else ([], [])
    plan.notes.extend(notes)
    console.print(f"benchmarking {', '.join([*(f'hvq:{m}' for m in plan.models), *plan.classic])} "
                  f"on {len(plan.images)} image(s)"
                  + (f"; {', '.join(plan.reused)} from {reuse_path}" if plan.reused else ""))
    results = bench_module.run_bench(plan, console)
    bench_module.print_report(results, Console())
    if json_path:
        bench_module.write_json(json_path, results)
        console.print(f"results: {json_path}")
    if plot_path:
        save_rd_plot(results, plot_path, references)
        console.print(f"plot: {plot_path}")


def _size(ctx, param, value: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter("expected WIDTHxHEIGHT, e.g. 256x256") from None
    if not (1 <= width and 1 <= height):
        raise click.BadParameter("width and height must be at least 1")
    return width, height


@main.command()
@click.option("-n", "count", type=click.IntRange(1, 64), default=1, show_default=True, help="How many images.")
@click.option("--size", callback=_size, default="256x256", show_default=True, help="WIDTHxHEIGHT of each sample.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Same seed, same images, anywhere.")
@click.option("--temperature", type=click.FloatRange(0.05, 5.0), default=1.0, show_default=True,
              help="Below 1: safer, flatter samples; above 1: wilder ones.")
@click.option("--model", default=None, help="Model name (default: the shipped default).")
@click.option("--from", "source", type=click.Path(dir_okay=False), help="A .hvq file: sample variations of it.")
@click.option("--keep-levels", type=click.IntRange(1, 10), default=1, show_default=True,
              help="With --from: streams of the file to keep (1 top, 2 top + mid, ...); the rest are sampled.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="samples.png", show_default=True,
              help="Output PNG: one image, or a grid of them.")
@device_option
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@user_errors
def sample(count, size, seed, temperature, model, source, keep_levels, output, device, force) -> None:
    """Draw new images from the priors: top level first, each level below conditioned on those above.

    Codes are drawn from the same integer probabilities the decoder uses, with a seeded integer RNG, so a
    seed gives the same codes on every machine. These are samples of a small compression model: textures and
    colours of photos, not recognisable scenes.

    \b
    Examples:
      hvqcodec sample -n 8 --size 256x256 --seed 1 -o samples.png
      hvqcodec sample -n 4 --temperature 0.8 -o calm.png
      hvqcodec sample --from photo.hvq --keep-levels 2 -n 4 -o variations.png
    """
    _short_openmp_spin()
    from PIL import Image

    from .codec import codec_for, load_codec
    from .fileio import atomic_write_bytes
    from .sampling import grid, sample_images

    target = Path(output)
    _check_outputs([target], force)
    data = _read(source) if source else None
    codec = codec_for(data, device) if data is not None else load_codec(model, device)
    with console.status(f"sampling {count} image(s)"):
        images = sample_images(codec, count, size, seed, temperature, data, keep_levels)
    import io
    buffer = io.BytesIO()
    Image.fromarray(grid(images) if len(images) > 1 else images[0]).save(buffer, "PNG")
    atomic_write_bytes(target, buffer.getvalue())
    height, width = images[0].shape[:2]
    console.print(f"wrote {target}: {count} sample(s) of {width}x{height} from {codec.name}, seed {seed}, "
                  f"temperature {temperature}")


@main.group()
def train() -> None:
    """Train the models on a folder of images."""


def training_options(steps: int, crop: int, crop_help: str, lr: float, warmup: int, val_every: int, out_help: str):
    """The options both training commands share, with each command's defaults."""
    options = [
        click.option("--data", required=True, type=click.Path(file_okay=False),
                     help="Folder of training images (searched recursively)."),
        click.option("--val", type=click.Path(file_okay=False),
                     help="Folder of validation images (left out of training if inside --data)."),
        click.option("--out", required=True, type=click.Path(file_okay=False), help=out_help),
        click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out image paths matching GLOB (repeatable)."),
        click.option("--resume", is_flag=True, help="Continue the run in --out exactly where it stopped."),
        click.option("--steps", type=click.IntRange(1), default=steps, show_default=True, help="Total optimizer steps."),
        click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True),
        click.option("--crop", type=click.IntRange(16), default=crop, show_default=True, help=crop_help),
        click.option("--lr", type=click.FloatRange(0, min_open=True), default=lr, show_default=True,
                     help="Peak learning rate."),
        click.option("--warmup", type=click.IntRange(0), default=warmup, show_default=True, help="Warmup steps."),
        click.option("--seed", type=int, default=0, show_default=True),
        device_option,
        click.option("--val-every", type=click.IntRange(1), default=val_every, show_default=True),
        click.option("--checkpoint-every", type=click.IntRange(1), default=250, show_default=True),
        click.option("--time-budget", type=click.FloatRange(0), default=0, show_default=True, metavar="MINUTES",
                     help="Stop after this many minutes (0: no limit); the learning-rate schedule then runs on "
                          "time, whichever of steps and minutes ends first."),
    ]

    def decorate(func: Callable) -> Callable:
        for option in reversed(options):
            func = option(func)
        return func
    return decorate


def _initial_weights(source: str, kind: str) -> dict:
    """--init-from: the weights of a training checkpoint (a .pt file of this kind) or, for an autoencoder, of a
    shipped model."""
    from .train import load_checkpoint

    if source.endswith(".pt") or kind != "autoencoder":
        return load_checkpoint(Path(source), kind)["model"]
    from .zoo import load_model
    return load_model(source).state_dict()


_SHARED_TRAINING = ("data", "val", "out", "exclude", "steps", "batch_size", "crop", "lr", "warmup", "seed", "device",
                    "val_every", "checkpoint_every", "time_budget")


def _train_options(options_type: type, shared: dict, **extra):
    """Build a TrainOptions (or subclass) from the shared options, recording the command line for the manifest."""
    if shared["crop"] % 16:
        raise click.BadParameter("must be a multiple of 16", param_hint="--crop")
    values = {k: shared[k] for k in _SHARED_TRAINING}
    values["exclude"] = tuple(values["exclude"])
    command = " ".join(["hvqcodec"] + [shlex.quote(a) for a in sys.argv[1:]])
    return options_type(**values, **extra, command=command)


@train.command("autoencoder")
@training_options(steps=10_000, crop=128, crop_help="Crop size in pixels (multiple of 16).", lr=1.5e-3, warmup=500,
                  val_every=500, out_help="Run folder: checkpoint.pt and train_log.jsonl.")
@click.option("--widths", type=int_list(3), default="64,96,128", show_default=True, help="Channels at /4, /8, /16.")
@click.option("--encoder-depths", type=int_list(3), default="2,3,3", show_default=True, help="ConvNeXt blocks per encoder stage.")
@click.option("--decoder-depths", type=int_list(3), default="3,3,4", show_default=True, help="Blocks in the /16, /8 context and /4 decoder stages.")
@click.option("--codebook-sizes", type=int_list(3), default="512,512,512", show_default=True, help="Codes per level: top, mid, bottom.")
@click.option("--code-dim", type=click.IntRange(1), default=32, show_default=True, help="Dimension of codebook vectors.")
@click.option("--refine-stages", type=click.IntRange(0, 8), default=0, show_default=True,
              help="Residual refinement stages at the bottom level (the quality ladder).")
@click.option("--refine-groups", type=click.IntRange(1), default=4, show_default=True,
              help="Product-quantiser groups per refinement stage (must divide --code-dim).")
@click.option("--refine-codebook-size", type=click.IntRange(2, 4096), default=32, show_default=True,
              help="Codes per group codebook of a refinement stage.")
@click.option("--refine-lambdas", type=FloatList(), default="", metavar="L1,L2,...",
              help="Rate weight per refinement stage: entropy-constrained code choice (distance + L * bits under "
                   "the codebook's usage), e.g. 0.002,0.0007,0.0002. Default: nearest codes.")
@click.option("--bottom-lambdas", type=FloatList(), default="", metavar="L1,L2,...",
              help="Rate weights for the bottom codes, one drawn per training sample (variable rate: the ladder "
                   "then chooses among them), e.g. 0,0.003,0.01,0.03. Default: nearest codes.")
@click.option("--detail-head", is_flag=True, help="Add a linear path from the /4 decoder features to the pixels.")
@click.option("--half-depth", type=click.IntRange(1, 16), default=1, show_default=True,
              help="ConvNeXt blocks at /2 in the decoder (extra ones start as the identity).")
@click.option("--post-filter", type=int_list(2), default=None, metavar="CHANNELS,LAYERS",
              help="A full-resolution residual filter after the decoder (hvqcodec/postfilter.py), e.g. 32,3; with "
                   "--init-from a model that has one, its weights are copied and train with the decoder.")
@click.option("--init-from", metavar="MODEL|CHECKPOINT",
              help="Start from a shipped model's weights, or a checkpoint.pt's (same-shaped tensors).")
@click.option("--decoder-only", is_flag=True,
              help="Train only the decoder (with --init-from): every image keeps its codes, so the priors of the "
                   "model it starts from stay valid; deeper --decoder-depths/--half-depth add capacity.")
@click.option("--encoder-only", is_flag=True,
              help="Train only the encoder (with --init-from): codebooks, context path and decoder stay fixed and the "
                   "encoder learns to choose the codes this decoder renders best; deeper --encoder-depths add "
                   "capacity. The codes change, so train the priors again afterwards.")
@user_errors
def train_autoencoder_command(resume, widths, encoder_depths, decoder_depths, codebook_sizes, code_dim,
                              refine_stages, refine_groups, refine_codebook_size, refine_lambdas, bottom_lambdas,
                              detail_head, half_depth, post_filter, init_from, decoder_only, encoder_only,
                              **shared) -> None:
    """Train the 3-level hierarchical VQ-VAE.

    Images are decoded once and cached in memory; each step draws random crops (random 0.5-1x downscale,
    horizontal flips). Ctrl-C saves a checkpoint; --resume continues from it (model settings then come from
    the checkpoint).

    \b
    Examples:
      hvqcodec train autoencoder --data ../shared/datasets/train \\
          --val ../shared/datasets/train/cid22/validation --out runs/ae --steps 6500
      hvqcodec train autoencoder --data photos/ --out runs/ae --resume --steps 8000
    """
    from .autoencoder import AutoencoderConfig
    from .train import TrainOptions, train_autoencoder

    options = _train_options(TrainOptions, shared, decoder_only=decoder_only, encoder_only=encoder_only)
    if decoder_only and encoder_only:
        raise click.BadParameter("choose one of --decoder-only and --encoder-only", param_hint="--encoder-only")
    if decoder_only and not (init_from or resume):
        raise click.BadParameter("needs --init-from (a trained model whose codes to keep)", param_hint="--decoder-only")
    if encoder_only and not (init_from or resume):
        raise click.BadParameter("needs --init-from (a trained model whose decoder to keep)", param_hint="--encoder-only")
    if code_dim % refine_groups:
        raise click.BadParameter(f"must divide --code-dim {code_dim}", param_hint="--refine-groups")
    if refine_lambdas and len(refine_lambdas) != refine_stages:
        raise click.BadParameter(f"give one value per refinement stage ({refine_stages})",
                                 param_hint="--refine-lambdas")
    config = AutoencoderConfig(widths=widths, encoder_depths=encoder_depths, decoder_depths=decoder_depths,
                               codebook_sizes=codebook_sizes, code_dim=code_dim, refine_stages=refine_stages,
                               refine_groups=refine_groups, refine_codebook_size=refine_codebook_size,
                               refine_lambdas=refine_lambdas, bottom_lambdas=bottom_lambdas, detail_head=detail_head,
                               half_depth=half_depth, post_filter=post_filter or ())
    initial = _initial_weights(init_from, "autoencoder") if init_from and not resume else None
    train_autoencoder(options, config, resume=resume, console=console, init_from=initial)
    console.print(f"done: checkpoint in {Path(options.out) / 'checkpoint.pt'}")
    _end_distributed_worker()


CODING_BLOCK_HELP = ("Code the levels in independent blocks decoded in lockstep (fewer sequential steps, a little "
                     "more rate): N positions a side, RxC rows x columns, or one per level (top, mid, bottom) as "
                     "in 0,32,64; 0 is a whole tile (or its whole height or width). Fixed into the model's files.")


def _coding_block(ctx, param, value: str | None):
    """--coding-block SPEC -> PriorConfig.coding_block (None when not given)."""
    if value is None:
        return None
    from .priors import parse_coding_block

    try:
        return parse_coding_block(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@train.command("priors")
@click.option("--model", help="Shipped model whose autoencoder gives the codes (default: the default model).")
@training_options(steps=3000, crop=128, crop_help="Pixel crop size whose codes form one sample.", lr=2e-3, warmup=200,
                  val_every=250, out_help="Run folder: checkpoint.pt, codes.pt, train_log.jsonl.")
@click.option("--code-crops", type=click.IntRange(1), default=2000, show_default=True, help="Crops encoded once into the training set.")
@click.option("--channels", type=click.IntRange(1), default=64, show_default=True, help="Prior width.")
@click.option("--causal-blocks", type=click.IntRange(0), default=2, show_default=True, help="1x1 gated blocks after the masked conv.")
@click.option("--cond-blocks", type=click.IntRange(0), default=3, show_default=True, help="3x3 gated blocks over the upper levels.")
@click.option("--stage-channels", type=click.IntRange(1), default=32, show_default=True, help="Width of the refinement-stage priors.")
@click.option("--stage-blocks", type=click.IntRange(0), default=2, show_default=True, help="3x3 gated blocks in each stage prior.")
@click.option("--coding-block", default="0", show_default=True, callback=_coding_block, metavar="N|RxC|T,M,B",
              help=CODING_BLOCK_HELP)
@click.option("--subpixel-cond/--no-subpixel-cond", default=False, show_default=True,
              help="Condition each of the 4 positions under an upper code on its own projection of the levels above.")
@click.option("--init-from", type=click.Path(dir_okay=False), metavar="CHECKPOINT",
              help="Start from a priors checkpoint's weights (same-shaped tensors), e.g. runs/priors/checkpoint.pt.")
@user_errors
def train_priors_command(model, resume, code_crops, channels, causal_blocks, cond_blocks, stage_channels,
                         stage_blocks, coding_block, subpixel_cond, init_from, **shared) -> None:
    """Train the PixelCNN priors on the codes a shipped autoencoder gives.

    Random crops of the training images are encoded once into code grids (kept in --out/codes.pt); the three
    level priors are then trained jointly, reporting bits per code per level. Ship them with
    `hvqcodec models export AE_CHECKPOINT --name NAME --priors OUT/checkpoint.pt --force`.

    \b
    Examples:
      hvqcodec train priors --model hvq-small --data ../shared/datasets/train \\
          --val ../shared/datasets/train/cid22/validation --out runs/priors
      hvqcodec train priors --data photos/ --out runs/priors --resume --steps 5000
    """
    from .prior_training import PriorTrainOptions, train_priors
    from .priors import PriorConfig

    from .zoo import default_model

    options = _train_options(PriorTrainOptions, shared, model=model or default_model(), code_crops=code_crops)
    config = PriorConfig(channels=channels, causal_blocks=causal_blocks, cond_blocks=cond_blocks,
                         stage_channels=stage_channels, stage_blocks=stage_blocks, coding_block=coding_block,
                         subpixel_cond=subpixel_cond)
    initial = _initial_weights(init_from, "priors") if init_from and not resume else None
    train_priors(options, config, resume=resume, console=console, init_from=initial)
    console.print(f"done: checkpoint in {Path(options.out) / 'checkpoint.pt'}")
    _end_distributed_worker()


@train.command("post-filter")
@click.option("--model", help="Shipped model whose pictures to filter (default: the default model).")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="Training images.")
@click.option("--val", type=click.Path(exists=True, file_okay=False),
              help="Held-out images: left out of training, PSNR with and without the filter reported at the end.")
@click.option("--exclude", multiple=True, help="Glob pattern of images to leave out (repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder: checkpoint.pt, train_log.jsonl.")
@click.option("--channels", type=click.IntRange(1), default=32, show_default=True, help="Filter width.")
@click.option("--layers", type=click.IntRange(2), default=3, show_default=True, help="3x3 convolutions.")
@click.option("--qualities", type=int_list(None, maximum=100), default="1,9,26,51,75,92,100", show_default=True,
              help="Qualities whose reconstructions it learns from (comma-separated).")
@click.option("--crops", type=click.IntRange(1), default=200, show_default=True, help="Training crops, one per image.")
@click.option("--crop", type=click.IntRange(64), default=192, show_default=True, help="Crop size in pixels.")
@click.option("--steps", type=click.IntRange(1), default=100_000, show_default=True)
@click.option("--time-budget", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Minutes of training after the crops are decoded (0: all steps); the learning rate follows it.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@user_errors
def train_post_filter_command(model, data, val, exclude, out, channels, layers, qualities, crops, crop, steps,
                              time_budget, lr, seed) -> None:
    """Train a full-resolution post-filter for a shipped model's pictures (its codes and decoder fixed).

    Random crops of the training images are coded and decoded once at several qualities; a small residual
    filter then learns to bring those pictures closer to the originals. Add it to the model as a new model
    with `hvqcodec models add-filter OUT/checkpoint.pt --to MODEL --name NEW`, then calibrate NEW.

    \b
    Examples:
      hvqcodec train post-filter --model hvq-vr6 --data ../shared/datasets/train \\
          --val ../shared/datasets/train/cid22/validation --exclude '*844297.png' --out runs/pf --time-budget 30
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .postfilter import PostFilterOptions, train_post_filter

    options = PostFilterOptions(data=data, out=out, model=model, val=val, exclude=exclude, channels=channels,
                                layers=layers, qualities=qualities, crops=crops, crop=crop, steps=steps,
                                time_budget=time_budget, lr=lr, seed=seed,
                                command=" ".join(["hvqcodec"] + [shlex.quote(a) for a in sys.argv[1:]]))
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("post-filter", total=1.0)
        checkpoint = train_post_filter(options, lambda text, done: progress.update(task, description=text,
                                                                                   completed=done))
    for row in checkpoint["validation"]:
        console.print(f"quality {row['quality']:>3}: {row['psnr_without']:.3f} -> {row['psnr_with']:.3f} dB "
                      f"({row['psnr_with'] - row['psnr_without']:+.3f})")
    console.print(f"done: {checkpoint['steps']} steps, checkpoint in {Path(out) / 'checkpoint.pt'}")


def _end_distributed_worker() -> None:
    """A torchrun worker whose training is done (checkpoint written atomically, process group destroyed) exits
    here, skipping the interpreter's teardown: there gloo's leftover threads now and then abort a finished
    process ("terminate called without an active exception", exit -6, which fails the whole run; seen in CI
    about once in a few dozen runs even after a barrier and destroy_process_group)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@main.group()
def models() -> None:
    """List, export, calibrate and derive models."""


@models.command("list")
@user_errors
def models_list() -> None:
    """List the shipped models with their hash and measured metrics.

    \b
    Examples:
      hvqcodec models list
    """
    from rich.table import Table

    from .manifest import available_models, default_model, models_dir

    default = default_model()
    table = Table(title=f"models in {models_dir()}")
    for column in ("name", "sha256", "parameters", "steps", "streams", "quality ladder (calibration bpp, PSNR)",
                   "Kodak"):
        table.add_column(column)
    for name, entry in sorted(available_models().items()):
        config = entry.get("config", {})
        ladder = entry.get("ladder") or []
        span = (f"{len(ladder)} points, {ladder[0]['calibration_bpp']:.2f}-{ladder[-1]['calibration_bpp']:.2f} bpp, "
                f"{ladder[0]['calibration_psnr']:.1f}-{ladder[-1]['calibration_psnr']:.1f} dB" if ladder else "-")
        codec = entry.get("metrics", {}).get("codec", {})
        kodak = f"{codec['bpp']:.3f} bpp, {codec['psnr']:.2f} dB" if "bpp" in codec else "-"
        variant = f" (variant of {entry['variant_of']})" if "variant_of" in entry else ""
        table.add_row(name + (" (default)" if name == default else "") + variant, entry["sha256"][:12],
                      f"{entry.get('parameters', 0) / 1e6:.2f}M", str(entry.get("training_steps", "-")),
                      str(3 + config.get("refine_stages", 0)), span, kodak)
    Console().print(table)


@models.command("calibrate")
@click.argument("name")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Training images (never the evaluation set).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out image paths matching GLOB (repeatable).")
@click.option("--images", "count", type=click.IntRange(1), default=12, show_default=True, help="Images to measure on.")
@click.option("--crop", type=click.IntRange(16), default=512, show_default=True, help="Center crop of each image, in pixels.")
@click.option("--models-dir", type=click.Path(file_okay=False), help="Models folder (default: the shipped models/).")
@device_option
@user_errors
def models_calibrate(name, data, exclude, count, crop, models_dir, device) -> None:
    """Calibrate a model's quality ladder (quality 1-100 -> streams and lambda) on training images.

    Every candidate operating point is measured (bpp and PSNR, whole files); the points no cheaper point beats
    are spread over quality 1-100 and written into the manifest.

    \b
    Examples:
      hvqcodec models calibrate hvq-ladder --data ../shared/datasets/train/bsds500 --images 12
    """
    import random

    from rich.progress import Progress

    from .codec import Codec
    from .data import center_crops, find_images, load_rgb
    from .ladder import build_ladder, candidate_points, measure_points
    from .zoo import load_bundle, read_manifest, write_manifest, models_dir as default_dir
    from .device import resolve_device

    folder = Path(models_dir) if models_dir else default_dir()
    codec = Codec(load_bundle(name, folder), resolve_device(device))
    paths = find_images(data, exclude)
    paths = random.Random(0).sample(paths, min(count, len(paths)))
    crops = center_crops([load_rgb(p) for p in paths], crop)
    images = [(c.permute(1, 2, 0) * 255).round().byte().numpy() for c in crops]
    points = candidate_points(codec.num_streams, bottom_lambdas=codec.autoencoder.config.bottom_lambdas)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("measuring operating points", total=len(points) * len(images))
        measured = measure_points(codec, images, points, lambda: progress.advance(task))
    ladder = build_ladder(measured)
    manifest = read_manifest(folder)
    manifest["models"][name]["ladder"] = ladder
    manifest["models"][name]["ladder_calibration"] = {
        "command": " ".join(["hvqcodec"] + sys.argv[1:]), "images": [str(p) for p in paths], "crop": crop,
        "measured": measured}
    write_manifest(manifest, folder)
    for entry in ladder:
        stage = f" stage lambda {entry['stage_lambda']:<6}" if "stage_lambda" in entry else ""
        stage += f" bottom lambda {entry['bottom_lambda']:<6}" if "bottom_lambda" in entry else ""
        console.print(f"quality {entry['quality']:>3}: {entry['streams']} streams, lambda {entry['lambda']:<6}{stage} "
                      f"{entry['calibration_bpp']:.4f} bpp {entry['calibration_psnr']:.2f} dB")


@models.command("add-filter")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--to", "base", required=True, help="The model the filter was trained for.")
@click.option("--name", required=True, help="Name of the new model.")
@click.option("--models-dir", type=click.Path(file_okay=False), help="Models folder (default: the shipped models/).")
@click.option("--force", is_flag=True, help="Replace an existing model of the same name.")
@click.option("--default", "make_default", is_flag=True, help="Make it the default model.")
@user_errors
def models_add_filter(checkpoint, base, name, models_dir, force, make_default) -> None:
    """Make a new model from a model and a post-filter trained for it (`hvqcodec train post-filter`).

    The new model has the old one's codes, priors and coding settings and its own weights file and hash; its
    pictures pass through the filter. Calibrate its ladder next (`hvqcodec models calibrate NAME ...`).

    \b
    Examples:
      hvqcodec models add-filter runs/pf/checkpoint.pt --to hvq-vr6 --name hvq-vr7 --default
    """
    from .manifest import read_manifest, write_manifest
    from .zoo import add_post_filter
    from .zoo import models_dir as default_models_dir

    folder = Path(models_dir) if models_dir else default_models_dir()
    entry = add_post_filter(base, name, Path(checkpoint), folder, force)
    if make_default:
        manifest = read_manifest(folder)
        manifest["default"] = name
        write_manifest(manifest, folder)
    console.print(f"{name}: {entry['file']} ({entry['parameters']:,} parameters), {base} plus a post-filter"
                  f"{' (default)' if make_default else ''}")


@models.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--name", required=True, help="Model name, e.g. hvq-small (lowercase letters, digits, . _ -).")
@click.option("--models-dir", type=click.Path(file_okay=False), help="Target folder (default: the shipped models/).")
@click.option("--data", default="", help="Description of the training data, for the manifest.")
@click.option("--priors", type=click.Path(dir_okay=False), help="Priors checkpoint to ship with it (needed to compress).")
@click.option("--priors-from", metavar="MODEL",
              help="Instead of --priors: take a shipped model's priors and coding settings as they are (for a "
                   "decoder trained with --decoder-only --init-from MODEL: the same codes and streams).")
@click.option("--force", is_flag=True, help="Replace an existing model of the same name.")
@click.option("--default", "make_default", is_flag=True, help="Make it the default model.")
@click.option("--table-bits", type=click.Choice(["8", "16"]), default="8", show_default=True,
              help="Integer tables of the priors: 8-bit (computed in float32, faster) or 16-bit (float64).")
@click.option("--calibration-codes", type=click.Path(dir_okay=False),
              help="Code grids that set the 8-bit layers' input scales (default: codes.pt beside --priors).")
@click.option("--coding-block", callback=_coding_block, metavar="N|RxC|T,M,B",
              help=CODING_BLOCK_HELP + " Default: the priors' own (training is the same either way).")
@user_errors
def models_export(checkpoint, name, models_dir, data, priors, priors_from, force, make_default, table_bits,
                  calibration_codes, coding_block) -> None:
    """Export a training checkpoint as fp16 weights plus a manifest entry.

    \b
    Examples:
      hvqcodec models export runs/ae/checkpoint.pt --name hvq-small --priors runs/priors/checkpoint.pt \\
          --data "../shared/datasets/train minus cid22/validation" --force
      hvqcodec models export runs/ae/checkpoint.pt --name my-blocks --priors runs/priors/checkpoint.pt \\
          --coding-block 0,32,64
      hvqcodec models export runs/dec/checkpoint.pt --name hvq-vr8 --priors-from hvq-vr7
    """
    from .train import load_checkpoint
    from .zoo import export_model
    from .zoo import models_dir as default_models_dir

    folder = Path(models_dir) if models_dir else default_models_dir()
    if priors and priors_from:
        raise click.BadParameter("give --priors or --priors-from, not both", param_hint="--priors-from")
    codes = None
    if priors and table_bits == "8":
        codes = _calibration_codes(Path(calibration_codes) if calibration_codes else Path(priors).parent / "codes.pt")
    entry = export_model(load_checkpoint(checkpoint), name, folder, data=data, force=force,
                         priors_checkpoint=load_checkpoint(priors, "priors") if priors else None,
                         calibration_codes=codes, coding_block=coding_block, priors_from=priors_from)
    if make_default:
        _make_default(folder, name)
    tables = f", {entry['priors']['table_bits']}-bit prior tables" if entry.get("priors") else ""
    console.print(f"exported {name}: {folder / entry['file']} (sha256 {entry['sha256'][:12]}, "
                  f"{(folder / entry['file']).stat().st_size / 1e6:.2f} MB{tables})")


@models.command("variant")
@click.argument("base")
@click.option("--name", required=True, help="The variant's name, e.g. hvq-vr5.")
@click.option("--coding-block", required=True, callback=_coding_block, metavar="N|RxC|T,M,B", help=CODING_BLOCK_HELP)
@click.option("--models-dir", type=click.Path(file_okay=False), help="Models folder (default: the shipped models/).")
@click.option("--force", is_flag=True, help="Replace an existing model of the same name.")
@click.option("--default", "make_default", is_flag=True, help="Make it the default model.")
@user_errors
def models_variant(base, name, coding_block, models_dir, force, make_default) -> None:
    """Add a model that codes with BASE's weights in another way (no new weights file).

    The variant has its own name and hash in .hvq headers, so its files decode only with its settings, and
    BASE keeps decoding its own files. Calibrate its quality ladder afterwards.

    \b
    Examples:
      hvqcodec models variant hvq-vr4 --name hvq-vr5 --coding-block 0,32,64 --default
      hvqcodec models calibrate hvq-vr5 --data ../shared/datasets/train --exclude '*/cid22/validation/*'
    """
    from .zoo import make_variant
    from .zoo import models_dir as default_models_dir

    folder = Path(models_dir) if models_dir else default_models_dir()
    entry = make_variant(base, name, {"coding_block": coding_block}, folder, force=force)
    if make_default:
        _make_default(folder, name)
    console.print(f"added {name}: {base}'s weights ({entry['file']}), coding block {coding_block}, "
                  f"sha256 {entry['sha256'][:12]}; calibrate it with `hvqcodec models calibrate {name} --data ...`")


def _make_default(folder: Path, name: str) -> None:
    from .manifest import read_manifest, write_manifest

    manifest = read_manifest(folder)
    manifest["default"] = name
    write_manifest(manifest, folder)


# Crops whose codes calibrate 8-bit tables (benchmarks/prior_precision.py measured the rate cost with 64).
CALIBRATION_CROPS = 64


def _calibration_codes(path: Path) -> list:
    """The first CALIBRATION_CROPS crops of a `train priors` codes.pt: [top, mid, bottom, stages...]."""
    import torch

    if not path.is_file():
        raise click.ClickException(f"{path}: no calibration codes for 8-bit tables (give --calibration-codes, "
                                   "the codes.pt of the priors' training run, or --table-bits 16)")
    try:
        codes = torch.load(path, map_location="cpu", weights_only=True)["codes"]
        return [c[:CALIBRATION_CROPS].long() for c in codes]
    except Exception as exc:  # torch raises many exception types for foreign files
        raise click.ClickException(f"{path}: not a codes.pt of `hvqcodec train priors` ({type(exc).__name__})")


def run() -> None:
    """The `hvqcodec` console script: the command group, then the interpreter's exit without a last garbage
    collection over every object torch's import made. That collection is most of the time Python takes to shut
    down after importing torch (0.9 s of `python -c "import torch"`), and freezing saves 0.6 s of a Kodak
    `compress` or `decompress` (5.58 -> 4.95 s, 5.94 -> 5.31 s, medians of seven interleaved runs on a 2-core
    AVX2 machine: `benchmarks/cli_time.py`, results/cli-time.json). Freezing moves those objects out of the
    collector's reach; exit handlers and file closing still run as usual. Only the console script does this: in
    a long-lived process (tests, the Python API) frozen objects would never be collected."""
    import gc

    try:
        main()
    finally:
        gc.freeze()


if __name__ == "__main__":
    run()

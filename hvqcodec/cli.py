"""The `hvqcodec` command line: a thin layer over the package's API."""
from __future__ import annotations

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


def int_list(count: int) -> click.ParamType:
    class IntList(click.ParamType):
        name = f"{count} comma-separated integers"

        def convert(self, value, param, ctx):
            if isinstance(value, (tuple, list)):
                return tuple(value)
            try:
                numbers = tuple(int(v) for v in str(value).split(","))
            except ValueError:
                self.fail(f"{value!r} is not {count} comma-separated integers", param, ctx)
            if len(numbers) != count or min(numbers) <= 0:
                self.fail(f"{value!r}: expected {count} positive comma-separated integers", param, ctx)
            return numbers
    return IntList()


device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True, help="Where to run; auto picks CUDA when available.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="hvqcodec")
def main() -> None:
    """hvqcodec: a learned image codec (hierarchical VQ-VAE + PixelCNN priors + range coding).

    \b
    Examples:
      hvqcodec compress photo.png                 # writes photo.hvq
      hvqcodec decompress photo.hvq -o back.png
      hvqcodec decompress photo.hvq --levels 1    # quick preview from the top level
      hvqcodec info photo.hvq
      hvqcodec train autoencoder --data ../shared/datasets/train --out runs/ae
      hvqcodec models list
    """


def _output_paths(inputs: tuple[str, ...], output: str | None, suffix: str) -> list[Path]:
    """Where each input's result goes: beside it with `suffix`, or -o (a file for one input, else a folder)."""
    if output is None:
        return [Path(p).with_suffix(suffix) for p in inputs]
    target = Path(output)
    if len(inputs) == 1 and not target.is_dir():
        return [target]
    if not target.is_dir():
        raise click.BadParameter(f"{output} is not a folder (needed for several inputs)", param_hint="-o")
    return [target / Path(p).with_suffix(suffix).name for p in inputs]


def _check_outputs(paths: list[Path], force: bool) -> None:
    for path in paths:
        if path.exists() and not force:
            raise click.ClickException(f"{path} exists (use --force to overwrite)")
        if not path.parent.is_dir():
            raise click.ClickException(f"{path.parent}: no such folder")


def _progress(total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=total < 2)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(), help="Output file (one input) or folder (several).")
@click.option("--model", default=None, help="Model name (default: the shipped default; see `hvqcodec models list`).")
@device_option
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@user_errors
def compress(images, output, model, device, force) -> None:
    """Compress images into .hvq files.

    \b
    Examples:
      hvqcodec compress photo.png                  # -> photo.hvq
      hvqcodec compress *.png -o compressed/       # into a folder
      hvqcodec compress photo.jpg -o out.hvq --force
    """
    from .codec import load_codec
    from .fileio import atomic_write_bytes

    targets = _output_paths(images, output, ".hvq")
    _check_outputs(targets, force)
    codec = load_codec(model, device)
    with _progress(len(images)) as progress:
        for source, target in progress.track(list(zip(images, targets)), description="compressing"):
            result = codec.compress(source)
            for note in result.warnings:
                console.print(f"[yellow]warning[/]: {source}: {note}")
            atomic_write_bytes(target, result.data)
            console.print(f"{source} -> {target}: {len(result.data):,} bytes, {result.bpp:.4f} bpp")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(), help="Output image (one input) or folder (several); the suffix picks the format (default .png).")
@click.option("--levels", type=click.IntRange(1, 3), help="Decode only the top 1 or 2 levels: a quick, coarser preview.")
@device_option
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@user_errors
def decompress(files, output, levels, device, force) -> None:
    """Decompress .hvq files into images.

    A truncated file decodes to the preview its complete levels allow, with a warning.

    \b
    Examples:
      hvqcodec decompress photo.hvq                # -> photo.png
      hvqcodec decompress photo.hvq -o photo.webp  # lossless WebP
      hvqcodec decompress photo.hvq --levels 2 -o preview.png
    """
    from .codec import codec_for
    from .imageio import save_image

    targets = _output_paths(files, output, ".png")
    _check_outputs(targets, force)
    with _progress(len(files)) as progress:
        for source, target in progress.track(list(zip(files, targets)), description="decompressing"):
            data = _read(source)
            decoded = codec_for(data, device).decompress(data, levels)
            for note in decoded.warnings:
                console.print(f"[yellow]warning[/]: {source}: {note}")
            save_image(decoded.image, target, force=force)
            console.print(f"{source} -> {target} ({decoded.image.width}x{decoded.image.height} "
                          f"{decoded.image.mode}, {decoded.levels} levels)")


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
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

    out = Console()
    for path in files:
        data = _read(path)
        parsed = container.unpack(data)
        header = parsed.header
        pixels = header.width * header.height
        out.print(f"[bold]{path}[/]: hvq format {container.FORMAT_VERSION}, model {header.model_name} "
                  f"({header.model_hash}), {header.width}x{header.height} {header.mode}, "
                  f"{header.num_tiles} tile(s), {header.levels} level(s)"
                  + (f" ([yellow]truncated[/]: {parsed.truncated_levels} level(s) missing)" if parsed.truncated_levels else ""))
        for name, lengths in zip(("top", "mid", "bottom"), header.stream_lengths):
            out.print(f"  {name:>6}: {sum(lengths):>9,} bytes  {8 * sum(lengths) / pixels:.4f} bpp")
        if header.alpha_length:
            out.print(f"   alpha: {header.alpha_length:>9,} bytes  {8 * header.alpha_length / pixels:.4f} bpp")
        out.print(f"  header: {header.header_size + 4:>9,} bytes (with the trailing checksum)")
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
@click.option("--model", default=None, help="hvq model to test (default: every installed model with priors).")
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
@user_errors
def bench(folder, codecs, model, json_path, plot_path, reference, device, jobs, repeats) -> None:
    """Benchmark hvq against PNG, JPEG, WebP, AVIF and JPEG 2000 (through Pillow) on a folder of images.

    Every codec codes the same 8-bit RGB pixels in memory: bpp of the whole file, RGB PSNR, MS-SSIM, median
    encode and decode times. hvq gives one point per progressive level (the bytes of a file holding the first
    1, 2 or 3 levels). Prints tables with BD-rates and same-PSNR rates. Without DIR, three built-in photos.

    \b
    Examples:
      hvqcodec bench                                   # the built-in sample photos, all codecs
      hvqcodec bench ../shared/datasets/kodak --json bench.json --plot rd.png \\
          --reference ../shared/reference/compressai-kodak
      hvqcodec bench photos/ --codecs hvq,jpeg,avif --jobs 2
    """
    from . import bench as bench_module
    from .rdplot import save_rd_plot

    plan = bench_module.plan_bench(folder, codecs, model, device, jobs, repeats)
    references, notes = bench_module.load_references(reference) if reference else ([], [])
    plan.notes.extend(notes)
    console.print(f"benchmarking {', '.join([*(f'hvq:{m}' for m in plan.models), *plan.classic])} "
                  f"on {len(plan.images)} image(s)")
    results = bench_module.run_bench(plan, console)
    bench_module.print_report(results, Console())
    if json_path:
        bench_module.write_json(json_path, results)
        console.print(f"results: {json_path}")
    if plot_path:
        save_rd_plot(results, plot_path, references)
        console.print(f"plot: {plot_path}")


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
    ]

    def decorate(func: Callable) -> Callable:
        for option in reversed(options):
            func = option(func)
        return func
    return decorate


_SHARED_TRAINING = ("data", "val", "out", "exclude", "steps", "batch_size", "crop", "lr", "warmup", "seed", "device",
                    "val_every", "checkpoint_every")


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
@user_errors
def train_autoencoder_command(resume, widths, encoder_depths, decoder_depths, codebook_sizes, code_dim,
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

    options = _train_options(TrainOptions, shared)
    config = AutoencoderConfig(widths=widths, encoder_depths=encoder_depths, decoder_depths=decoder_depths,
                               codebook_sizes=codebook_sizes, code_dim=code_dim)
    train_autoencoder(options, config, resume=resume, console=console)
    console.print(f"done: checkpoint in {Path(options.out) / 'checkpoint.pt'}")


@train.command("priors")
@click.option("--model", help="Shipped model whose autoencoder gives the codes (default: the default model).")
@training_options(steps=3000, crop=128, crop_help="Pixel crop size whose codes form one sample.", lr=2e-3, warmup=200,
                  val_every=250, out_help="Run folder: checkpoint.pt, codes.pt, train_log.jsonl.")
@click.option("--code-crops", type=click.IntRange(1), default=2000, show_default=True, help="Crops encoded once into the training set.")
@click.option("--channels", type=click.IntRange(1), default=64, show_default=True, help="Prior width.")
@click.option("--causal-blocks", type=click.IntRange(0), default=2, show_default=True, help="1x1 gated blocks after the masked conv.")
@click.option("--cond-blocks", type=click.IntRange(0), default=3, show_default=True, help="3x3 gated blocks over the upper levels.")
@user_errors
def train_priors_command(model, resume, code_crops, channels, causal_blocks, cond_blocks, **shared) -> None:
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
    config = PriorConfig(channels=channels, causal_blocks=causal_blocks, cond_blocks=cond_blocks)
    train_priors(options, config, resume=resume, console=console)
    console.print(f"done: checkpoint in {Path(options.out) / 'checkpoint.pt'}")


@main.group()
def models() -> None:
    """List and export models."""


@models.command("list")
@user_errors
def models_list() -> None:
    """List the shipped models with their hash and measured metrics.

    \b
    Examples:
      hvqcodec models list
    """
    from rich.table import Table

    from .zoo import available_models, models_dir

    table = Table(title=f"models in {models_dir()}")
    for column in ("name", "sha256", "parameters", "steps", "Kodak PSNR (3 / 2 / 1 levels)", "raw bpp"):
        table.add_column(column)
    for name, entry in sorted(available_models().items()):
        metrics = entry.get("metrics", {})
        psnrs = metrics.get("psnr", {})
        quality = " / ".join(f"{psnrs[k]:.2f}" for k in ("full", "top_mid", "top") if k in psnrs) or "-"
        raw = f"{metrics['raw_index_bpp']:.3f}" if "raw_index_bpp" in metrics else "-"
        table.add_row(name, entry["sha256"][:12], f"{entry.get('parameters', 0) / 1e6:.2f}M",
                      str(entry.get("training_steps", "-")), quality, raw)
    Console().print(table)


@models.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--name", required=True, help="Model name, e.g. hvq-small (lowercase letters, digits, . _ -).")
@click.option("--models-dir", type=click.Path(file_okay=False), help="Target folder (default: the shipped models/).")
@click.option("--data", default="", help="Description of the training data, for the manifest.")
@click.option("--priors", type=click.Path(dir_okay=False), help="Priors checkpoint to ship with it (needed to compress).")
@click.option("--force", is_flag=True, help="Replace an existing model of the same name.")
@user_errors
def models_export(checkpoint, name, models_dir, data, priors, force) -> None:
    """Export a training checkpoint as fp16 weights plus a manifest entry.

    \b
    Examples:
      hvqcodec models export runs/ae/checkpoint.pt --name hvq-small --priors runs/priors/checkpoint.pt \\
          --data "../shared/datasets/train minus cid22/validation" --force
    """
    from .train import load_checkpoint
    from .zoo import export_model
    from .zoo import models_dir as default_models_dir

    folder = Path(models_dir) if models_dir else default_models_dir()
    entry = export_model(load_checkpoint(checkpoint), name, folder, data=data, force=force,
                         priors_checkpoint=load_checkpoint(priors, "priors") if priors else None)
    console.print(f"exported {name}: {folder / entry['file']} (sha256 {entry['sha256'][:12]}, "
                  f"{(folder / entry['file']).stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

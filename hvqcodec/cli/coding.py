"""The codec's commands: compress, decompress, info, bench, sample."""
from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from .common import (
    _about, _check_outputs, console, device_option, _file_progress, max_pixels_option, _output_paths, _read,
    _numpy_blas_one_thread, _read_header, codec_imports, _shown, STANDARD_STREAM, user_errors, _write_stdout)


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-o", "--output", type=click.Path(allow_dash=True),
              help="Output file (one input) or folder (several); '-' for standard output.")
@click.option("--model", default=None, help="Model name (default: the shipped default; see `hvqcodec models list`).")
@click.option("-q", "--quality", type=click.IntRange(1, 100), default=None,
              help="1-100: higher gives a larger file and a better picture (default 75; from 76 up the "
                   "default model adds a residual layer for high fidelity).")
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

    On a CPU, images are coded without importing torch (numpy and the C modules; the same format, decoded
    either way); other devices (--device cuda), --effort, or HVQ_RUNTIME=torch use torch.

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
    import os

    _numpy_blas_one_thread()
    from ..batch import compress_many
    from ..container import DEFAULT_MAX_PIXELS
    from ..fileio import atomic_write_bytes
    from ..manifest import model_entry

    if quality is not None and target_bpp is not None:
        raise click.UsageError("give either --quality or --bpp, not both")
    limit = max_pixels or DEFAULT_MAX_PIXELS
    targets = _output_paths(images, output, ".hvq")
    _check_outputs(targets, force)
    if device == "cuda":
        with codec_imports():
            from ..device import resolve_device
        resolve_device(device)  # no GPU: one clear error before any work
    if jobs == 0:  # (with --device auto, --effort's torch codec may pick a GPU: the workers then share it)
        jobs = min(os.cpu_count() or 1, len(images)) if len(images) >= 4 and device != "cuda" else 1
    model_entry(model)  # a bad model name fails here, once, before any worker starts (and without torch)
    sources = [_read(STANDARD_STREAM) if image == STANDARD_STREAM else image for image in images]
    names = [_shown(image) for image in images]
    with _file_progress(names, targets, "compressing") as (parts, pairs):
        results = compress_many(sources, model, device, quality, target_bpp, limit, jobs, effort, parts,
                                codec_imports)
        for source, target in pairs:
            data, bpp, notes = next(results)
            for note in notes:
                console.print(f"[yellow]warning[/]: {source}: {note}")
            if target is None:
                _write_stdout(data)
            else:
                atomic_write_bytes(target, data)
            console.print(f"{source} -> {_shown(target)}: {len(data):,} bytes, {bpp:.4f} bpp")


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-o", "--output", type=click.Path(allow_dash=True),
              help="Output image (one input) or folder (several); the suffix picks the format (default .png); "
                   "'-' for PNG on standard output.")
@click.option("--levels", type=click.IntRange(1, 11), help="Decode only the first N streams: 1 top, 2 top + mid (quick, coarse previews), 3 all levels, 4+ adds refinement stages, then the residual layer (`hvqcodec info` lists a file's streams).")
@max_pixels_option
@device_option
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@user_errors
def decompress(files, output, levels, max_pixels, device, force) -> None:
    """Decompress .hvq files into images.

    A truncated file decodes to the preview its complete levels allow, with a warning. On a CPU, files of the
    default models decode without importing torch (numpy and the C modules: the same codes; bfloat16 pixels where
    the CPU has AMX, else float32 and images up to 4 megapixels); other devices (--device cuda: the GPU), or
    HVQ_RUNTIME=torch use torch.

    \b
    Examples:
      hvqcodec decompress photo.hvq                # -> photo.png
      hvqcodec decompress photo.hvq -o photo.webp  # lossless WebP
      hvqcodec decompress photo.hvq --levels 2 -o preview.png
      hvqcodec decompress photo.hvq -o - > photo.png   # PNG on standard output ('-' reads standard input)
    """
    _numpy_blas_one_thread()
    from .. import container

    limit = max_pixels or container.DEFAULT_MAX_PIXELS
    targets = _output_paths(files, output, ".png")
    stdin = _read(STANDARD_STREAM) if STANDARD_STREAM in files else None
    for source in files:  # every header checked before torch is even imported: a bomb costs nothing
        with _about(source):  # and before the outputs: `decompress photo.png` is told what photo.png is
            header = container.read_header(stdin) if source == STANDARD_STREAM else _read_header(source)
            container.check_limits(header, container.TILE_SIZE, limit)
    _check_outputs(targets, force)
    from ..imageio import encode_image, save_image

    with _file_progress([_shown(f) for f in files], targets, "decompressing") as (parts, pairs):
        for source, (name, target) in zip(files, pairs):
            data = stdin if source == STANDARD_STREAM else _read(source)
            with _about(source):
                decoded = _file_decoder(data, device).decompress(data, levels, limit, progress=parts)
            for note in decoded.warnings:
                console.print(f"[yellow]warning[/]: {name}: {note}")
            if target is None:
                _write_stdout(encode_image(decoded.image, "PNG"))
            else:
                save_image(decoded.image, target, force=force)
            console.print(f"{name} -> {_shown(target)} ({decoded.image.width}x{decoded.image.height} "
                          f"{decoded.image.mode}, {decoded.levels} levels)")



def _file_decoder(data: bytes, device: str):
    """What decodes a file (`api.decoder_for`): the runtime without torch where it runs and is preferred, else the
    torch codec, imported as the console script imports it."""
    from ..api import decoder_for

    return decoder_for(data, device, codec_imports)


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@user_errors
def info(files) -> None:
    """Show the header of .hvq files: model, size, mode, levels, bytes per level, bpp.

    \b
    Examples:
      hvqcodec info photo.hvq
    """
    from .. import container
    from ..names import stream_names

    out = Console()
    for path in files:
        data = _read(path)
        with _about(path):
            parsed = container.unpack(data)
        header = parsed.header
        pixels = header.width * header.height
        out.print(f"[bold]{_shown(path)}[/]: hvq format {header.version}, model {header.model_name} "
                  f"({header.model_hash}), {header.width}x{header.height} {header.mode}, "
                  f"{header.num_tiles} tile(s), {header.levels} stream(s)"
                  + (f" ([yellow]truncated[/]: {parsed.truncated_levels} stream(s) missing)" if parsed.truncated_levels else ""))
        names = stream_names(header.code_streams - 3)[:header.code_streams] + ("residual",) * header.residual
        for name, lengths in zip(names, header.stream_lengths):
            out.print(f"  {name:>8}: {sum(lengths):>9,} bytes  {8 * sum(lengths) / pixels:.4f} bpp")
        if header.alpha_length:
            out.print(f"     alpha: {header.alpha_length:>9,} bytes  {8 * header.alpha_length / pixels:.4f} bpp")
        out.print(f"    header: {header.header_size + container.TRAILER_BYTES:>9,} bytes (with the trailing checksum)")
        out.print(f"     total: {len(data):>9,} bytes  {8 * len(data) / pixels:.4f} bpp")


def _codec_list(ctx, param, value: str | None) -> tuple[str, ...] | None:
    """--codecs: comma-separated names, checked against the known codecs."""
    from ..bench import CODEC_NAMES

    if value is None:
        return None
    names = tuple(dict.fromkeys(v.strip().lower() for v in value.split(",") if v.strip()))
    unknown = [n for n in names if n not in CODEC_NAMES]
    if unknown or not names:
        raise click.BadParameter(f"unknown codec(s): {', '.join(unknown) or '(none given)'}; "
                                 f"valid: {','.join(CODEC_NAMES)}")
    return names


@click.command()
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
    from .. import bench as bench_module
    from ..rdplot import save_rd_plot

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


@click.command()
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
    with codec_imports():
        from PIL import Image

        from ..codec import codec_for, load_codec
        from ..fileio import atomic_write_bytes
        from ..sampling import grid, sample_images

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

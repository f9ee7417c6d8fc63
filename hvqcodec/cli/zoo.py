"""`hvqcodec models`: list, calibrate, export, add-filter, variant."""
from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from .common import CODING_BLOCK_HELP, _coding_block, console, device_option, user_errors


@click.group()
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

    from ..manifest import available_models, default_model, models_dir

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


def _tilt(ctx, param, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        luma, colour = (int(part) for part in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not LUMA:COLOUR (two integers, e.g. 40:80)") from None
    if not (0 <= luma <= 255 and 0 <= colour <= 255):
        raise click.BadParameter(f"{value!r}: each slope must be in 0..255")
    return luma, colour


@models.command("calibrate")
@click.argument("name")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Training images (never the evaluation set).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out image paths matching GLOB (repeatable).")
@click.option("--images", "count", type=click.IntRange(1), default=12, show_default=True, help="Images to measure on.")
@click.option("--crop", type=click.IntRange(16), default=512, show_default=True, help="Center crop of each image, in pixels.")
@click.option("--residual/--no-residual", default=True, show_default=True,
              help="Also try the residual layer (quality above what the codes alone reach).")
@click.option("--residual-tilt", callback=_tilt, metavar="LUMA:COLOUR", default=None,
              help="The residual layer's step slopes over frequency bands, 0-255 each (default: "
                   "hvqcodec.ladder.RESIDUAL_TILT; 0:0 = flat steps).")
@click.option("--models-dir", type=click.Path(file_okay=False), help="Models folder (default: the shipped models/).")
@device_option
@user_errors
def models_calibrate(name, data, exclude, count, crop, residual, residual_tilt, models_dir, device) -> None:
    """Calibrate a model's quality ladder (quality 1-100 -> streams and lambda) on training images.

    Every candidate operating point is measured (bpp and PSNR, whole files); the points no cheaper point beats
    are spread over quality 1-100 and written into the manifest.

    \b
    Examples:
      hvqcodec models calibrate hvq-ladder --data ../shared/datasets/train/bsds500 --images 12
    """
    import random

    from rich.progress import Progress

    from ..codec import Codec
    from ..data import center_crops, find_images, load_rgb
    from ..ladder import RESIDUAL_STEPS, RESIDUAL_TILT, build_ladder, candidate_points, measure_points
    from ..zoo import load_bundle, read_manifest, write_manifest, models_dir as default_dir
    from ..device import resolve_device

    folder = Path(models_dir) if models_dir else default_dir()
    codec = Codec(load_bundle(name, folder), resolve_device(device))
    paths = find_images(data, exclude)
    paths = random.Random(0).sample(paths, min(count, len(paths)))
    crops = center_crops([load_rgb(p) for p in paths], crop)
    images = [(c.permute(1, 2, 0) * 255).round().byte().numpy() for c in crops]
    points = candidate_points(codec.num_streams, bottom_lambdas=codec.autoencoder.config.bottom_lambdas,
                              residual_steps=RESIDUAL_STEPS if residual else (),
                              residual_tilt=RESIDUAL_TILT if residual_tilt is None else residual_tilt)
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
        stage += f" residual step {entry['residual_step']:<3}" if "residual_step" in entry else ""
        stage += f" tilt {entry['residual_tilt'][0]}:{entry['residual_tilt'][1]}" if "residual_tilt" in entry else ""
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
    from ..manifest import read_manifest, write_manifest
    from ..zoo import add_post_filter
    from ..zoo import models_dir as default_models_dir

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
    from ..train import load_checkpoint
    from ..zoo import export_model
    from ..zoo import models_dir as default_models_dir

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
@click.option("--coding-block", callback=_coding_block, metavar="N|RxC|T,M,B",
              help=CODING_BLOCK_HELP + " Default: BASE's own (the variant then differs only in its ladder).")
@click.option("--models-dir", type=click.Path(file_okay=False), help="Models folder (default: the shipped models/).")
@click.option("--force", is_flag=True, help="Replace an existing model of the same name.")
@click.option("--default", "make_default", is_flag=True, help="Make it the default model.")
@user_errors
def models_variant(base, name, coding_block, models_dir, force, make_default) -> None:
    """Add a model that codes with BASE's weights in another way (no new weights file): other coding blocks,
    or only another quality ladder.

    The variant has its own name and hash in .hvq headers, so its files decode only with its settings, and
    BASE keeps decoding its own files (and its qualities keep giving the same files). Calibrate its quality
    ladder afterwards.

    \b
    Examples:
      hvqcodec models variant hvq-vr4 --name hvq-vr5 --coding-block 0,32,64 --default
      hvqcodec models calibrate hvq-vr5 --data ../shared/datasets/train --exclude '*/cid22/validation/*'
      hvqcodec models variant hvq-vr8 --name hvq-vr10
    """
    from ..zoo import make_variant
    from ..zoo import models_dir as default_models_dir

    folder = Path(models_dir) if models_dir else default_models_dir()
    entry = make_variant(base, name, {} if coding_block is None else {"coding_block": coding_block}, folder,
                         force=force)
    if make_default:
        _make_default(folder, name)
    blocks = entry["coding"].get("coding_block")
    console.print(f"added {name}: {base}'s weights ({entry['file']}), "
                  + (f"coding block {blocks}, " if blocks is not None else "") +
                  f"sha256 {entry['sha256'][:12]}; calibrate it with `hvqcodec models calibrate {name} --data ...`")


def _make_default(folder: Path, name: str) -> None:
    from ..manifest import read_manifest, write_manifest

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

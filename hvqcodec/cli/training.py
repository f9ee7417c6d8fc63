"""`hvqcodec train`: the autoencoder, the priors and the post-filter."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Callable

import click

from .common import CODING_BLOCK_HELP, _coding_block, console, device_option, FloatList, int_list, user_errors


@click.group()
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
    from ..train import load_checkpoint

    if source.endswith(".pt") or kind != "autoencoder":
        return load_checkpoint(Path(source), kind)["model"]
    from ..zoo import load_model
    return load_model(source).state_dict()


def _train(train_function: Callable, kind: str, options, config, resume: bool, init_from: str | None) -> None:
    """Run a training command's loop (warm-started from --init-from unless resuming) and end its process."""
    initial = _initial_weights(init_from, kind) if init_from and not resume else None
    train_function(options, config, resume=resume, console=console, init_from=initial)
    console.print(f"done: checkpoint in {Path(options.out) / 'checkpoint.pt'}")
    _end_distributed_worker()


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
    from ..autoencoder import AutoencoderConfig
    from ..train import TrainOptions, train_autoencoder

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
    _train(train_autoencoder, "autoencoder", options, config, resume, init_from)


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
    from ..prior_training import PriorTrainOptions, train_priors
    from ..priors import PriorConfig

    from ..zoo import default_model

    options = _train_options(PriorTrainOptions, shared, model=model or default_model(), code_crops=code_crops)
    config = PriorConfig(channels=channels, causal_blocks=causal_blocks, cond_blocks=cond_blocks,
                         stage_channels=stage_channels, stage_blocks=stage_blocks, coding_block=coding_block,
                         subpixel_cond=subpixel_cond)
    _train(train_priors, "priors", options, config, resume, init_from)


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

    from ..postfilter import PostFilterOptions, train_post_filter

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

"""Training of the priors on the code grids that a shipped autoencoder gives for crops of the training photos."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from rich.console import Console
from rich.progress import Progress

from .autoencoder import HierarchicalVQVAE, stream_names
from .data import CropSampler, center_crops, find_images
from .errors import CheckpointError
from .fileio import atomic_torch_save
from .priors import HierarchicalPrior, PriorConfig, bits_per_code, adapt_state
from .device import training_device
from .train import (CHECKPOINT_NAME, TrainingTask, TrainOptions, TrainState, _warm_start, cache_images,
                    load_checkpoint, prepare_output, resumed_options, run_training, unwrap)
from .zoo import DEFAULT_MODEL, autoencoder_fingerprint, codes_fingerprint, load_bundle

CODES_NAME = "codes.pt"


@dataclass
class PriorTrainOptions(TrainOptions):
    model: str = DEFAULT_MODEL
    code_crops: int = 2000  # crops encoded once into code grids, the priors' training set
    steps: int = 3000
    crop: int = 128
    lr: float = 2e-3
    warmup: int = 200


@torch.no_grad()
def encode_crops(autoencoder: HierarchicalVQVAE, batches: Iterable[torch.Tensor], total: int,
                 console: Console, seed: int = 0) -> list[torch.Tensor]:
    """Code grids [top, mid, bottom, stages...] (int16) of the image batches (`total` of them).

    A variable-rate autoencoder (config bottom_lambdas) codes each crop's bottom with one of its rate weights,
    drawn with `seed`, so the priors learn the coarse codes as well as the fine ones."""
    autoencoder.eval()
    device = next(autoencoder.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    grids: list[list[torch.Tensor]] = [[] for _ in range(autoencoder.config.num_streams)]
    with Progress(console=console, transient=True) as progress:
        for batch in progress.track(batches, total=total, description="encoding crops into codes"):
            weights = autoencoder.draw_bottom_lambdas(batch.shape[0], generator=generator)
            codes = autoencoder.encode(batch.to(device), weights.to(device))
            for level, grid in enumerate(codes):
                grids[level].append(grid.to(torch.int16).cpu())
    return [torch.cat(g) for g in grids]


class PriorTask(TrainingTask):
    kind = "priors"

    def __init__(self, prior: HierarchicalPrior, codes: list[torch.Tensor], val_codes: list[torch.Tensor] | None,
                 autoencoder_info: dict) -> None:
        super().__init__(prior, prior.config)
        self.codes, self.val_codes = codes, val_codes
        self.autoencoder_info = autoencoder_info
        self.device = next(prior.parameters()).device

    def sample(self, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
        picks = torch.randint(self.codes[0].shape[0], (batch_size,), generator=generator)
        return [grid[picks].long().to(self.device) for grid in self.codes]

    @property
    def names(self) -> tuple[str, ...]:
        return stream_names(self.config.refine_stages)

    def config_weights(self) -> list[int]:
        """Codes per grid position of each stream: 1 per level, G per refinement stage."""
        return [1, 1, 1] + [self.config.refine_groups] * self.config.refine_stages

    def _bpp(self, bits: list[float]) -> float:
        """Bits per pixel of the streams: bits per code x codes per position / pixels per position."""
        strides = (16, 8) + (4,) * (len(bits) - 2)
        return sum(b * n / s ** 2 for b, n, s in zip(bits, self.config_weights(), strides))

    def loss(self, batch: list[torch.Tensor]):
        bits = bits_per_code(self.model(batch), batch)  # through self.model: under DDP, the wrapper
        values = {f"bits_{n}": b.item() for n, b in zip(self.names, bits)}
        values["bpp"] = self._bpp([b.item() for b in bits])
        weights = self.config_weights()
        return sum(b * n for b, n in zip(bits, weights)), values, {}

    @torch.no_grad()
    def validate(self) -> dict | None:
        if self.val_codes is None:
            return None
        prior = unwrap(self.model)
        prior.eval()
        bits = prior.bits_per_code([g.long().to(self.device) for g in self.val_codes])
        prior.train()
        record = {f"val_bits_{n}": float(b) for n, b in zip(self.names, bits)}
        record["val_bpp"] = self._bpp([float(b) for b in bits])
        return record

    def describe(self, record: dict) -> str:
        bits = "/".join(f"{record[f'bits_{n}']:.2f}" for n in self.names)
        return f"bits/code {bits} ~{record['bpp']:.3f} bpp {record['steps_per_s']:.2f} it/s"

    def describe_validation(self, record: dict) -> str:
        bits = ", ".join(f"{n} {record[f'val_bits_{n}']:.3f}" for n in self.names)
        return f"validation bits per code: {bits}; rate ~{record['val_bpp']:.4f} bpp (float prior)"

    def checkpoint_extras(self) -> dict:
        return {"autoencoder": self.autoencoder_info}


def train_priors(options: PriorTrainOptions, config: PriorConfig | None = None, resume: bool = False,
                 console: Console | None = None, autoencoder: HierarchicalVQVAE | None = None,
                 on_step: Callable[[int, torch.nn.Module], None] | None = None,
                 init_from: dict[str, torch.Tensor] | None = None) -> TrainState:
    """Train (or resume) the priors of the shipped model options.model (or of `autoencoder`, for tests).

    init_from: a priors state dict to start from (every same-shaped tensor is copied), e.g. the priors of the
    model this autoencoder was warm-started from: the level priors then only have to adapt. A smaller design
    starts a larger one as the same function (priors.adapt_state: projections repeated per position for
    sub-position conditioning, extra gated blocks as the identity)."""
    console = console or Console(stderr=True)
    out = prepare_output(options.out)
    device = training_device(options.device)
    checkpoint = load_checkpoint(out / CHECKPOINT_NAME, "priors") if resume else None
    if checkpoint is not None:
        config = PriorConfig.from_dict(checkpoint["config"])
        options = resumed_options(checkpoint, options, PriorTrainOptions)
    if autoencoder is None:
        bundle = load_bundle(options.model)
        autoencoder, info = bundle.autoencoder, {"name": bundle.name, "sha256": bundle.sha256}
    else:
        info = {"name": "", "sha256": ""}
    info["fingerprint"] = autoencoder_fingerprint(autoencoder)
    info["codes_fingerprint"] = codes_fingerprint(autoencoder)
    if checkpoint is not None and checkpoint["autoencoder"]["fingerprint"] != info["fingerprint"]:
        raise CheckpointError(f"{out / CHECKPOINT_NAME}: these priors were trained for a different autoencoder")
    autoencoder = autoencoder.to(device).eval()
    ae = autoencoder.config
    config = PriorConfig(**{**(config or PriorConfig()).to_dict(), "codebook_sizes": tuple(ae.codebook_sizes),
                            "refine_stages": ae.refine_stages, "refine_groups": ae.refine_groups,
                            "refine_codebook_size": ae.refine_codebook_size})

    codes = _training_codes(autoencoder, options, info["fingerprint"], out, console)
    val_paths = find_images(options.val, options.exclude)[:options.val_images] if options.val else []
    val_codes = None
    if val_paths:
        val_images = center_crops(cache_images(val_paths, options.max_side, console, "caching validation images"),
                                  options.val_crop)
        chunks = val_images.split(16)
        val_codes = encode_crops(autoencoder, chunks, len(chunks), console)

    torch.manual_seed(options.seed)
    prior = HierarchicalPrior(config).to(device)
    if init_from is not None and checkpoint is None:
        _warm_start(prior, adapt_state(init_from, prior), console)
    console.print(f"[bold]priors[/]: {sum(p.numel() for p in prior.parameters()) / 1e6:.2f}M parameters, "
                  f"{codes[0].shape[0]} training crops of {options.crop}px, {len(val_paths)} validation images, "
                  f"device {device}" + (f", resuming at step {checkpoint['step']}" if checkpoint else ""))
    task = PriorTask(prior, codes, val_codes, info)
    return run_training(task, options, checkpoint, console, on_step)


def _training_codes(autoencoder: HierarchicalVQVAE, options: PriorTrainOptions, fingerprint: str, out: Path,
                    console: Console) -> list[torch.Tensor]:
    """Code grids of random training crops, computed once per run and kept in out/codes.pt for resuming."""
    cache = out / CODES_NAME
    key = {"fingerprint": fingerprint, "count": options.code_crops, "crop": options.crop, "seed": options.seed,
           "bottom_lambdas": list(autoencoder.config.bottom_lambdas)}
    if cache.is_file():
        stored = torch.load(cache, weights_only=True)
        if stored.get("key") == key:
            return stored["codes"]
    paths = find_images(options.data, options.exclude, skip_under=[options.val] if options.val else [])
    sampler = CropSampler(cache_images(paths, options.max_side, console, "caching training images"), options.crop)
    generator = torch.Generator().manual_seed(options.seed + 1)
    starts = range(0, options.code_crops, 16)
    batches = (sampler.sample(min(16, options.code_crops - s), generator) for s in starts)
    codes = encode_crops(autoencoder, batches, len(starts), console, seed=options.seed + 2)
    atomic_torch_save({"key": key, "codes": codes}, cache)
    return codes

"""Training of the hierarchical VQ-VAE: cached crops, AdamW with warmup + cosine, checkpoints, exact resume."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .autoencoder import LEVEL_NAMES, AutoencoderConfig, HierarchicalVQVAE
from .device import resolve_device
from .data import CropSampler, center_crops, find_images, load_rgb
from .errors import CheckpointError, DataError
from .fileio import atomic_torch_save
from .metrics import psnr

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.jsonl"


@dataclass
class TrainOptions:
    data: str
    out: str
    val: str | None = None
    exclude: tuple[str, ...] = ()
    steps: int = 10_000
    batch_size: int = 16
    crop: int = 128
    lr: float = 1.5e-3
    warmup: int = 500
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    max_side: int = 1024  # images are cached with their long side at most this
    log_every: int = 25
    val_every: int = 500
    checkpoint_every: int = 250
    val_images: int = 16
    val_crop: int = 256
    command: str = ""  # the command line that started the run, for the manifest

    def to_dict(self) -> dict:
        data = asdict(self)
        data["exclude"] = list(self.exclude)
        return data


@dataclass
class TrainState:
    step: int = 0
    history: list[dict] = field(default_factory=list)  # validation records


def learning_rate(step: int, options: TrainOptions) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < options.warmup:
        return options.lr * (step + 1) / options.warmup
    progress = min(1.0, (step - options.warmup) / max(1, options.steps - options.warmup))
    return options.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def prepare_output(out: str | Path) -> Path:
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DataError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    return path


@torch.no_grad()
def validate(model: HierarchicalVQVAE, images: torch.Tensor, device: torch.device, chunk: int = 4) -> dict:
    """Mean PSNR of the full reconstruction and of both previews, and per-level code perplexity."""
    was_training = model.training
    model.eval()
    scores = {3: [], 2: [], 1: []}
    counts = [torch.zeros(q.codebook_size) for q in model.quantisers]
    for start in range(0, images.shape[0], chunk):
        batch = images[start:start + chunk].to(device)
        codes = model.encode(batch)
        for levels in scores:
            recon = model.decode(codes[:levels]).float().clamp(0, 1)
            scores[levels].extend(psnr(recon[i], batch[i]) for i in range(batch.shape[0]))
        for i, grid in enumerate(codes):
            counts[i] += torch.bincount(grid.flatten().cpu(), minlength=counts[i].numel()).float()
    model.train(was_training)
    record = {f"val_psnr_{levels}": sum(v) / len(v) for levels, v in scores.items()}
    for name, count in zip(LEVEL_NAMES, counts):
        p = count / count.sum()
        record[f"val_perplexity_{name}"] = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
        record[f"val_used_{name}"] = int((count > 0).sum())
    return record


def _rng_state(generator: torch.Generator, device: torch.device) -> dict:
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def load_checkpoint(path: str | Path, kind: str = "autoencoder", map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != f"{kind}-checkpoint":
        raise CheckpointError(f"{path}: not an hvqcodec {kind} checkpoint")
    return checkpoint


class TrainingTask:
    """What differs between training the autoencoder and the priors; the loop around it is shared."""

    kind = ""

    def __init__(self, model: torch.nn.Module, config) -> None:
        self.model = model
        self.config = config

    def sample(self, batch_size: int, generator: torch.Generator):
        raise NotImplementedError

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, float], dict[str, float]]:
        """Loss to minimise, values to average over a log window, values to sum over it."""
        raise NotImplementedError

    def validate(self) -> dict | None:
        return None

    def describe(self, record: dict) -> str:
        raise NotImplementedError

    def describe_validation(self, record: dict) -> str:
        raise NotImplementedError

    def checkpoint_extras(self) -> dict:
        return {}


def resumed_options(checkpoint: dict, options: TrainOptions, options_type: type = TrainOptions):
    """Continue the same run: its hyperparameters, with only the length, paths and device taken from options."""
    stored = dict(checkpoint["options"], exclude=tuple(checkpoint["options"]["exclude"]))
    command = stored["command"] + (f" ; {options.command}" if options.command else "")
    new = {k: getattr(options, k) for k in ("data", "val", "out", "steps", "device")}
    return options_type(**{**stored, **new, "command": command})


def run_training(task: TrainingTask, options: TrainOptions, checkpoint: dict | None, console: Console,
                 on_step: Callable[[int, torch.nn.Module], None] | None = None) -> TrainState:
    """The training loop: warmup + cosine AdamW, logging, validation, checkpoints, Ctrl-C, exact resume.

    The model must already be built (after torch.manual_seed(options.seed)) and on options' device.
    """
    out = Path(options.out)
    checkpoint_path = out / CHECKPOINT_NAME
    device = next(task.model.parameters()).device
    generator = torch.Generator().manual_seed(options.seed)
    model = task.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    state = TrainState()
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        state = TrainState(step=checkpoint["step"], history=list(checkpoint["history"]))
        _set_rng_state(checkpoint["rng"], generator, device)

    def save() -> None:
        atomic_torch_save({
            "kind": f"{task.kind}-checkpoint", "config": task.config.to_dict(), "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "step": state.step, "history": state.history,
            "options": options.to_dict(), "rng": _rng_state(generator, device), **task.checkpoint_extras(),
        }, checkpoint_path)

    model.train()
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    log_file = open(out / LOG_NAME, "a")
    window: dict[str, float] = {}
    window_start, window_steps = time.perf_counter(), 0
    progress = Progress(TextColumn(f"[bold]{task.kind}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.description}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console)

    def log(record: dict) -> None:
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()

    try:
        with progress:
            bar = progress.add_task("", total=options.steps, completed=state.step)
            while state.step < options.steps:
                lr = learning_rate(state.step, options)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = task.sample(options.batch_size, generator)
                with autocast:
                    loss, means, sums = task.loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                state.step += 1
                if on_step is not None:
                    on_step(state.step, model)

                for key, value in {**means, **sums}.items():
                    window[key] = window.get(key, 0.0) + value
                window_steps += 1
                if state.step % options.log_every == 0 or state.step == options.steps:
                    elapsed = time.perf_counter() - window_start
                    record = {"step": state.step, "lr": lr, "steps_per_s": window_steps / elapsed,
                              **{k: v / window_steps for k, v in window.items() if k in means},
                              **{k: v for k, v in window.items() if k in sums}}
                    log(record)
                    progress.update(bar, completed=state.step, description=task.describe(record))
                    if not console.is_terminal:
                        console.print(f"step {state.step}: {task.describe(record)}")
                    window, window_start, window_steps = {}, time.perf_counter(), 0
                if state.step % options.val_every == 0 or state.step == options.steps:
                    result = task.validate()
                    if result is not None:
                        record = {"step": state.step, **result}
                        state.history.append(record)
                        log(record)
                        progress.console.print(f"step {state.step}: {task.describe_validation(record)}")
                if state.step % options.checkpoint_every == 0 or state.step == options.steps:
                    save()
                progress.update(bar, completed=state.step)
    except KeyboardInterrupt:
        save()
        console.print(f"interrupted: checkpoint saved at step {state.step} in {checkpoint_path} "
                      f"(continue with --resume)")
        raise
    finally:
        log_file.close()
    return state


class AutoencoderTask(TrainingTask):
    kind = "autoencoder"

    def __init__(self, model: HierarchicalVQVAE, sampler: CropSampler, val_batch: torch.Tensor | None) -> None:
        super().__init__(model, model.config)
        self.sampler, self.val_batch = sampler, val_batch
        self.device = next(model.parameters()).device

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return self.sampler.sample(batch_size, generator).to(self.device)

    def loss(self, batch: torch.Tensor):
        output = self.model(batch)
        mse = F.mse_loss(output.reconstruction.float(), batch)
        loss = mse + self.config.commitment * output.commitment_loss
        means = {"loss": loss.item(), "mse": mse.item(),
                 **{f"perplexity_{n}": float(p) for n, p in zip(LEVEL_NAMES, output.perplexities)}}
        return loss, means, {f"dead_{n}": d for n, d in zip(LEVEL_NAMES, output.dead_codes)}

    def validate(self) -> dict | None:
        return None if self.val_batch is None else validate(self.model, self.val_batch, self.device)

    def describe(self, record: dict) -> str:
        perplexities = "/".join(f"{record[f'perplexity_{n}']:.0f}" for n in LEVEL_NAMES)
        dead = "/".join(f"{int(record[f'dead_{n}'])}" for n in LEVEL_NAMES)
        psnr_value = -10 * math.log10(max(record["mse"], 1e-10))
        return (f"loss {record['loss']:.4f} psnr {psnr_value:.2f} ppl {perplexities} restarts {dead} "
                f"{record['steps_per_s']:.2f} it/s")

    def describe_validation(self, record: dict) -> str:
        return (f"validation PSNR {record['val_psnr_3']:.2f} dB (previews: top+mid {record['val_psnr_2']:.2f}, "
                f"top {record['val_psnr_1']:.2f}); used codes "
                + ", ".join(f"{n} {record[f'val_used_{n}']}" for n in LEVEL_NAMES))


def train_autoencoder(options: TrainOptions, config: AutoencoderConfig | None = None, resume: bool = False,
                      console: Console | None = None,
                      on_step: Callable[[int, torch.nn.Module], None] | None = None) -> TrainState:
    """Train (or resume) an autoencoder run in options.out; returns the final state.

    With resume=True the model config, optimizer, step, validation history and RNG states come from
    out/checkpoint.pt, so the run continues exactly where it stopped (options.steps may extend it).
    """
    console = console or Console(stderr=True)
    prepare_output(options.out)
    device = resolve_device(options.device)
    checkpoint = load_checkpoint(Path(options.out) / CHECKPOINT_NAME, "autoencoder") if resume else None
    if checkpoint is not None:
        config = AutoencoderConfig.from_dict(checkpoint["config"])
        options = resumed_options(checkpoint, options)
    config = config or AutoencoderConfig()

    train_paths = find_images(options.data, options.exclude, skip_under=[options.val] if options.val else [])
    val_paths = find_images(options.val, options.exclude)[:options.val_images] if options.val else []
    images = cache_images(train_paths, options.max_side, console, "caching training images")
    val_batch = (center_crops(cache_images(val_paths, options.max_side, console, "caching validation images"),
                              options.val_crop) if val_paths else None)

    torch.manual_seed(options.seed)
    model = HierarchicalVQVAE(config).to(device)
    step = checkpoint["step"] if checkpoint else 0
    console.print(f"[bold]autoencoder[/]: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
                  f"{len(train_paths)} training images, {len(val_paths)} validation images, device {device}, "
                  f"raw index cost {config.raw_index_bpp():.3f} bpp"
                  + (f", resuming at step {step}" if step else ""))
    task = AutoencoderTask(model, CropSampler(images, options.crop), val_batch)
    return run_training(task, options, checkpoint, console, on_step)


def cache_images(paths: list[Path], max_side: int, console: Console, what: str) -> list:
    images = []
    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        for path in progress.track(paths):
            images.append(load_rgb(path, max_side))
    return images

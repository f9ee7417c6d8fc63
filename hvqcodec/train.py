"""Training of the hierarchical VQ-VAE: cached crops, AdamW with warmup + cosine, checkpoints, exact resume."""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .autoencoder import LEVEL_NAMES, AutoencoderConfig, HierarchicalVQVAE
from .device import training_device
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
    time_budget: float = 0.0  # minutes; 0 = none. With a budget the schedule follows time (or steps, if sooner)
    decoder_only: bool = False  # autoencoder: freeze the encoder side, so codes (and priors) stay valid
    encoder_only: bool = False  # autoencoder: freeze codebooks, context path and decoder; train the encoder trunk
    command: str = ""  # the command line that started the run, for the manifest

    def to_dict(self) -> dict:
        data = asdict(self)
        data["exclude"] = list(self.exclude)
        return data


@dataclass
class TrainState:
    step: int = 0
    history: list[dict] = field(default_factory=list)  # validation records


def learning_rate(step: int, options: TrainOptions, time_fraction: float = 0.0) -> float:
    """Linear warmup, then cosine decay to 10% of the peak; with a time budget, over whichever of steps and
    time runs out first (time_fraction: share of the budget used)."""
    if step < options.warmup:
        return options.lr * (step + 1) / options.warmup
    progress = min(1.0, max((step - options.warmup) / max(1, options.steps - options.warmup), time_fraction))
    return options.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def prepare_output(out: str | Path) -> Path:
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        # A probe name per process: under torchrun every rank checks the same folder at the same moment.
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DataError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    return path


@torch.no_grad()
def validate(model: HierarchicalVQVAE, images: torch.Tensor, device: torch.device, chunk: int = 4) -> dict:
    """Mean PSNR of every prefix of the streams (previews, levels, refinement stages), per-stream code perplexity.

    Keys: val_psnr_N for N streams (1 top only, 2 top + mid, 3 levels, 4+ with refinement stages)."""
    was_training = model.training
    model.eval()
    scores = {n: [] for n in range(model.config.num_streams, 0, -1)}
    counts = ([torch.zeros(q.codebook_size) for q in model.quantisers]
              + [torch.zeros(r.codebook_size) for r in model.refiners])
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
    for name, count in zip(model.config.stream_names, counts):
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


def distributed_context() -> tuple[int, int]:
    """(rank, world size): under torchrun (WORLD_SIZE > 1) the process group is started here, gloo on the CPU
    and NCCL on GPUs; a plain run is rank 0 of 1."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() and os.environ.get("LOCAL_RANK") else "gloo")
    return dist.get_rank(), dist.get_world_size()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def _replicas_identical(model: torch.nn.Module) -> bool:
    """Whether every process holds the same parameters (what DDP promises): compares sha256s over the group.

    (Buffers such as EMA codebooks are re-broadcast from rank 0 at every forward pass.)"""
    import torch.distributed as dist

    digest = hashlib.sha256()
    for value in model.parameters():
        digest.update(value.detach().float().cpu().numpy().tobytes())
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest.hexdigest())
    return len(set(digests)) == 1


def run_training(task: TrainingTask, options: TrainOptions, checkpoint: dict | None, console: Console,
                 on_step: Callable[[int, torch.nn.Module], None] | None = None) -> TrainState:
    """The training loop: warmup + cosine AdamW, logging, validation, checkpoints, Ctrl-C, exact resume.

    The model must already be built (after torch.manual_seed(options.seed)) and on options' device. Under
    torchrun the same loop trains with DistributedDataParallel: every process draws its own crops (batch size
    is per process), gradients are averaged, and rank 0 alone logs, validates and writes checkpoints. EMA
    codebooks follow rank 0's (DDP broadcasts buffers). A resumed multi-process run continues the weights and
    optimizer exactly but not the other ranks' crop sequence.
    """
    out = Path(options.out)
    checkpoint_path = out / CHECKPOINT_NAME
    device = next(task.model.parameters()).device
    rank, world = distributed_context()
    generator = torch.Generator().manual_seed(options.seed)
    model = task.model
    trainable = [p for p in model.parameters() if p.requires_grad]  # not a frozen side (--decoder-only, --encoder-only)
    optimizer = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=options.weight_decay)
    state = TrainState()
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        state = TrainState(step=checkpoint["step"], history=list(checkpoint["history"]))
        _set_rng_state(checkpoint["rng"], generator, device)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        generator.manual_seed(options.seed + 1_000_003 * rank + state.step if rank else options.seed)
        # The task calls its model for the loss; the DDP wrapper is what must be called for gradient averaging.
        task.model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        console = console if rank == 0 else Console(file=open(os.devnull, "w"))

    def save() -> None:
        if rank != 0:
            return
        atomic_torch_save({
            "kind": f"{task.kind}-checkpoint", "config": task.config.to_dict(), "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "step": state.step, "history": state.history,
            "options": options.to_dict(), "rng": _rng_state(generator, device), **task.checkpoint_extras(),
        }, checkpoint_path)

    model.train()
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    log_file = open(out / LOG_NAME if rank == 0 else os.devnull, "a")
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
            started = time.perf_counter()
            budget = 60 * options.time_budget
            while state.step < options.steps:
                used = (time.perf_counter() - started) / budget if budget else 0.0
                if budget and world > 1:  # every process must stop at the same step: rank 0's clock decides
                    clock = torch.tensor([used], dtype=torch.float64)
                    torch.distributed.broadcast(clock, 0)
                    used = float(clock)
                if used >= 1.0:
                    console.print(f"time budget of {options.time_budget:g} min reached at step {state.step}")
                    log({"step": state.step, "time_budget_reached": True})
                    save()
                    break
                lr = learning_rate(state.step, options, used)
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
                              **({"world_size": world} if world > 1 else {}),
                              **{k: v / window_steps for k, v in window.items() if k in means},
                              **{k: v for k, v in window.items() if k in sums}}
                    log(record)
                    progress.update(bar, completed=state.step, description=task.describe(record))
                    if not console.is_terminal:
                        console.print(f"step {state.step}: {task.describe(record)}")
                    window, window_start, window_steps = {}, time.perf_counter(), 0
                if rank == 0 and (state.step % options.val_every == 0 or state.step == options.steps):
                    result = task.validate()
                    if result is not None:
                        record = {"step": state.step, **result}
                        state.history.append(record)
                        log(record)
                        progress.console.print(f"step {state.step}: {task.describe_validation(record)}")
                if state.step % options.checkpoint_every == 0 or state.step == options.steps:
                    save()
                progress.update(bar, completed=state.step)
        if world > 1:
            log({"step": state.step, "world_size": world, "replicas_identical": _replicas_identical(model)})
            # Every process done with its collectives before any tears the group down (a process that left
            # while the other still talked to it aborted at exit now and then, in CI).
            torch.distributed.barrier()
    except KeyboardInterrupt:
        save()
        console.print(f"interrupted: checkpoint saved at step {state.step} in {checkpoint_path} "
                      f"(continue with --resume)")
        raise
    finally:
        log_file.close()
        task.model = model  # drops the DDP wrapper before its process group goes
        if world > 1:
            # Torn down here, not at interpreter exit: there gloo's threads can abort a finished process
            # ("terminate called without an active exception", exit -6, seen in CI).
            torch.distributed.destroy_process_group()
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
        names = self.config.stream_names
        means = {"loss": loss.item(), "mse": mse.item(),
                 **{f"perplexity_{n}": float(p) for n, p in zip(names, output.perplexities)}}
        return loss, means, {f"dead_{n}": d for n, d in zip(names, output.dead_codes)}

    def validate(self) -> dict | None:
        return None if self.val_batch is None else validate(unwrap(self.model), self.val_batch, self.device)

    def describe(self, record: dict) -> str:
        names = self.config.stream_names
        perplexities = "/".join(f"{record[f'perplexity_{n}']:.0f}" for n in names)
        dead = "/".join(f"{int(record[f'dead_{n}'])}" for n in names)
        psnr_value = -10 * math.log10(max(record["mse"], 1e-10))
        return (f"loss {record['loss']:.4f} psnr {psnr_value:.2f} ppl {perplexities} restarts {dead} "
                f"{record['steps_per_s']:.2f} it/s")

    def describe_validation(self, record: dict) -> str:
        stages = "".join(f", +{s} stage{'s' if s > 1 else ''} {record[f'val_psnr_{3 + s}']:.2f}"
                         for s in range(1, self.config.refine_stages + 1))
        return (f"validation PSNR {record['val_psnr_3']:.2f} dB{stages} (previews: top+mid "
                f"{record['val_psnr_2']:.2f}, top {record['val_psnr_1']:.2f}); used codes "
                + ", ".join(f"{n} {record[f'val_used_{n}']}" for n in self.config.stream_names))


def train_autoencoder(options: TrainOptions, config: AutoencoderConfig | None = None, resume: bool = False,
                      console: Console | None = None,
                      on_step: Callable[[int, torch.nn.Module], None] | None = None,
                      init_from: dict[str, torch.Tensor] | None = None) -> TrainState:
    """Train (or resume) an autoencoder run in options.out; returns the final state.

    With resume=True the model config, optimizer, step, validation history and RNG states come from
    out/checkpoint.pt, so the run continues exactly where it stopped (options.steps may extend it).
    """
    console = console or Console(stderr=True)
    prepare_output(options.out)
    device = training_device(options.device)
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
    if init_from is not None and checkpoint is None:
        _warm_start(model, init_from, console)
    if options.decoder_only:
        model.freeze_encoder_side()
    if options.encoder_only:
        model.freeze_all_but_encoder()
    step = checkpoint["step"] if checkpoint else 0
    console.print(f"[bold]autoencoder[/]: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
                  f"{len(train_paths)} training images, {len(val_paths)} validation images, device {device}, "
                  f"raw index cost {config.raw_index_bpp():.3f} bpp"
                  + (f", resuming at step {step}" if step else ""))
    task = AutoencoderTask(model, CropSampler(images, options.crop), val_batch)
    return run_training(task, options, checkpoint, console, on_step)


def _warm_start(model: torch.nn.Module, state: dict[str, torch.Tensor], console: Console) -> None:
    """Start from a trained model's weights: every tensor of the same name and shape is copied, so a model
    that adds refinement stages to a shipped one only has to learn the new parts (and adapt the rest)."""
    own = model.state_dict()
    copied = {k: v.to(own[k].dtype) for k, v in state.items() if k in own and own[k].shape == v.shape}
    own.update(copied)
    model.load_state_dict(own)
    console.print(f"warm start: {len(copied)} of {len(own)} tensors copied")


def cache_images(paths: list[Path], max_side: int, console: Console, what: str) -> list:
    images = []
    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        for path in progress.track(paths):
            images.append(load_rgb(path, max_side))
    return images

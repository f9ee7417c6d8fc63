"""Device selection shared by training, the codec and the CLI."""
from __future__ import annotations

import torch

from .errors import HvqError


def resolve_device(name: str | torch.device) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is a clear error, not a crash later."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HvqError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if name != "cpu" and not name.startswith("cuda"):
        raise HvqError(f"--device {name}: expected auto, cpu or cuda")
    return torch.device(name)


def training_device(name: str | torch.device) -> torch.device:
    """The device of this training process: under torchrun (LOCAL_RANK set) each process takes its own GPU."""
    import os

    device = resolve_device(name)
    local_rank = os.environ.get("LOCAL_RANK")
    if device.type == "cuda" and local_rank is not None:
        device = torch.device("cuda", int(local_rank))
        torch.cuda.set_device(device)
    return device

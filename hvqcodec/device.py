"""Device selection shared by training, the codec and the CLI."""
from __future__ import annotations

import torch

from .errors import HvqError
from .filecoding import decoder_precision


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


def cpu_supports(*features: str) -> bool:
    """Whether this CPU has any of the named instruction sets, as torch.cpu's private helpers report them
    (`_is_<feature>_supported`: avx2, avx512, avx512_bf16, vnni, amx_tile); False where a build lacks them."""
    try:
        return any(bool(getattr(torch.cpu, f"_is_{feature}_supported")()) for feature in features)
    except AttributeError:  # private helpers: absent from some builds
        return False


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matmuls and convolutions run natively on this CPU (AMX or AVX512-BF16); elsewhere they
    are emulated and slower than float32. (A GPU would have them too; its decoder stays float32 until measured.)"""
    return device.type == "cpu" and cpu_supports("amx_tile", "avx512_bf16")


def decoder_low_precision(device: torch.device, precision: str | None = None) -> bool:
    """Whether the autoencoder's decoder runs its bulk in bfloat16 (`HierarchicalVQVAE.decode`): `precision`
    (else $HVQCODEC_DECODER_PRECISION, else auto) is float32, bfloat16, or auto: bfloat16 where it is native.
    Only pixels depend on it (by a few levels at most); the codes and the file never do."""
    precision = decoder_precision(precision)
    return precision == "bfloat16" or (precision == "auto" and native_bf16(device))

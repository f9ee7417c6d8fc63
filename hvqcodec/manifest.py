"""The models folder and its manifest (standard library only, so `hvqcodec models list` starts without torch)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ModelError
from .fileio import atomic_write_bytes
from .wavefront import level_blocks

MANIFEST_NAME = "manifest.json"
DEFAULT_MODEL = "hvq-small"


def models_dir() -> Path:
    """Folder of the models: $HVQCODEC_MODELS if set, else the installed `hvqcodec._models` package, else the
    checkout's models/."""
    if os.environ.get("HVQCODEC_MODELS"):
        return Path(os.environ["HVQCODEC_MODELS"])
    try:
        folder = Path(str(resources.files("hvqcodec._models")))
        if (folder / MANIFEST_NAME).is_file():
            return folder
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "models"


def read_manifest(folder: Path | None = None) -> dict[str, Any]:
    path = (folder or models_dir()) / MANIFEST_NAME
    if not path.is_file():
        return {"models": {}}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable model manifest ({exc})") from None
    if not isinstance(manifest.get("models"), dict):
        raise ModelError(f"{path}: malformed model manifest (no 'models' table)")
    return manifest


def write_manifest(manifest: dict[str, Any], folder: Path) -> None:
    atomic_write_bytes(folder / MANIFEST_NAME, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


def available_models(folder: Path | None = None) -> dict[str, dict[str, Any]]:
    return read_manifest(folder)["models"]


def default_model(folder: Path | None = None) -> str:
    """The manifest's default model, else DEFAULT_MODEL."""
    return read_manifest(folder).get("default", DEFAULT_MODEL)


WEIGHTS_FORMAT = "hvqcodec-weights"
# Version 2: the priors' tables may be 8-bit (intprior: computed in float32). A release that only knows
# version 1 (16-bit tables) refuses such a file instead of computing different probabilities from it.
WEIGHTS_VERSION = 2
READABLE_WEIGHTS_VERSIONS = (1, 2)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# What a variant may change: how codes are ordered into streams, never what the codes or their probabilities are.
VARIANT_SETTINGS = ("coding_block",)


def variant_sha256(file_sha256: str, coding: dict[str, Any]) -> str:
    """The hash a variant is named by in .hvq headers: its weights file's hash and its coding settings together,
    so that files made with different settings (whose streams differ) name different hashes."""
    return hashlib.sha256(f"{file_sha256}\n{json.dumps(coding, sort_keys=True)}".encode()).hexdigest()


def check_coding(coding: Any, where: str) -> dict[str, Any]:
    if not isinstance(coding, dict) or not set(coding) <= set(VARIANT_SETTINGS):
        raise ModelError(f"{where}: a variant may only set {', '.join(VARIANT_SETTINGS)}")
    try:
        level_blocks(coding.get("coding_block", 0))
    except ValueError as exc:
        raise ModelError(f"{where}: {exc}") from None
    return coding


@dataclass
class ModelEntry:
    """Where a shipped model's weights are and what names it: the manifest's entry, checked (torch-free)."""
    name: str
    path: Path  # its weights file
    file_sha256: str  # the weights file's hash
    sha256: str  # what .hvq headers name: the file's hash, or a variant's (`variant_sha256`)
    coding: dict[str, Any] | None  # a variant's coding settings (None: the weights file's own)
    ladder: list | None


def unknown_model(name: str, models: dict[str, Any]) -> ModelError:
    return ModelError(f"unknown model {name!r} (available: {', '.join(sorted(models)) or 'none'})")


def model_entry(name: str | None = None, folder: Path | None = None) -> ModelEntry:
    """The manifest's entry for a model (default: the default model); ModelError for an unknown name or a variant
    whose settings do not match its hash."""
    folder = folder or models_dir()
    name = name or default_model(folder)
    models = available_models(folder)
    if name not in models:
        raise unknown_model(name, models)
    entry = models[name]
    coding = None
    file_sha256 = entry["sha256"]
    if "coding" in entry:  # a variant: another model's weights file, coded with its own settings
        coding = check_coding(entry["coding"], f"model {name}")
        file_sha256 = entry.get("file_sha256", "")
        if variant_sha256(file_sha256, coding) != entry["sha256"]:
            raise ModelError(f"model {name}: its coding settings do not match its hash (the manifest was edited)")
    return ModelEntry(name, folder / entry["file"], file_sha256, entry["sha256"], coding, entry.get("ladder"))


def check_weights_file(path: Path, expected_sha256: str | None = None) -> None:
    """ModelError unless the weights file exists and, when a hash is expected, has it."""
    if not path.is_file():
        raise ModelError(f"{path}: model weights not found")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise ModelError(f"{path.name}: weights hash mismatch (expected {expected_sha256[:12]}, "
                             f"found {actual[:12]}); the file is corrupt or was replaced")


def check_payload(payload: Any, path: Path) -> dict[str, Any]:
    """ModelError unless a weights file's contents are an hvqcodec weights payload of a version read here."""
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise ModelError(f"{path.name}: not an hvqcodec weights file")
    if payload.get("version") not in READABLE_WEIGHTS_VERSIONS:
        raise ModelError(f"{path.name}: weights format version {payload.get('version')} is not supported")
    return payload

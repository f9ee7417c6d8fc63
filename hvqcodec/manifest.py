"""The models folder and its manifest (standard library only, so `hvqcodec models list` starts without torch)."""
from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ModelError
from .fileio import atomic_write_bytes

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

"""Shipped models: export of trained checkpoints to fp16 weight files, the manifest, and verified loading.

A weight file is named `<name>-<first 12 hex of its sha256>.pt` and listed in `manifest.json` with its full
hash, config, training command, data and measured metrics. Model names are explicit strings (never positions
in a list), so adding a model never changes what an existing name means.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import tensorfile
from .autoencoder import AutoencoderConfig, HierarchicalVQVAE
from .intprior import export_prior, tables_dtype
from .priors import HierarchicalPrior, PriorConfig, level_blocks
from .errors import ModelError
from .fileio import atomic_torch_save
from .manifest import (DEFAULT_MODEL, MANIFEST_NAME, READABLE_WEIGHTS_VERSIONS, VARIANT_SETTINGS,  # noqa: F401
                       WEIGHTS_FORMAT, WEIGHTS_VERSION, available_models, check_coding, check_payload,
                       check_weights_file, default_model, model_entry, unknown_model, models_dir, read_manifest, sha256_file,
                       variant_sha256, write_manifest)

_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def record_metrics(name: str, metrics: dict[str, Any], section: str | None = None,
                   folder: Path | None = None) -> None:
    """Merge measured metrics into a model's manifest entry (under `section` when given)."""
    folder = folder or models_dir()
    manifest = read_manifest(folder)
    if name not in manifest["models"]:
        raise ModelError(f"unknown model {name!r}")
    target = manifest["models"][name].setdefault("metrics", {})
    if section:
        target = target.setdefault(section, {})
    target.update(metrics)
    write_manifest(manifest, folder)


def half_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp16 copy of a state dict (float tensors only): what ships, and what the priors are trained against."""
    return {k: (v.half() if v.is_floating_point() else v) for k, v in state_dict.items()}


def _state_digest(state_dict: dict[str, torch.Tensor]) -> "hashlib._Hash":
    """sha256 over a state dict's names and fp16 values, in name order."""
    digest = hashlib.sha256()
    for key, value in sorted(half_state(state_dict).items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().numpy().tobytes())
    return digest


def autoencoder_fingerprint(model: HierarchicalVQVAE) -> str:
    """sha256 of the autoencoder's fp16 weights: ties trained priors to the exact autoencoder they model."""
    return _state_digest(model.state_dict()).hexdigest()


def codes_fingerprint(model: HierarchicalVQVAE) -> str:
    """sha256 of what decides an image's codes: the encoder side's fp16 weights (encoder, projections,
    codebooks, context path) and the rate weights codes are chosen with. Models that share it give every
    image the same codes (e.g. one whose decoder alone was trained on), so they can share priors."""
    digest = _state_digest(model.encoder_side_state())
    config = model.config
    digest.update(json.dumps({"refine_lambdas": list(config.refine_lambdas),
                              "bottom_lambdas": list(config.bottom_lambdas)}).encode())
    return digest.hexdigest()


def priors_fit(trained_for: dict[str, Any], model: HierarchicalVQVAE) -> bool:
    """Whether priors trained for the autoencoder described by `trained_for` (a priors checkpoint's
    "autoencoder" entry) model this one's codes: the same codes fingerprint, or the same weights. Checkpoints
    from before codes fingerprints name the shipped model they were trained on; its codes decide."""
    if trained_for.get("codes_fingerprint"):
        return trained_for["codes_fingerprint"] == codes_fingerprint(model)
    if trained_for.get("fingerprint") == autoencoder_fingerprint(model):
        return True
    name = trained_for.get("name")
    if not name or name not in available_models():
        return False
    source = load_model(name)
    return (autoencoder_fingerprint(source) == trained_for.get("fingerprint")
            and codes_fingerprint(source) == codes_fingerprint(model))


def export_model(checkpoint: dict[str, Any], name: str, folder: Path, data: str = "",
                 metrics: dict[str, Any] | None = None, force: bool = False,
                 priors_checkpoint: dict[str, Any] | None = None,
                 calibration_codes: Sequence[torch.Tensor] | None = None,
                 coding_block: int | Sequence | None = None, priors_from: str | None = None) -> dict[str, Any]:
    """Write a checkpoint's autoencoder as fp16 weights (plus, optionally, the integer tables of trained priors)
    into folder as one file and record it in the manifest; returns the entry. With calibration codes (code
    grids of training crops, as `train priors` keeps in codes.pt) the priors get 8-bit tables, computed in
    float32, unless a layer is too wide for float32-exact sums; otherwise (and without codes) 16-bit tables
    computed in float64 (the format of models up to hvq-vr3). The manifest records which (`table_bits`).
    coding_block (PriorConfig.coding_block) replaces the priors' own: it changes how files are coded, not the
    trained weights. priors_from (instead of a priors checkpoint) names a shipped model whose integer priors
    and coding settings are taken as they are: the checkpoint must give every image that model's codes (a
    decoder trained with `--decoder-only` from it), so its files' streams are the same."""
    manifest = _manifest_for_new_entry(name, folder, force)
    config = AutoencoderConfig.from_dict(checkpoint["config"])
    # Half precision halves the download; float buffers (codebooks, EMA statistics) are stored as fp16 too.
    state = half_state(checkpoint["model"])
    payload = {"format": WEIGHTS_FORMAT, "version": 1, "name": name, "config": config.to_dict(), "state_dict": state}
    prior_entry = None
    if priors_from is not None:
        if priors_checkpoint is not None:
            raise ModelError("give either a priors checkpoint or a model to take the priors from, not both")
        prior_entry = _take_priors(priors_from, config, state, folder, payload)
        if coding_block is not None:
            level_blocks(coding_block)  # ValueError for a malformed one
            payload["prior_config"]["coding_block"] = prior_entry["config"]["coding_block"] = coding_block
    elif priors_checkpoint is not None:
        payload["prior_config"], payload["prior_tables"] = _integer_priors(priors_checkpoint, config, state,
                                                                           calibration_codes)
        if coding_block is not None:
            level_blocks(coding_block)  # ValueError for a malformed one
            payload["prior_config"]["coding_block"] = coding_block
        table_bits = 8 if tables_dtype(payload["prior_tables"]) == torch.float32 else 16
        if table_bits == 8:
            payload["version"] = WEIGHTS_VERSION
        options = priors_checkpoint.get("options", {})
        prior_entry = {"config": payload["prior_config"], "training_command": options.get("command", ""),
                       "training_steps": priors_checkpoint.get("step"),
                       "validation": priors_checkpoint["history"][-1] if priors_checkpoint.get("history") else {},
                       "table_bits": table_bits}
    filename, digest = _write_weights(payload, name, folder, manifest)
    options = checkpoint.get("options", {})
    entry = {
        "file": filename,
        "sha256": digest,
        "kind": "codec" if prior_entry else "autoencoder",
        "config": config.to_dict(),
        "priors": prior_entry,
        "parameters": sum(p.numel() for p in HierarchicalVQVAE(config).parameters()),
        "training_command": options.get("command", ""),
        "training_steps": checkpoint.get("step"),
        "data": data,
        "validation": checkpoint["history"][-1] if checkpoint.get("history") else {},
        "metrics": metrics or {},
    }
    manifest["models"][name] = entry
    manifest.setdefault("default", name)
    write_manifest(manifest, folder)
    return entry


def _write_weights(payload: dict[str, Any], name: str, folder: Path, manifest: dict[str, Any]) -> tuple[str, str]:
    """Write a weights payload as folder/NAME-HASH.pt (atomically); an older file of the same model that no
    other model uses is removed. Returns the file name and its sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp_path = folder / f".{name}.export.pt"
    digest = hashlib.sha256(atomic_torch_save(payload, tmp_path)).hexdigest()
    filename = f"{name}-{digest[:12]}.pt"
    tmp_path.replace(folder / filename)
    old = manifest["models"].get(name)
    if old and old.get("file") != filename and not _file_users(manifest, old["file"], besides=name):
        (folder / old["file"]).unlink(missing_ok=True)
    return filename, digest


def add_post_filter(base: str, name: str, filter_path: Path, folder: Path | None = None,
                    force: bool = False) -> dict[str, Any]:
    """A new model: `base`'s weights and priors (a variant's coding settings included) plus a trained
    post-filter (`hvqcodec train post-filter` for that very model). The codes, priors and streams are base's;
    the pictures are filtered. Its own weights file and hash; calibrate its ladder afterwards."""
    from .postfilter import load_post_filter

    folder = folder or models_dir()
    manifest = _manifest_for_new_entry(name, folder, force)
    models = manifest["models"]
    if base not in models:
        raise unknown_model(base, models)
    source = models[base]
    try:
        checkpoint, post_filter = load_post_filter(filter_path)
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    if checkpoint.get("model_sha256") != source["sha256"]:
        raise ModelError(f"{filter_path}: trained for model {checkpoint.get('model')!r}, not {base!r} "
                         f"(train it with --model {base})")
    payload = read_weights(folder / source["file"], source.get("file_sha256", source["sha256"]))
    config = AutoencoderConfig.from_dict(payload["config"])
    if config.post_filter:
        raise ModelError(f"model {base!r} has a post-filter already")
    config.post_filter = (checkpoint["config"]["channels"], checkpoint["config"]["layers"])
    payload.update(name=name, config=config.to_dict(), state_dict={
        **payload["state_dict"], **half_state({f"post_filter.{k}": v for k, v in post_filter.state_dict().items()})})
    if "coding" in source:  # a variant: its coding settings become the new file's own
        payload["prior_config"] = {**payload["prior_config"], **check_coding(source["coding"], f"model {base}")}
    filename, digest = _write_weights(payload, name, folder, manifest)
    options = checkpoint.get("options", {})
    entry = {key: value for key, value in source.items()
             if key not in ("ladder", "ladder_calibration", "metrics", "variant_of", "coding", "file_sha256")}
    entry.update({
        "file": filename, "sha256": digest, "config": config.to_dict(),
        "priors": dict(source["priors"], config=payload["prior_config"]) if source.get("priors") else None,
        "parameters": sum(p.numel() for p in HierarchicalVQVAE(config).parameters()),
        "post_filter": {"base_model": base, "training_steps": checkpoint.get("steps"),
                        "training_command": options.get("command", ""), "validation": checkpoint.get("validation")},
        "metrics": {}})
    models[name] = entry
    write_manifest(manifest, folder)
    return entry


def _take_priors(base: str, config: AutoencoderConfig, half: dict[str, torch.Tensor], folder: Path,
                 payload: dict[str, Any]) -> dict[str, Any]:
    """Put shipped model `base`'s integer priors (a variant's coding settings folded in) into payload, after
    checking that the autoencoder (config, fp16 state) chooses the same codes; returns the manifest's priors
    entry."""
    models = read_manifest(folder)["models"]
    if base not in models:
        raise unknown_model(base, models)
    source = models[base]
    if not source.get("priors"):
        raise ModelError(f"model {base!r} has no priors to take")
    model = HierarchicalVQVAE(config)
    model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in half.items()})
    if codes_fingerprint(model) != codes_fingerprint(load_model(base, folder)):
        raise ModelError(f"this autoencoder chooses other codes than {base!r}, so {base}'s priors do not fit it "
                         f"(train its decoder alone: --decoder-only --init-from {base})")
    base_payload = read_weights(folder / source["file"], source.get("file_sha256", source["sha256"]))
    coding = check_coding(source["coding"], f"model {base}") if "coding" in source else {}
    payload.update(version=base_payload["version"], prior_tables=base_payload["prior_tables"],
                   prior_config={**base_payload["prior_config"], **coding})
    return dict(source["priors"], config=payload["prior_config"], taken_from=base)


def _integer_priors(priors_checkpoint: dict[str, Any], config: AutoencoderConfig, half: dict[str, torch.Tensor],
                    calibration_codes: Sequence[torch.Tensor] | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    model = HierarchicalVQVAE(config)
    model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in half.items()})
    if not priors_fit(priors_checkpoint.get("autoencoder", {}), model):
        raise ModelError("these priors were trained on the codes of a different autoencoder "
                         "(train them with --model set to this autoencoder)")
    prior_config = PriorConfig.from_dict(priors_checkpoint["config"])
    prior = HierarchicalPrior(prior_config)
    prior.load_state_dict(priors_checkpoint["model"])
    if calibration_codes is not None:
        try:
            return prior_config.to_dict(), export_prior(prior, calibration_codes)
        except ValueError:  # a layer too wide for float32-exact 8-bit sums: keep the 16-bit format
            pass
    return prior_config.to_dict(), export_prior(prior)


def _manifest_for_new_entry(name: str, folder: Path, force: bool) -> dict[str, Any]:
    """The manifest that a model called `name` is about to be added to, after checking the name is well-formed
    and, unless forced, not taken."""
    if not _NAME_PATTERN.match(name):
        raise ModelError(f"model name {name!r}: use lowercase letters, digits, '.', '_' or '-'")
    manifest = read_manifest(folder)
    if name in manifest["models"] and not force:
        raise ModelError(f"model {name!r} already exists in {folder / MANIFEST_NAME} (use --force to replace it)")
    return manifest


def _file_users(manifest: dict[str, Any], filename: str, besides: str) -> list[str]:
    """Models other than `besides` whose entries use the weights file `filename` (variants share one)."""
    return [other for other, entry in manifest["models"].items() if other != besides and entry.get("file") == filename]


def make_variant(base: str, name: str, coding: dict[str, Any], folder: Path | None = None,
                 force: bool = False) -> dict[str, Any]:
    """Record `name` in the manifest as `base`'s weights coded with other settings (VARIANT_SETTINGS, e.g. a
    coding block; none given: base's own, so that only the ladder differs): no new weights file, its own hash (`variant_sha256`), its own ladder (calibrate it). Files
    name the variant, so they decode only with the same settings; the base model keeps decoding its own."""
    folder = folder or models_dir()
    manifest = _manifest_for_new_entry(name, folder, force)
    models = manifest["models"]
    if base not in models:
        raise unknown_model(base, models)
    if name == base:
        raise ModelError("a variant needs a name of its own")
    source = models[base]
    if not source.get("priors"):
        raise ModelError(f"model {base!r} has no priors: nothing to code differently")
    coding = check_coding(dict(coding or source.get("coding", {})), f"variant {name}")
    file_sha256 = source.get("file_sha256", source["sha256"])
    priors = dict(source["priors"], config={**source["priors"]["config"], **coding})
    entry = {key: value for key, value in source.items()
             if key not in ("ladder", "ladder_calibration", "metrics", "variant_of", "coding")}
    entry.update({"variant_of": source.get("variant_of", base), "coding": coding, "file_sha256": file_sha256,
                  "sha256": variant_sha256(file_sha256, coding), "priors": priors, "metrics": {}})
    models[name] = entry
    write_manifest(manifest, folder)
    return entry


@dataclass
class ModelBundle:
    """A shipped model: its name and weights hash (what .hvq headers name), the autoencoder, the priors."""
    name: str
    sha256: str
    autoencoder: HierarchicalVQVAE
    prior_config: PriorConfig | None
    prior_tables: dict[str, torch.Tensor] | None
    ladder: list[dict] | None = None  # quality -> operating point, from the manifest


def read_weights(path: Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """The payload of an exported weights file (config, fp16 state dict, prior tables), checked to be one and,
    when a hash is expected, to have it. Read by `tensorfile` (no torch.load: its pure-Python unpickler takes
    longer than the rest of the loading), torch.load only for what that reader does not take."""
    check_weights_file(path, expected_sha256)
    try:
        payload = _as_tensors(tensorfile.load(path))
    except tensorfile.TensorFileError:
        # Whatever the torch-free reader does not take (a storage type it does not know, say), torch may.
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many exception types for corrupt files
            raise ModelError(f"{path.name}: unreadable weights ({type(exc).__name__})") from None
    return check_payload(payload, path)


def _as_tensors(value: Any) -> Any:
    """`tensorfile.load`'s numpy arrays, wherever they are in a payload, as torch tensors (sharing their memory)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, dict):
        return type(value)((key, _as_tensors(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_as_tensors(item) for item in value)
    return value


def load_bundle_file(path: Path, expected_sha256: str | None = None) -> ModelBundle:
    """Rebuild a model bundle from an exported weight file, checking its hash when one is expected."""
    payload = read_weights(path, expected_sha256)
    model = HierarchicalVQVAE(AutoencoderConfig.from_dict(payload["config"]))
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in payload["state_dict"].items()}
    model.load_state_dict(state)
    prior_config = PriorConfig.from_dict(payload["prior_config"]) if "prior_config" in payload else None
    return ModelBundle(payload.get("name", path.stem), expected_sha256 or sha256_file(path), model.eval(),
                       prior_config, payload.get("prior_tables"))


def load_bundle(name: str | None = None, folder: Path | None = None) -> ModelBundle:
    """Load a model by name (default: the default model); unknown names and hash mismatches raise ModelError."""
    entry = model_entry(name, folder)
    bundle = load_bundle_file(entry.path, entry.file_sha256)
    if entry.coding is not None:  # a variant: another model's weights file, coded with its own settings
        if bundle.prior_config is None:
            raise ModelError(f"model {entry.name}: its weights file has no priors")
        bundle.prior_config = PriorConfig.from_dict({**bundle.prior_config.to_dict(), **entry.coding})
    bundle.name, bundle.sha256, bundle.ladder = entry.name, entry.sha256, entry.ladder
    return bundle


def load_model(name: str | None = None, folder: Path | None = None) -> HierarchicalVQVAE:
    """The autoencoder of a shipped model."""
    return load_bundle(name, folder).autoencoder

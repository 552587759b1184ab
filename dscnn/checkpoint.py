"""One checkpoint format for the whole toolkit: config + weights + form + metrics in one file.

A checkpoint rebuilds its model through the registry (never pickled modules): the train-form
model is built from the config, fused if the checkpoint is in deploy form, then loaded.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from dscnn._registry import build_model, config_from_dict
from dscnn.config import ArchConfig
from dscnn.reparam import is_deploy_form, reparameterize_model

FORMAT = "repnas-checkpoint"
VERSION = 1
Form = Literal["train", "deploy"]


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not match its architecture."""


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns besides the model."""

    config: ArchConfig
    form: Form
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (train or deploy form, detected) atomically: a crash never leaves half a file."""
    config = getattr(model, "config", None)
    if not isinstance(config, ArchConfig):
        raise CheckpointError("only registry models (with an ArchConfig in .config) can be checkpointed")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": {"family": config.family, **config.to_dict()},
        "form": "deploy" if is_deploy_form(model) else "train",
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metrics": dict(metrics or {}),
        "extra": dict(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw payload of a checkpoint file, validated for format; clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/garbage files
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or not a checkpoint file ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a repnas checkpoint (no '{FORMAT}' header)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{str(path)!r} has checkpoint version {payload.get('version')}, expected {VERSION}")
    return payload


def load_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Rebuild the model stored at ``path`` in its stored form; returns (model, checkpoint info)."""
    payload = read_checkpoint(path)
    try:
        config = config_from_dict(payload["config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{str(path)!r}: cannot rebuild its architecture: {exc}") from None
    form: Form = payload["form"]
    model = build_model(config)
    if form == "deploy":
        reparameterize_model(model)
    _load_state(model, payload["state_dict"], str(path))
    model.to(map_location)
    model.eval()
    return model, Checkpoint(config, form, payload.get("metrics", {}), payload.get("extra", {}))


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
            if keys
        )
        raise CheckpointError(f"{path!r} does not match the architecture in its config ({detail})")
    model.load_state_dict(state)

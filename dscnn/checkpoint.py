"""One checkpoint format for the whole toolkit: config + weights + form + metrics in one file.

A checkpoint rebuilds its model through the registry (never pickled modules): the train-form
model is built from the config, fused if the checkpoint is in deploy form, then loaded.

A channel-pruned deploy model (``save_checkpoint(..., pruned=True)``) no longer has the widths of
its config's fields: its saved config carries them (``pruned_layers``, see `dscnn.pruned`), so the
config and its hash describe the pruned model, and loading rebuilds it from the config alone.
Weights that disagree with the config (a missing layer, another kernel size) are a `CheckpointError`.

Files are written through a temp file beside the target (`temp_path`, ``.<name>.<pid>-<hex>.tmp``,
created with the permissions of any new file, i.e. 0o666 less the umask), then renamed; a temp
left by a killed writer is removed by the next write to the same path (`remove_stale_temps`).
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from dscnn._registry import build_model, config_from_dict
from dscnn.config import ArchConfig
from dscnn.pruned import pruned_config
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
    pruned: bool = False  # channel-pruned deploy model: layer widths come from the state_dict


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    pruned: bool = False,
) -> Path:
    """Write ``model`` (train or deploy form, detected) atomically: a crash never leaves half a file.

    ``pruned=True`` marks a channel-pruned deploy model, whose layer widths differ from its config's.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, ArchConfig):
        raise CheckpointError("only registry models (with an ArchConfig in .config) can be checkpointed")
    deploy = is_deploy_form(model)
    if pruned and not deploy:
        raise CheckpointError("a pruned model must be in deploy form (pruning works on the fused graph)")
    if pruned:
        try:
            config = pruned_config(model, config)
        except ValueError as exc:
            raise CheckpointError(f"cannot describe the pruned model: {exc}") from None
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": {"family": config.family, **config.to_dict()},
        "form": "deploy" if deploy else "train",
        "pruned": bool(pruned),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metrics": dict(metrics or {}),
        "extra": dict(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


#: A temp file of another writer that is this old (seconds) is stale even if its pid looks alive.
STALE_SECONDS = 24 * 3600


def temp_path(path: str | os.PathLike[str]) -> Path:
    """Create and return an empty ``.<name>.<pid>-<hex>.tmp`` beside ``path``, mode 0o666 less the umask.

    (``tempfile.mkstemp`` would make it 0o600, and the renamed file would keep that.)
    """
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a `temp_path` and a rename: a kill mid-write leaves the
    previous file whole (or none), never half a file."""
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Delete temp files of ``path`` (`temp_path` names) whose writer is gone; returns what was removed.

    Stale: the pid in the name is not a running process here, or the name has no pid (an older
    writer's), or the file is older than `STALE_SECONDS`. A live writer's temp is left alone.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{_glob_escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -4].split("-", 1)[0]
        try:
            old = time.time() - tmp.stat().st_mtime > STALE_SECONDS
        except FileNotFoundError:
            continue
        if old or not pid.isdigit() or not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


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
    missing = [key for key in ("config", "form", "state_dict") if key not in payload]
    if missing:
        raise CheckpointError(f"{str(path)!r} is incomplete: no {', '.join(missing)}")
    if payload["form"] not in ("train", "deploy"):
        raise CheckpointError(f"{str(path)!r} has an unknown form {payload['form']!r} (expected 'train' or 'deploy')")
    return payload


def load_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Rebuild the model stored at ``path`` in its stored form; returns (model, checkpoint info)."""
    payload = read_checkpoint(path)
    try:
        config = config_from_dict(payload["config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{str(path)!r}: cannot rebuild its architecture: {exc}") from None
    form: Form = payload["form"]
    pruned = bool(config.pruned_layers)
    if bool(payload.get("pruned", False)) != pruned or (pruned and form != "deploy"):
        raise CheckpointError(f"{str(path)!r}: pruned checkpoint without its pruned widths in the config "
                              "(written by an older repnas?): prune the model again")
    try:
        model = build_model(config)
    except ValueError as exc:
        raise CheckpointError(f"{str(path)!r}: cannot rebuild its architecture: {exc}") from None
    if form == "deploy" and not pruned:
        reparameterize_model(model)
    if pruned:
        _check_kernels(model, payload["state_dict"], str(path))
    _load_state(model, payload["state_dict"], str(path))
    model.to(map_location)
    model.eval()
    return model, Checkpoint(config, form, payload.get("metrics", {}), payload.get("extra", {}), pruned)


def _check_kernels(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """A stored conv kernel of another shape than the pruned config's: name the layer."""
    for name, module in model.named_modules():
        weight = state.get(f"{name}.weight")
        if isinstance(module, nn.Conv2d) and weight is not None and weight.shape != module.weight.shape:
            raise CheckpointError(f"{path!r}: {name}: stored kernel {tuple(weight.shape)} does not fit conv "
                                  f"{tuple(module.weight.shape)} of its config")


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

"""Where the model to prune comes from, and how its pruned version is saved.

- A repnas checkpoint (search result, model zoo, or an earlier pruning run), train or deploy form:
  fused with `dscnn.reparameterize_model`; the pruned model is saved with
  ``dscnn.save_checkpoint(..., pruned=True)`` and loads back through `dscnn.load_checkpoint`.
- A torchvision model by name (``--model resnet18``), built with ``weights=None`` and, if a file is
  given, loaded from a plain ``state_dict`` saved with ``torch.save(model.state_dict(), path)``. Its
  deploy form folds every BN with torch.fx (`dscnn.external`). The exception to the checkpoint
  format: the pruned model is saved as a whole module, ``torch.save(model, path)``, loaded back
  with ``torch.load(path, weights_only=False)`` -- only load files you wrote yourself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dscnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dscnn.external import TORCHVISION_MODELS, create_bench_model, deploy_function
from dscnn.pruned import pruned_config
from dscnn.reparam import reparameterize_model
from pruning.algorithm import PruningError


@dataclass
class ModelSource:
    """A deploy-form model ready to prune, and what is needed to describe and save it."""

    model: nn.Module  # deploy form, eval mode, on the CPU
    label: str  # what it is, for reports: the registry family + arch hash, or the torchvision name
    resolution: int  # input size the model is counted, timed and trained at (0 = the data's)
    num_classes: int
    kind: str  # "checkpoint" or "torchvision"

    def save(self, path: Path, pruned: nn.Module, metrics: dict[str, Any]) -> Path:
        """Write the pruned model: a repnas checkpoint, or a whole pickled module for torchvision.

        Writes ``path`` itself; `pruning.outputs.write_together` gives it a temp path and renames.
        """
        if self.kind == "checkpoint":
            pruned.config = pruned_config(pruned)  # type: ignore[assignment]  # the in-memory model describes itself too
            return save_checkpoint(path, pruned.cpu(), metrics=metrics, pruned=True)
        torch.save(pruned.cpu(), path)
        return path


def load_source(checkpoint: str | None, torchvision_model: str | None, *, num_classes: int) -> ModelSource:
    """The model named by the CLI: a checkpoint, or a torchvision builder (+ optional state_dict)."""
    if torchvision_model is not None:
        return _torchvision(torchvision_model, checkpoint, num_classes)
    if checkpoint is None:
        raise PruningError("give a checkpoint to prune, or --model NAME for a torchvision model")
    model, info = load_checkpoint(checkpoint)
    reparameterize_model(model)
    config = info.config
    label = f"{config.family}:{config.arch_hash()}"
    return ModelSource(model.eval(), label, config.resolution, config.num_classes, "checkpoint")


def _torchvision(name: str, state_path: str | None, num_classes: int) -> ModelSource:
    if name not in TORCHVISION_MODELS:
        raise PruningError(f"unknown torchvision model {name!r}; valid: {', '.join(TORCHVISION_MODELS)}")
    model = create_bench_model(name, num_classes=num_classes)
    if state_path is not None:
        try:
            model.load_state_dict(_read_state_dict(state_path))
        except RuntimeError as exc:  # missing / unexpected keys, shape mismatches
            raise CheckpointError(f"{state_path!r} does not match torchvision {name} ({exc})") from None
    deploy = deploy_function(name)(model)
    return ModelSource(deploy.eval(), name, 0, num_classes, "torchvision")


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise CheckpointError(f"state_dict file {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/garbage files
        raise CheckpointError(f"{path!r} is truncated or not a torch file ({exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path!r} is not a plain state_dict (name -> tensor)")
    return state

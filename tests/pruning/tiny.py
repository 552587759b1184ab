"""Tiny versions of every registry model (same deploy-graph structure, a fraction of the cost)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import dscnn
from tests.contracts import randomize_bn

#: Overrides per model-name prefix; a new model family must add its entry here.
TINY: dict[str, dict[str, Any]] = {
    "dscnn_": {"widths": (8, 16, 24, 32), "depths": (1, 1, 2, 1), "head_dim": 32,
               "spatial_ops": ("repaso", "scconv", "repaso", "repaso")},
    "fasternet_": {"embed_dim": 8, "depths": (1, 1, 2, 1), "head_dim": 32},
    "falconnet": {"widths": (16, 32, 64, 128), "depths": (1, 1, 1, 1), "head_dim": 32},
    "repvgg_": {"width_multipliers": (0.25, 0.25), "depths": (1, 1, 2, 1, 1)},
    "resnet": {"widths": (8, 16, 32)},
}


def tiny_overrides(name: str) -> dict[str, Any]:
    for prefix, overrides in TINY.items():
        if name.startswith(prefix):
            return {"num_classes": 10, "resolution": 32, **overrides}
    raise KeyError(f"no tiny config for {name!r}: add its family to tests/pruning/tiny.py")


def tiny_deploy(name: str, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    """Registry model ``name`` at tiny width with random BN statistics, fused, in eval mode."""
    torch.manual_seed(seed)
    model = dscnn.create_model(name, **tiny_overrides(name))
    randomize_bn(model, seed)
    return dscnn.reparameterize_model(model).to(dtype).eval()

"""Parameter and MAC counts. FLOPs in this project = multiply-accumulates counted by fvcore
`FlopCountAnalysis` on the deploy form at batch 1 (docs/design.md section 0)."""

from __future__ import annotations

import copy
import logging
import warnings

import torch
from torch import nn

from dscnn.reparam import reparameterize_model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, resolution: int, *, in_channels: int = 3) -> int:
    """fvcore multiply-accumulates of one forward pass at batch 1 on a ``resolution`` square input.

    Counts the model as given; call `deploy_copy` first to count the deploy form.
    """
    with warnings.catch_warnings():
        # fvcore's import scripts its focal loss with torch.jit.script, deprecated in torch 2.14: not our call
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    param = next(model.parameters())
    x = torch.zeros(1, in_channels, resolution, resolution, dtype=param.dtype, device=param.device)
    was_training = model.training
    model.eval()
    try:
        analysis = FlopCountAnalysis(model, x)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        # fvcore logs every op it does not count (adds, activations): not MACs, so not our concern.
        logging.getLogger("fvcore.nn.jit_analysis").setLevel(logging.ERROR)
        return int(analysis.total())
    finally:
        model.train(was_training)


def deploy_copy(model: nn.Module) -> nn.Module:
    """A fused (deploy-form) deep copy of ``model``; ``model`` itself is untouched."""
    return reparameterize_model(copy.deepcopy(model))

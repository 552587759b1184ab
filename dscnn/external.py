"""Baselines that are not ours (torchvision builders), measured by the same harness as our models.

Always built with ``weights=None``: nothing is downloaded. interpretation: their deploy form is the
model with every Conv+BN pair folded by torch's own ``torch.fx.experimental.optimization.fuse``
(what deploying them would do); their train form is the model as torchvision builds it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from dscnn._registry import create_model, list_models
from dscnn.complexity import deploy_copy

#: Bench names of the torchvision baselines (torchvision's own builder names).
TORCHVISION_MODELS: tuple[str, ...] = (
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5", "resnet18", "resnet50", "efficientnet_b0", "regnet_x_400mf",
)


def list_bench_models() -> list[str]:
    """Every name `create_bench_model` accepts: the registry's, then the torchvision baselines."""
    return list_models() + [n for n in TORCHVISION_MODELS if n not in list_models()]


def is_external(name: str) -> bool:
    return name in TORCHVISION_MODELS and name not in list_models()


def create_bench_model(name: str, *, resolution: int = 224, num_classes: int = 1000, **overrides: Any) -> nn.Module:
    """A train-form model by name: a registry model built for ``resolution``, or a torchvision baseline.

    Registry models receive ``resolution`` as a config field (it picks the stem for small inputs);
    torchvision models are resolution-agnostic.
    """
    if not is_external(name):
        if name not in list_models():
            raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_bench_models())}")
        return create_model(name, resolution=resolution, num_classes=num_classes, **overrides)
    if overrides:
        raise ValueError(f"torchvision model {name!r} takes no config overrides, got {sorted(overrides)}")
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def deploy_function(name: str) -> Callable[[nn.Module], nn.Module]:
    """How to build the deploy form of bench model ``name`` without changing the model."""
    return _fold_bn_copy if is_external(name) else deploy_copy


def _fold_bn_copy(model: nn.Module) -> nn.Module:
    from torch.fx.experimental.optimization import fuse

    return fuse(copy.deepcopy(model).eval(), inplace=True)  # fx traces the copy into a new module

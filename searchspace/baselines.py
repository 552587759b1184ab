"""Hand-designed baselines enqueued as the first trials of every study, trained like any other.

They enter the study as trials with a ``baseline`` user attribute and no sampled parameters, so
the sampler's distributions stay clean while every study compares against them at equal budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dscnn
from dscnn.config import ArchConfig


@dataclass(frozen=True)
class Baseline:
    label: str  # name shown in tables and plots
    model: str  # registry entrypoint
    overrides: dict[str, Any] = field(default_factory=dict)  # config fields changed from its defaults

    def config(self, *, num_classes: int, resolution: int) -> ArchConfig:
        model = dscnn.create_model(self.model, num_classes=num_classes, resolution=resolution, **self.overrides)
        config = model.config
        assert isinstance(config, ArchConfig)
        return config


BASELINES: dict[str, Baseline] = {
    b.label: b
    for b in (
        Baseline("dscnn_t0", "dscnn_t0"),
        Baseline("dscnn_t0_w0.5", "dscnn_t0", {"widths": (20, 40, 80, 160)}),
        Baseline("falconnet", "falconnet"),
        Baseline("fasternet_t0", "fasternet_t0"),
        Baseline("fasternet_t0_w0.5", "fasternet_t0", {"embed_dim": 20}),
        Baseline("resnet20", "resnet20"),  # He et al. 2016's CIFAR ResNet: the hand-designed net of this resolution
    )
}


def get_baseline(label: str) -> Baseline:
    try:
        return BASELINES[label]
    except KeyError:
        raise ValueError(f"unknown baseline {label!r}; valid: {', '.join(BASELINES)}") from None

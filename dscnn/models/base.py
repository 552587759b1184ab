"""The small interface every model shares, so search and pruning need no per-model special cases."""

from __future__ import annotations

from torch import Tensor, nn

from dscnn.config import ArchConfig, default_stem_stride
from dscnn.layers import make_activation


class ClassifierModel(nn.Module):
    """Base of every registry model: ``forward = forward_head(forward_features(x))``.

    Subclasses set ``self.config`` and ``self.classifier`` (the final nn.Linear) and implement
    `forward_features` and `forward_pre_logits` (features -> the vector the classifier reads).
    """

    config: ArchConfig
    classifier: nn.Linear

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_pre_logits(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.forward_pre_logits(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one of ``num_classes`` outputs."""
        old = self.classifier
        self.classifier = nn.Linear(old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype)
        self.config = self.config.replace(num_classes=num_classes)


def resolve_stem_stride(stem_stride: int, resolution: int) -> int:
    """``stem_stride`` if set (> 0), else the default for ``resolution``."""
    if stem_stride not in (0, 1, 2, 4):
        raise ValueError(f"stem_stride must be 0 (auto), 1, 2 or 4, got {stem_stride}")
    return stem_stride or default_stem_stride(resolution)


class PooledConvHeadModel(ClassifierModel):
    """FasterNet's and DSCNN's shape: ``stem`` -> ``stages`` -> global pool -> 1x1 conv (no bias) -> act -> Linear."""

    stem: nn.Module
    stages: nn.Module

    def _build_head(self, in_channels: int, head_dim: int, num_classes: int, activation: str) -> None:
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head_conv = nn.Conv2d(in_channels, head_dim, 1, bias=False)
        self.head_act = make_activation(activation)
        self.classifier = nn.Linear(head_dim, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward_pre_logits(self, x: Tensor) -> Tensor:
        return self.head_act(self.head_conv(self.pool(x))).flatten(1)

"""RepVGG-A0/A1/B0 (Ding et al., CVPR 2021): the reference for the fusion machinery.

Five stages of RepVGG blocks, widths min(64, 64a), 64a, 128a, 256a, 512b, the first block of each
stage with stride 2, then global average pooling and a linear classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from dscnn._registry import register_family, register_model
from dscnn.blocks.repvgg import RepVGGBlock
from dscnn.config import ArchConfig
from dscnn.models.base import ClassifierModel, resolve_stem_stride


@dataclass(frozen=True)
class RepVGGConfig(ArchConfig):
    family = "repvgg"

    depths: tuple[int, ...] = (1, 2, 4, 14, 1)  # blocks per stage; stage 0 is the stem block
    width_multipliers: tuple[float, float] = (0.75, 2.5)  # (a, b): stages 1-3 scale by a, stage 4 by b
    activation: str = "relu"  # name in dscnn.layers.ACTIVATIONS
    stem_stride: int = 0  # combined stride of stages 0-1: 0 = auto from resolution (4 at 224)

    def stage_widths(self) -> tuple[int, ...]:
        a, b = self.width_multipliers
        return (min(64, int(64 * a)), int(64 * a), int(128 * a), int(256 * a), int(512 * b))


class RepVGG(ClassifierModel):
    def __init__(self, config: RepVGGConfig) -> None:
        super().__init__()
        if len(config.depths) != 5 or min(config.depths) < 1:
            raise ValueError(f"RepVGG needs 5 stage depths >= 1, got {config.depths}")
        self.config = config
        stem_stride = resolve_stem_stride(config.stem_stride, config.resolution)
        first_strides = {4: (2, 2), 2: (1, 2), 1: (1, 1)}[stem_stride] + (2, 2, 2)
        stages: list[nn.Module] = []
        in_ch = 3
        for depth, width, stride in zip(config.depths, config.stage_widths(), first_strides):
            blocks = []
            for i in range(depth):
                blocks.append(RepVGGBlock(in_ch, width, stride=stride if i == 0 else 1, activation=config.activation))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, config.num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(x)

    def forward_pre_logits(self, x: Tensor) -> Tensor:
        return self.pool(x).flatten(1)


register_family(RepVGGConfig, RepVGG)


def _build(defaults: RepVGGConfig, overrides: dict[str, Any]) -> RepVGG:
    return RepVGG(defaults.replace(**overrides))


@register_model
def repvgg_a0(**overrides: Any) -> RepVGG:
    """RepVGG-A0: depths [1,2,4,14,1], a=0.75, b=2.5 (8.31M deploy params, 1.36 GMACs at 224)."""
    return _build(RepVGGConfig(), overrides)


@register_model
def repvgg_a1(**overrides: Any) -> RepVGG:
    """RepVGG-A1: depths [1,2,4,14,1], a=1, b=2.5 (12.79M deploy params, 2.36 GMACs at 224)."""
    return _build(RepVGGConfig(width_multipliers=(1.0, 2.5)), overrides)


@register_model
def repvgg_b0(**overrides: Any) -> RepVGG:
    """RepVGG-B0: depths [1,4,6,16,1], a=1, b=2.5 (14.34M deploy params, 3.06 GMACs at 224)."""
    return _build(RepVGGConfig(depths=(1, 4, 6, 16, 1), width_multipliers=(1.0, 2.5)), overrides)

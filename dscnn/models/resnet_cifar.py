"""CIFAR ResNet-20/56 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, sec. 4.2):
the standard baseline of the pruning papers (ResRep, C-SGD report ResNet-56 on CIFAR-10).

3x3 conv (16) -> three stages of n basic blocks at widths 16/32/64 (depth 6n + 2), the first
block of stages 2 and 3 with stride 2 -> GAP -> linear. Every conv + BN is a `ConvBN`, so the deploy
form is plain convs with bias.

Interpretation: shortcuts that change shape use option B (1x1 conv + BN, stride 2) by default,
because a real layer is what channel pruning's dependency graph can follow; option A (stride-2
subsampling + zero channel padding, parameter-free, the paper's CIFAR choice) is ``shortcut="A"``.
``mid_widths`` lets a pruned model give each block its own inner width. Inputs larger than CIFAR
get a strided stem (``stem_stride``: 2 = stride-2 conv, 4 = that plus a 3x3 stride-2 max pool).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from dscnn._registry import register_family, register_model
from dscnn.config import ArchConfig
from dscnn.layers import ConvBN
from dscnn.models.base import ClassifierModel, resolve_stem_stride


@dataclass(frozen=True)
class ResNetCifarConfig(ArchConfig):
    family = "resnet_cifar"

    num_classes: int = 10  # CIFAR-10
    resolution: int = 32  # CIFAR input size
    depth: int = 20  # 6n + 2 layers: n basic blocks per stage
    widths: tuple[int, ...] = (16, 32, 64)  # stage widths (the stem has widths[0])
    mid_widths: tuple[int, ...] = ()  # inner width of each of the 3n blocks; () = its stage width
    shortcut: str = "B"  # "B": 1x1 conv-BN where the shape changes; "A": subsample + zero-pad
    stem_stride: int = 0  # 0 = auto from resolution (1 at 32)

    def blocks_per_stage(self) -> int:
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"ResNet-CIFAR depth must be 6n + 2 with n >= 1, got {self.depth}")
        return (self.depth - 2) // 6


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU -> 3x3 conv-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = ConvBN(in_channels, mid_channels, 3, stride=stride)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = ConvBN(mid_channels, out_channels, 3)
        self.act2 = nn.ReLU(inplace=True)
        reshape = stride != 1 or in_channels != out_channels
        self.downsample = ConvBN(in_channels, out_channels, 1, stride=stride) if reshape and shortcut == "B" else None
        self.pad_shortcut = reshape and shortcut == "A"
        if self.pad_shortcut and out_channels < in_channels:
            raise ValueError(f"option-A shortcut cannot narrow {in_channels} to {out_channels} channels")
        self.stride, self.extra_channels = stride, out_channels - in_channels

    def shortcut(self, x: Tensor) -> Tensor:
        if self.downsample is not None:
            return self.downsample(x)
        if self.pad_shortcut:
            x = x[:, :, :: self.stride, :: self.stride]
            front = self.extra_channels // 2
            return F.pad(x, (0, 0, 0, 0, front, self.extra_channels - front))
        return x

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.act1(self.conv1(x)))
        return self.act2(y + self.shortcut(x))


class ResNetCifar(ClassifierModel):
    def __init__(self, config: ResNetCifarConfig) -> None:
        super().__init__()
        n = config.blocks_per_stage()
        if len(config.widths) != 3 or min(config.widths) < 1:
            raise ValueError(f"ResNet-CIFAR needs 3 stage widths >= 1, got {config.widths}")
        mids = config.mid_widths or tuple(w for w in config.widths for _ in range(n))
        if len(mids) != 3 * n or min(mids) < 1:
            raise ValueError(f"mid_widths needs {3 * n} widths >= 1 (one per block), got {config.mid_widths}")
        if config.shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {config.shortcut!r}")
        self.config = config
        self.stem = self._stem(config.widths[0], resolve_stem_stride(config.stem_stride, config.resolution))
        stages: list[nn.Module] = []
        in_ch = config.widths[0]
        for s, width in enumerate(config.widths):
            blocks = []
            for i in range(n):
                stride = 2 if s > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_ch, mids[s * n + i], width, stride, config.shortcut))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, config.num_classes)

    @staticmethod
    def _stem(width: int, stem_stride: int) -> nn.Sequential:
        layers: list[nn.Module] = [ConvBN(3, width, 3, stride=min(stem_stride, 2)), nn.ReLU(inplace=True)]
        if stem_stride == 4:
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward_pre_logits(self, x: Tensor) -> Tensor:
        return self.pool(x).flatten(1)


register_family(ResNetCifarConfig, ResNetCifar)


def _build(defaults: ResNetCifarConfig, overrides: dict[str, Any]) -> ResNetCifar:
    return ResNetCifar(defaults.replace(**overrides))


@register_model
def resnet20(**overrides: Any) -> ResNetCifar:
    """ResNet-20 for CIFAR (He et al., CVPR 2016): n=3, widths 16/32/64 (0.27M params with option A)."""
    return _build(ResNetCifarConfig(depth=20), overrides)


@register_model
def resnet56(**overrides: Any) -> ResNetCifar:
    """ResNet-56 for CIFAR (He et al., CVPR 2016): n=9, widths 16/32/64 (0.85M params with option A)."""
    return _build(ResNetCifarConfig(depth=56), overrides)

"""FalconNet (Cai et al., "FalconNet: Factorization for the Light-weight ConvNets", 2023), docs/design.md section 3.

LightNet macro layout: a stem to h/4, four stages of MetaLightBlocks (RepSO spatial operator,
RefCO channel operators), 2x2 stride-2 group-wise merge convs between stages, then a 1x1 head
conv, global pooling and a linear classifier.

interpretation: the paper's tables were not retrievable; counts reported for these models are ours,
not the paper's. RefCO follows the paper's SF-Conv text (`dscnn.blocks.refco`): every expanding
C -> λC and projecting λC -> C 1x1 of a MetaLightBlock is a RefCO with window K = the valid K
nearest sqrt(R * C_out) (`refco_kernel`). At the default widths (32, 64, 128, 256), λ=2, R=2 that is
K = 8, 16, 16, 32 for the expanding and 8, 8, 16, 16 for the projecting RefCOs (sqrt(128) and
sqrt(512) tie between two powers of two; the smaller is taken). Further choices:
- Stem ``3x3 conv s2 -> [3x3 DW -> 1x1 PW] + identity -> 3x3 DW s2``, all ``widths[0]`` wide; an
  activation follows the first conv, the inner DW and the last DW, none after the residual add.
  Stem stride 2 keeps the first conv's stride, stride 1 drops both.
- Merge conv groups = input channels when the next width is a multiple of it (the paper's
  doubling), otherwise gcd(in, out) so any searched width pair still builds.
- Head: 1x1 conv-BN -> act -> GAP -> FC.
- Where SCConv replaces RepSO, its SRU uses gcd(scconv_gn_groups, channels) GroupNorm groups.
- ``channel_op="dense"`` is the paper's baseline for RefCO: a plain 1x1 conv-BN with the same in/out
  widths wherever RefCO would be (the RefCO fields are then unused). Like ``pruned_layers``, the
  default ``"refco"`` is kept out of `to_dict`, so the hashes of existing configs do not change.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from dscnn._registry import register_family, register_model
from dscnn.blocks.metalight import ChannelFactory, MetaLightBlock, SpatialFactory, pointwise_conv_bn
from dscnn.blocks.refco import RefCO, refco_kernel
from dscnn.blocks.repaso import RepSO
from dscnn.blocks.scconv import scconv_for_width
from dscnn.config import ArchConfig
from dscnn.layers import ConvBN, make_activation
from dscnn.models.base import ClassifierModel, resolve_stem_stride

SPATIAL_OPS = ("repso", "scconv")
CHANNEL_OPS = ("refco", "dense")


@dataclass(frozen=True)
class FalconNetConfig(ArchConfig):
    family = "falconnet"

    widths: tuple[int, ...] = (32, 64, 128, 256)  # channels per stage; the stem outputs widths[0]
    depths: tuple[int, ...] = (3, 3, 9, 3)  # MetaLightBlocks per stage
    expansion: float = 2.0  # λ: MetaLightBlock hidden width = round(λ * stage width)
    refco_reduction: int = 2  # R: a RefCO C_in -> C_out has C_in / R hidden channels
    refco_kernel: int = 0  # K: RefCO window; 0 = nearest valid sqrt(R * C_out), else the valid K nearest this
    refco_branches: int = 2  # parallel grouped-1x1 conv-BN branches per RefCO stage (train form only)
    n_3x3: int = 3  # RepSO's parallel 3x3 depthwise copies
    activation: str = "relu"  # name in dscnn.layers.ACTIVATIONS
    head_dim: int = 1280  # channels of the 1x1 head conv before pooling
    stem_stride: int = 0  # 0 = auto from resolution (4 at 224, 2 at 64, 1 at 32)
    spatial_ops: tuple[str, ...] = ("repso",) * 4  # per stage: "repso" or "scconv"
    scconv_alpha: float = 0.5  # SCConv CRU split α where a stage uses "scconv"
    scconv_gn_groups: int = 16  # SCConv SRU GroupNorm groups (reduced to gcd with the channels)
    channel_op: str = "refco"  # MetaLightBlock 1x1s: "refco" (SF-Conv pair) or "dense" (plain 1x1 conv-BN baseline)

    def __post_init__(self) -> None:
        if self.channel_op not in CHANNEL_OPS:
            raise ValueError(f"FalconNet: unknown channel op {self.channel_op!r}; valid: {', '.join(CHANNEL_OPS)}")

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if self.channel_op == "refco":
            del data["channel_op"]
        return data


class FalconStem(nn.Module):
    """3x3 conv -> [3x3 DW -> 1x1 PW] + identity -> 3x3 DW; strides (2, 2), (2, 1) or (1, 1)."""

    def __init__(self, channels: int, stride: int, activation: str) -> None:
        super().__init__()
        first, last = {4: (2, 2), 2: (2, 1), 1: (1, 1)}[stride]
        self.conv = ConvBN(3, channels, 3, stride=first)
        self.act1 = make_activation(activation)
        self.dw = ConvBN(channels, channels, 3, groups=channels)
        self.act2 = make_activation(activation)
        self.pw = ConvBN(channels, channels, 1)
        self.down = ConvBN(channels, channels, 3, stride=last, groups=channels)
        self.act3 = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.conv(x))
        x = x + self.pw(self.act2(self.dw(x)))
        return self.act3(self.down(x))


class FalconNet(ClassifierModel):
    def __init__(self, config: FalconNetConfig) -> None:
        super().__init__()
        _validate(config)
        self.config = config
        stride = resolve_stem_stride(config.stem_stride, config.resolution)
        self.stem = FalconStem(config.widths[0], stride, config.activation)
        stages: list[nn.Module] = []
        for i, (width, depth, op) in enumerate(zip(config.widths, config.depths, config.spatial_ops)):
            layers: list[nn.Module] = []
            if i > 0:
                prev = config.widths[i - 1]
                layers.append(ConvBN(prev, width, 2, stride=2, groups=math.gcd(prev, width), padding=0))
            layers += [
                MetaLightBlock(
                    width, _spatial_factory(config, op), expansion=config.expansion,
                    channel_op=_channel_factory(config), activation=config.activation,
                )
                for _ in range(depth)
            ]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = ConvBN(config.widths[-1], config.head_dim, 1)
        self.head_act = make_activation(config.activation)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(config.head_dim, config.num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward_pre_logits(self, x: Tensor) -> Tensor:
        return self.pool(self.head_act(self.head(x))).flatten(1)


def _validate(config: FalconNetConfig) -> None:
    n = len(config.widths)
    if n == 0 or len(config.depths) != n or len(config.spatial_ops) != n:
        raise ValueError(
            f"FalconNet: widths {config.widths}, depths {config.depths} and spatial_ops {config.spatial_ops} "
            "must be non-empty and of equal length"
        )
    if min(config.depths) < 1 or min(config.widths) < 1:
        raise ValueError(f"FalconNet: depths {config.depths} and widths {config.widths} must be >= 1")
    bad = [op for op in config.spatial_ops if op not in SPATIAL_OPS]
    if bad:
        raise ValueError(f"FalconNet: unknown spatial op(s) {bad}; valid: {', '.join(SPATIAL_OPS)}")


def _channel_factory(config: FalconNetConfig) -> ChannelFactory:
    if config.channel_op == "dense":
        return pointwise_conv_bn

    def build(in_channels: int, out_channels: int) -> nn.Module:
        r = config.refco_reduction
        kernel = refco_kernel(in_channels, out_channels, r, config.refco_kernel)
        return RefCO(in_channels, out_channels, reduction=r, kernel=kernel, branches=config.refco_branches)

    return build


def _spatial_factory(config: FalconNetConfig, op: str) -> SpatialFactory:
    if op == "repso":
        return lambda channels: RepSO(channels, config.n_3x3)
    return functools.partial(scconv_for_width, alpha=config.scconv_alpha, gn_groups=config.scconv_gn_groups)


register_family(FalconNetConfig, FalconNet)


def _build(defaults: FalconNetConfig, overrides: dict[str, Any]) -> FalconNet:
    return FalconNet(defaults.replace(**overrides))


@register_model
def falconnet(**overrides: Any) -> FalconNet:
    """FalconNet (Cai et al. 2023) with λ=2, R=2, RepSO + RefCO (the paper's SF-Conv pair, docs/design.md 2.2)."""
    return _build(FalconNetConfig(), overrides)


@register_model
def falconnet_l1_r2(**overrides: Any) -> FalconNet:
    """FalconNet (Cai et al. 2023), lighter variant: λ=1, R=2."""
    return _build(FalconNetConfig(expansion=1.0), overrides)


@register_model
def falconnet_l2_r4(**overrides: Any) -> FalconNet:
    """FalconNet (Cai et al. 2023), sparser RefCO: λ=2, R=4."""
    return _build(FalconNetConfig(refco_reduction=4), overrides)

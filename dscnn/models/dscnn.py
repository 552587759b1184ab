"""DSCNN_T0/T1/T2/S: FasterNet's macro layout with re-parameterized blocks (DSCNN, Table 1).

The DSCNN paper is available to us only as an abstract and tables; the layout follows docs/design.md section 3:
FasterNet's skeleton (Chen et al., CVPR 2023): stem to h/4, four stages of widths c, 2c, 4c, 8c,
2x2 stride-2 merge convs + BN between stages, head GAP -> 1x1 conv to 1280 -> act -> FC.
Stem: a kernel = stride conv + BN, then RepMiX (r=3) and a ConvFFN. Blocks: MetaLightBlock with
λ=2 and a RepASO spatial operator (branch set J), or SCConv where the search puts it.

interpretation:
- The stem's ConvFFN has a residual (``x + ffn(x)``), as in FastViT's RepMixer block, and no layer
  scale; the stem conv has no activation (FasterNet's embedding is conv + BN).
- Activation: ReLU everywhere (blocks, merges, head). The DSCNN table lists ReLU after the
  merges, and MetaLightBlock (FalconNet) uses ReLU; FasterNet's GELU for T0/T1 is one override away.
- ffn_expansion = 3 (FastViT's ConvFFN ratio). The stem sits at h/4, so it moves MACs, hardly
  params; 3 fits T1/T2/S best (2 would put T0 at +6.5% MACs but T1 at -5.3%). The head conv is
  bias-free, as in FasterNet.

Measured at 224, 1000 classes (train params / deploy params / deploy fvcore MACs, vs the paper):
T0 3.888M (+5.1%) / 3.720M (+0.6%) / 350.7M (+9.6%); T1 7.348M (-0.4%) / 7.080M (-4.1%) / 868.7M
(-2.4%); T2 14.172M (-0.1%) / 13.770M (-3.0%) / 1919.0M (+1.0%); S 29.027M (-0.2%) / 28.289M (-2.8%)
/ 4416.9M (+0.8%). Train-form params match T1/T2/S within 0.4%, so the paper likely quotes
train-form counts; T0 is the outlier (its MACs sit near the 10% edge) and we found no faithful
change that fixes T0 without breaking the other three.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from dscnn._registry import register_family, register_model
from dscnn.blocks.ffn import ConvFFN
from dscnn.blocks.metalight import MetaLightBlock, SpatialFactory
from dscnn.blocks.repaso import RepASO, parse_branch_set
from dscnn.blocks.repmix import RepMiX
from dscnn.blocks.scconv import scconv_for_width
from dscnn.config import ArchConfig
from dscnn.layers import ConvBN, make_activation
from dscnn.models.base import PooledConvHeadModel, resolve_stem_stride

SPATIAL_OPS = ("repaso", "scconv")


@dataclass(frozen=True)
class DSCNNConfig(ArchConfig):
    family = "dscnn"

    widths: tuple[int, ...] = (40, 80, 160, 320)  # channels of each stage
    depths: tuple[int, ...] = (1, 2, 8, 2)  # MetaLightBlocks per stage
    branch_set: str = "J"  # RepASO branch set: row letter A..J or notation "3x3*3,1x3,3x1,1x1,id"
    expansion: float = 2.0  # MetaLightBlock hidden width λ (times the stage width)
    repmix_r: int = 3  # RepMiX kernel groups (kernels 3..2r+1), 1..4
    ffn_expansion: float = 3.0  # stem ConvFFN hidden width (times widths[0])
    activation: str = "relu"  # blocks, stem FFN and head; name in dscnn.layers.ACTIVATIONS
    merge_activation: str = "relu"  # after each merge conv-BN; "identity" = FasterNet's plain merge
    head_dim: int = 1280  # channels of the 1x1 conv between pooling and the classifier
    stem_stride: int = 0  # 0 = auto from resolution (4 at 224, 2 at 64, 1 at 32)
    spatial_ops: tuple[str, ...] = ("repaso", "repaso", "repaso", "repaso")  # per stage: repaso | scconv
    scconv_alpha: float = 0.5  # SCConv split ratio α where a stage uses "scconv"

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        n = len(self.widths)
        if n == 0 or len(self.depths) != n or len(self.spatial_ops) != n:
            raise ValueError(
                f"DSCNNConfig: widths ({len(self.widths)}), depths ({len(self.depths)}) and spatial_ops "
                f"({len(self.spatial_ops)}) must have the same non-zero length"
            )
        for name in ("widths", "depths"):
            if min(getattr(self, name)) < 1:
                raise ValueError(f"DSCNNConfig: {name} must all be >= 1, got {getattr(self, name)}")
        for name in ("expansion", "ffn_expansion", "head_dim", "num_classes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"DSCNNConfig: {name} must be > 0, got {getattr(self, name)}")
        bad = [op for op in self.spatial_ops if op not in SPATIAL_OPS]
        if bad:
            raise ValueError(f"DSCNNConfig: unknown spatial_ops {bad}; valid: {', '.join(SPATIAL_OPS)}")
        if not 0 < self.scconv_alpha < 1:
            raise ValueError(f"DSCNNConfig: scconv_alpha must be in (0, 1), got {self.scconv_alpha}")
        parse_branch_set(self.branch_set)  # raises on a bad set


def spatial_factory(op: str, config: DSCNNConfig) -> SpatialFactory:
    """The spatial operator ``op`` of a MetaLightBlock, built on its hidden channels."""
    if op == "repaso":
        return functools.partial(RepASO, branch_set=config.branch_set)
    if op == "scconv":
        return functools.partial(scconv_for_width, alpha=config.scconv_alpha)
    raise ValueError(f"unknown spatial op {op!r}; valid: {', '.join(SPATIAL_OPS)}")


class Residual(nn.Module):
    """``x + fn(x)``."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fn(x)


def _stem(config: DSCNNConfig) -> nn.Sequential:
    stride = resolve_stem_stride(config.stem_stride, config.resolution)
    width = config.widths[0]
    # kernel = stride (non-overlapping patches) as in FasterNet; at stride 1 a 3x3 instead of a 1x1
    embed = ConvBN(3, width, 4, stride=4, padding=0) if stride == 4 else (
        ConvBN(3, width, 2, stride=2, padding=0) if stride == 2 else ConvBN(3, width, 3)
    )
    ffn = ConvFFN(width, config.ffn_expansion, config.activation)
    return nn.Sequential(embed, RepMiX(width, config.repmix_r), Residual(ffn))


def _stage(config: DSCNNConfig, i: int) -> nn.Sequential:
    width = config.widths[i]
    layers: list[nn.Module] = []
    if i > 0:
        layers.append(ConvBN(config.widths[i - 1], width, 2, stride=2, padding=0))
        layers.append(make_activation(config.merge_activation))
    spatial = spatial_factory(config.spatial_ops[i], config)
    layers.extend(
        MetaLightBlock(width, spatial, expansion=config.expansion, activation=config.activation)
        for _ in range(config.depths[i])
    )
    return nn.Sequential(*layers)


class DSCNN(PooledConvHeadModel):
    def __init__(self, config: DSCNNConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.stem = _stem(config)
        self.stages = nn.Sequential(*(_stage(config, i) for i in range(len(config.widths))))
        self._build_head(config.widths[-1], config.head_dim, config.num_classes, config.activation)


register_family(DSCNNConfig, DSCNN)


def _build(base_width: int, depths: tuple[int, ...], overrides: dict[str, Any]) -> DSCNN:
    widths = tuple(base_width * 2**i for i in range(4))
    return DSCNN(DSCNNConfig(widths=widths, depths=depths).replace(**overrides))


@register_model
def dscnn_t0(**overrides: Any) -> DSCNN:
    """DSCNN_T0 (DSCNN Table 1): c=40, depths [1,2,8,2]; paper 3.7M params, 0.32 GFLOPs at 224."""
    return _build(40, (1, 2, 8, 2), overrides)


@register_model
def dscnn_t1(**overrides: Any) -> DSCNN:
    """DSCNN_T1 (DSCNN Table 1): c=64, depths [1,2,8,2]; paper 7.38M params, 0.89 GFLOPs at 224."""
    return _build(64, (1, 2, 8, 2), overrides)


@register_model
def dscnn_t2(**overrides: Any) -> DSCNN:
    """DSCNN_T2 (DSCNN Table 1): c=96, depths [1,2,8,2]; paper 14.19M params, 1.90 GFLOPs at 224."""
    return _build(96, (1, 2, 8, 2), overrides)


@register_model
def dscnn_s(**overrides: Any) -> DSCNN:
    """DSCNN_S (DSCNN Table 1): c=128, depths [1,2,13,2]; paper 29.1M params, 4.38 GFLOPs at 224."""
    return _build(128, (1, 2, 13, 2), overrides)

"""DSCNN_T0/T1/T2/S: FasterNet's macro layout with re-parameterized blocks (DSCNN, Table 1).

The DSCNN paper is available to us only as an abstract and tables; the layout follows docs/design.md section 3:
FasterNet's skeleton (Chen et al., CVPR 2023): stem to h/4, four stages of widths c, 2c, 4c, 8c,
2x2 stride-2 merge convs + BN between stages, head GAP -> 1x1 conv to 1280 -> act -> FC.
Stem (Table 1): a 3x3 conv to c channels + BN, then RepMiX (r=3) and a ConvFFN at h/4. Blocks:
MetaLightBlock with λ=2 and a RepASO spatial operator (branch set J), or SCConv where the search
puts it.

interpretation:
- Stem conv: Table 1 gives one "3x3, 40" conv and the RepMixer at h/4, so the 3x3 conv itself has
  stride 4 (padding 1). Its windows skip one row and one column in four (a 3x3 kernel at stride 4);
  FastViT's stem (3x3 stride 2, then a 3x3 DW stride 2) sees every pixel but is not in the table and
  costs 11.3M MACs more, which would put T0 at 0.359G, 12% past Table 1's 0.32 GFLOPs.
  ``stem_kernel = 0`` is the previous stem, FasterNet's 4x4 stride-4 patch conv (T0: +840 params,
  +2.6M MACs). Lighter-stride stems for small inputs keep the 3x3 at stride 2 or 1.
- RepMiX placement: the stem only (``repmix_placement="stem"``). Table 6's r-sweep (+60k params per
  step of r) is matched far better by a RepMiX after every block's spatial operator ("hidden"), but
  that reading costs T0 0.40 GMACs against Table 1's 0.32G; see `dscnn.blocks.repmix` and
  `dscnn.repmix_sweep`. "blocks" (a RepMiX before every MetaLightBlock) is the third reading.
- The stem's ConvFFN has a residual (``x + ffn(x)``), as in FastViT's RepMixer block, and no layer
  scale; the stem conv has no activation (FasterNet's embedding is conv + BN).
- Activation: ReLU everywhere (blocks, merges, head). The DSCNN table lists ReLU after the
  merges, and MetaLightBlock (FalconNet) uses ReLU; FasterNet's GELU for T0/T1 is one override away.
- ffn_expansion = 3 (FastViT's ConvFFN ratio). The stem sits at h/4, so it moves MACs, hardly
  params; 3 fits T1/T2/S best (2 would put T0 at +6.5% MACs but T1 at -5.3%). The head conv is
  bias-free, as in FasterNet.

Measured at 224, 1000 classes (train params / deploy params / deploy fvcore MACs, vs the paper):
T0 3.887M (+5.1%) / 3.720M (+0.5%) / 348.1M (+8.8%); T1 7.346M (-0.5%) / 7.078M (-4.1%) / 864.5M
(-2.9%); T2 14.170M (-0.1%) / 13.768M (-3.0%) / 1912.7M (+0.7%); S 29.025M (-0.3%) / 28.286M (-2.8%)
/ 4408.5M (+0.6%). Train-form params match T1/T2/S within 0.5%, so the paper likely quotes
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
from dscnn.blocks.repmix import MIX_LAYOUTS, RepMiX
from dscnn.blocks.scconv import scconv_for_width
from dscnn.config import ArchConfig
from dscnn.layers import ConvBN, make_activation
from dscnn.models.base import PooledConvHeadModel, resolve_stem_stride

SPATIAL_OPS = ("repaso", "scconv")
#: Readings of where DSCNN uses RepMiX (see the module docstring): the stem only; the stem and a
#: RepMiX token mixer before every MetaLightBlock (FastViT's RepMixer-then-FFN block); the stem and
#: a RepMiX after the spatial operator on every block's hidden channels.
REPMIX_PLACEMENTS = ("stem", "blocks", "hidden")


@dataclass(frozen=True)
class DSCNNConfig(ArchConfig):
    family = "dscnn"

    widths: tuple[int, ...] = (40, 80, 160, 320)  # channels of each stage
    depths: tuple[int, ...] = (1, 2, 8, 2)  # MetaLightBlocks per stage
    branch_set: str = "J"  # RepASO branch set: row letter A..J or notation "3x3*3,1x3,3x1,1x1,id"
    expansion: float = 2.0  # MetaLightBlock hidden width λ (times the stage width)
    repmix_r: int = 3  # RepMiX kernel groups (kernels 3..2r+1), 1..4
    repmix_layout: str = "split"  # r -> kernels: "split" channel groups (MixConv) | "parallel" full-width branches
    repmix_placement: str = "stem"  # where RepMiX sits: "stem" | "blocks" (+ before every block) | "hidden"
    stem_kernel: int = 3  # stem conv kernel (Table 1's 3x3); 0 = kernel = stride (FasterNet's patch conv)
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
        if self.repmix_placement not in REPMIX_PLACEMENTS:
            raise ValueError(
                f"DSCNNConfig: unknown repmix_placement {self.repmix_placement!r}; valid: {', '.join(REPMIX_PLACEMENTS)}"
            )
        if self.repmix_layout not in MIX_LAYOUTS:
            raise ValueError(f"DSCNNConfig: unknown repmix_layout {self.repmix_layout!r}; valid: {', '.join(MIX_LAYOUTS)}")
        if self.stem_kernel < 0:
            raise ValueError(f"DSCNNConfig: stem_kernel must be >= 0 (0 = kernel equal to the stride), got {self.stem_kernel}")


def spatial_factory(op: str, config: DSCNNConfig) -> SpatialFactory:
    """The spatial operator ``op`` of a MetaLightBlock, built on its hidden channels (then a RepMiX
    when ``repmix_placement == "hidden"``)."""
    if op == "repaso":
        base: SpatialFactory = functools.partial(RepASO, branch_set=config.branch_set)
    elif op == "scconv":
        base = functools.partial(scconv_for_width, alpha=config.scconv_alpha)
    else:
        raise ValueError(f"unknown spatial op {op!r}; valid: {', '.join(SPATIAL_OPS)}")
    if config.repmix_placement != "hidden":
        return base
    return lambda channels: nn.Sequential(base(channels), _repmix(config, channels))


def _repmix(config: DSCNNConfig, channels: int) -> RepMiX:
    return RepMiX(channels, config.repmix_r, layout=config.repmix_layout)


class Residual(nn.Module):
    """``x + fn(x)``."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fn(x)


def stem_conv(config: DSCNNConfig) -> ConvBN:
    """The stem's first conv + BN: ``stem_kernel`` x ``stem_kernel`` at the stem stride, padding k//2.

    ``stem_kernel = 0`` is FasterNet's patch embedding (kernel = stride, no padding; a 3x3 at stride 1).
    """
    stride = resolve_stem_stride(config.stem_stride, config.resolution)
    if config.stem_kernel == 0 and stride > 1:
        return ConvBN(3, config.widths[0], stride, stride=stride, padding=0)
    kernel = config.stem_kernel or 3
    return ConvBN(3, config.widths[0], kernel, stride=stride, padding=kernel // 2)


def _stem(config: DSCNNConfig) -> nn.Sequential:
    width = config.widths[0]
    ffn = ConvFFN(width, config.ffn_expansion, config.activation)
    return nn.Sequential(stem_conv(config), _repmix(config, width), Residual(ffn))


def _stage(config: DSCNNConfig, i: int) -> nn.Sequential:
    width = config.widths[i]
    layers: list[nn.Module] = []
    if i > 0:
        layers.append(ConvBN(config.widths[i - 1], width, 2, stride=2, padding=0))
        layers.append(make_activation(config.merge_activation))
    spatial = spatial_factory(config.spatial_ops[i], config)
    for _ in range(config.depths[i]):
        if config.repmix_placement == "blocks":
            layers.append(_repmix(config, width))
        layers.append(MetaLightBlock(width, spatial, expansion=config.expansion, activation=config.activation))
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

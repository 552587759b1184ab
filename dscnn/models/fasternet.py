"""FasterNet-T0/T1/T2 (Chen et al., "Run, Don't Walk: Chasing Higher FLOPS for Faster Neural
Networks", CVPR 2023): the macro skeleton DSCNN reuses, kept here as a baseline and sanity anchor.

Embedding 4x4 stride-4 conv + BN -> four stages of FasterNet blocks (widths c, 2c, 4c, 8c, depths
[1, 2, 8, 2]) with 2x2 stride-2 conv + BN merges between them -> GAP -> 1x1 conv to 1280 -> act ->
linear. Block: PConv -> 1x1 c -> 2c -> BN -> act -> 1x1 2c -> c, plus the identity.

As in the official code every conv is bias-free (the BN that follows supplies the shift), which is
what gives the published counts exactly: T0 3,905,500 train-form params, 335,422,720 conv+FC MACs
at 224. Only the BNs fold on `reparameterize`; PConv and the plain 1x1s are already deploy form.
Interpretation: for small inputs (stem_stride 2 or 1) the embedding is a stride-2 2x2 conv or a
3x3 stride-1 conv, so 32x32 inputs keep a 4x4 map in the last stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from dscnn._registry import register_family, register_model
from dscnn.blocks.pconv import PConv
from dscnn.config import ArchConfig
from dscnn.layers import ConvBN, make_activation
from dscnn.models.base import PooledConvHeadModel, resolve_stem_stride


@dataclass(frozen=True)
class FasterNetConfig(ArchConfig):
    family = "fasternet"

    embed_dim: int = 40  # width c of stage 1; stages are c, 2c, 4c, 8c
    depths: tuple[int, ...] = (1, 2, 8, 2)  # FasterNet blocks per stage
    mlp_ratio: float = 2.0  # hidden width of the block's 1x1 pair, as a multiple of c
    n_div: int = 4  # PConv convolves channels // n_div of them, passes the rest through
    activation: str = "gelu"  # name in dscnn.layers.ACTIVATIONS (block and head)
    head_dim: int = 1280  # width of the 1x1 conv after global pooling
    stem_stride: int = 0  # embedding stride: 0 = auto from resolution (4 at 224, 1 at 32)


class FasterNetBlock(nn.Module):
    """PConv -> 1x1 (BN, act) expand -> 1x1 project, plus the identity."""

    def __init__(self, channels: int, mlp_ratio: float, n_div: int, activation: str) -> None:
        super().__init__()
        hidden = int(channels * mlp_ratio)
        if hidden < 1:
            raise ValueError(f"FasterNetBlock: mlp_ratio {mlp_ratio} leaves no hidden channels for {channels}")
        self.spatial = PConv(channels, n_div)
        self.expand = ConvBN(channels, hidden, 1)
        self.act = make_activation(activation)
        self.project = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.project(self.act(self.expand(self.spatial(x))))


def embedding(out_channels: int, stem_stride: int) -> ConvBN:
    """Non-overlapping ``s x s`` stride-``s`` patch conv + BN; a 3x3 stride-1 conv when ``s == 1``."""
    if stem_stride == 1:
        return ConvBN(3, out_channels, 3)
    return ConvBN(3, out_channels, stem_stride, stride=stem_stride, padding=0)


class FasterNet(PooledConvHeadModel):
    def __init__(self, config: FasterNetConfig) -> None:
        super().__init__()
        if len(config.depths) != 4 or min(config.depths) < 1:
            raise ValueError(f"FasterNet needs 4 stage depths >= 1, got {config.depths}")
        if config.embed_dim < 1 or config.head_dim < 1:
            raise ValueError(
                f"FasterNet: embed_dim and head_dim must be >= 1, got {config.embed_dim}/{config.head_dim}"
            )
        self.config = config
        c = config.embed_dim
        self.stem = embedding(c, resolve_stem_stride(config.stem_stride, config.resolution))
        stages: list[nn.Module] = []
        for i, depth in enumerate(config.depths):
            width = c * 2**i
            layers: list[nn.Module] = [ConvBN(width // 2, width, 2, stride=2, padding=0)] if i else []
            layers += [FasterNetBlock(width, config.mlp_ratio, config.n_div, config.activation) for _ in range(depth)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self._build_head(c * 2 ** (len(config.depths) - 1), config.head_dim, config.num_classes, config.activation)


register_family(FasterNetConfig, FasterNet)


def _build(defaults: FasterNetConfig, overrides: dict[str, Any]) -> FasterNet:
    return FasterNet(defaults.replace(**overrides))


@register_model
def fasternet_t0(**overrides: Any) -> FasterNet:
    """FasterNet-T0 (Chen et al., CVPR 2023): c=40, GELU (3.91M params, 0.34 GMACs at 224)."""
    return _build(FasterNetConfig(), overrides)


@register_model
def fasternet_t1(**overrides: Any) -> FasterNet:
    """FasterNet-T1 (Chen et al., CVPR 2023): c=64, GELU (7.60M params, 0.85 GMACs at 224)."""
    return _build(FasterNetConfig(embed_dim=64), overrides)


@register_model
def fasternet_t2(**overrides: Any) -> FasterNet:
    """FasterNet-T2 (Chen et al., CVPR 2023): c=96, ReLU (14.98M params, 1.90 GMACs at 224)."""
    return _build(FasterNetConfig(embed_dim=96, activation="relu"), overrides)

"""RepVGG block (Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", CVPR 2021).

Train: 3x3 conv-BN + 1x1 conv-BN + BN identity (when in == out and stride == 1), summed, then act.
Deploy: one 3x3 conv with bias, then act.
"""

from __future__ import annotations

from torch import Tensor, nn

from dscnn.blocks.branch_conv import BranchConv
from dscnn.layers import make_activation


class RepVGGBlock(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int = 1, groups: int = 1, activation: str = "relu"
    ) -> None:
        super().__init__()
        self.conv = BranchConv(
            in_channels, out_channels, [(3, 3), (1, 1)], stride=stride, groups=groups,
            identity=in_channels == out_channels and stride == 1,
        )
        self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))

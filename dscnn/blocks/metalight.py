"""MetaLightBlock: the inverted-bottleneck block of DSCNN and FalconNet with pluggable operators.

1x1 channel operator C -> λC (BN, act) -> spatial operator on λC (act after its sum) ->
1x1 channel operator λC -> C (BN) -> + identity. The channel operator is a 1x1 conv-BN in DSCNN
and RefCO in FalconNet; the spatial operator is RepASO / RepSO, or SCConv where the search puts it.
Every part is re-parameterizable or already plain, so the block itself needs no fusion code.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from dscnn.layers import ConvBN, make_activation

#: Builds a spatial operator on the given number of channels (stride 1, channels preserved).
SpatialFactory = Callable[[int], nn.Module]
#: Builds a channel operator mapping (in_channels, out_channels) with its BN.
ChannelFactory = Callable[[int, int], nn.Module]


def pointwise_conv_bn(in_channels: int, out_channels: int) -> nn.Module:
    return ConvBN(in_channels, out_channels, 1)


class MetaLightBlock(nn.Module):
    def __init__(
        self,
        channels: int,
        spatial: SpatialFactory,
        *,
        expansion: float = 2.0,
        channel_op: ChannelFactory = pointwise_conv_bn,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        hidden = int(round(channels * expansion))
        if hidden < 1:
            raise ValueError(f"MetaLightBlock: expansion {expansion} leaves no hidden channels for {channels}")
        self.expand = channel_op(channels, hidden)
        self.act1 = make_activation(activation)
        self.spatial = spatial(hidden)
        self.act2 = make_activation(activation)
        self.project = channel_op(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act1(self.expand(x))
        y = self.act2(self.spatial(y))
        return x + self.project(y)

"""ConvFFN: the convolutional feed-forward network of FastViT (Vasu et al., ICCV 2023), used in DSCNN's stem.

DW 7x7 conv-BN -> 1x1 C->eC -> act -> 1x1 eC->C. The DW conv-BN is a `ConvBN`, so the deploy form
is a biased DW conv and the two (biased) 1x1 convs. The residual around it belongs to the caller,
as in FastViT's block.
"""

from __future__ import annotations

from torch import Tensor, nn

from dscnn.layers import ConvBN, make_activation


class ConvFFN(nn.Module):
    """Convolutional FFN on ``channels`` with hidden width ``round(expansion * channels)``."""

    def __init__(self, channels: int, expansion: float = 3.0, activation: str = "gelu", kernel_size: int = 7) -> None:
        super().__init__()
        hidden = int(round(channels * expansion))
        if channels < 1 or hidden < 1:
            raise ValueError(f"ConvFFN: channels={channels}, expansion={expansion} give no hidden channels")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ConvFFN: kernel_size must be odd (centred 'same' padding), got {kernel_size}")
        self.dw = ConvBN(channels, channels, kernel_size, groups=channels)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = make_activation(activation)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.dw(x))))

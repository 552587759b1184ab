"""Partial convolution (Chen et al., "Run, Don't Walk: Chasing Higher FLOPS for Faster Neural
Networks", CVPR 2023 -- FasterNet).

A 3x3 conv on the first ``channels // n_div`` channels; the remaining channels pass through
untouched. It has no BN of its own (FasterNet's block puts the BN after the following 1x1), so it
is already plain: nothing to re-parameterize.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PConv(nn.Module):
    """Partial 3x3 conv on ``channels // n_div`` channels, bias-free as in the paper."""

    def __init__(self, channels: int, n_div: int = 4, kernel_size: int = 3) -> None:
        super().__init__()
        if n_div < 1 or channels // n_div < 1:
            raise ValueError(f"PConv: n_div={n_div} leaves no channels to convolve out of {channels}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"PConv: kernel_size must be odd, got {kernel_size}")
        self.conv_channels = channels // n_div
        self.pass_channels = channels - self.conv_channels
        self.conv = nn.Conv2d(
            self.conv_channels, self.conv_channels, kernel_size, padding=kernel_size // 2, bias=False
        )

    def forward(self, x: Tensor) -> Tensor:
        # split + cat (not in-place slicing) so that autograd and fvcore's tracer both see a pure op.
        head, rest = torch.split(x, [self.conv_channels, self.pass_channels], dim=1)
        return torch.cat((self.conv(head), rest), dim=1)

"""Asymmetric Convolution Block (Ding et al., "ACNet", ICCV 2019).

Train: kxk conv-BN + 1xk conv-BN + kx1 conv-BN, summed. Deploy: one kxk conv with bias; the
asymmetric kernels land in the centre row and column (docs/design.md rule 4).
"""

from __future__ import annotations

from dscnn.blocks.branch_conv import BranchConv


class ACBlock(BranchConv):
    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, *, stride: int = 1,
        groups: int = 1, dilation: int = 1,
    ) -> None:
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"ACBlock kernel_size must be odd and >= 3, got {kernel_size}")
        k = kernel_size
        super().__init__(
            in_channels, out_channels, [(k, k), (1, k), (k, 1)], stride=stride, groups=groups, dilation=dilation
        )

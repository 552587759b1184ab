"""Large-kernel depthwise conv with a small parallel kernel (Ding et al., "RepLKNet", CVPR 2022).

Train: KxK depthwise conv-BN + kxk depthwise conv-BN. Deploy: one KxK depthwise conv with bias.
"""

from __future__ import annotations

from dscnn.blocks.branch_conv import BranchConv


class RepLKConv(BranchConv):
    def __init__(self, channels: int, kernel_size: int = 13, small_kernel: int = 3, *, stride: int = 1) -> None:
        if not 0 < small_kernel < kernel_size or small_kernel % 2 == 0 or kernel_size % 2 == 0:
            raise ValueError(
                f"RepLKConv needs odd kernels with small_kernel < kernel_size, got {kernel_size}/{small_kernel}"
            )
        super().__init__(
            channels, channels, [(kernel_size, kernel_size), (small_kernel, small_kernel)],
            stride=stride, groups=channels,
        )

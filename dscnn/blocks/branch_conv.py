"""Parallel conv-BN branches (plus an optional BN identity) that fuse into one conv.

The shared machinery behind RepVGG, ACNet, RepLK and RepASO: each of those is this module with a
particular set of kernel shapes. All branches share stride, groups and dilation and use centred
"same" padding, so their receptive fields align and their kernels add (docs/design.md rules 2-4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dscnn.blocks.fast_branch import applies, current_branch_impl, fast_branch_sum
from dscnn.blocks.fast_pointwise import applies_pointwise, fast_pointwise_sum
from dscnn.fusion import conv_from_branch, fold_identity_bn, sum_branches
from dscnn.layers import ConvBN, check_groups
from dscnn.reparam import Reparameterizable


class BranchConv(Reparameterizable):
    """Sum of conv-BN branches of the given kernel shapes, and of BN(x) when ``identity``.

    After `reparameterize()` it holds a single biased Conv2d (``self.fused``) of the largest shape.
    In train mode, depthwise stride-1 instances run the exact fast path of `dscnn.blocks.fast_branch`
    and all-1x1 stride-1 ones (RefCO's stages) that of `dscnn.blocks.fast_pointwise` (same function
    and gradients, fewer passes) unless ``branch_impl("reference")`` is active.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_shapes: Sequence[tuple[int, int]],
        *,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        identity: bool = False,
    ) -> None:
        super().__init__()
        if not kernel_shapes and not identity:
            raise ValueError("BranchConv needs at least one branch")
        for kh, kw in kernel_shapes:
            if kh < 1 or kw < 1 or kh % 2 == 0 or kw % 2 == 0:
                raise ValueError(f"kernel {kh}x{kw}: branch kernels must be odd so their centres align")
        check_groups(in_channels, out_channels, groups, f"BranchConv({in_channels}->{out_channels})")
        if identity and (in_channels != out_channels or stride != 1):
            raise ValueError("an identity branch needs in_channels == out_channels and stride == 1")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.groups, self.dilation = stride, groups, dilation
        shapes = list(kernel_shapes) or [(1, 1)]
        self.kernel_size = (max(kh for kh, _ in shapes), max(kw for _, kw in shapes))
        self.branches = nn.ModuleList(
            ConvBN(in_channels, out_channels, shape, stride=stride, groups=groups, dilation=dilation)
            for shape in kernel_shapes
        )
        self.identity = nn.BatchNorm2d(out_channels) if identity else None
        self.fused: nn.Conv2d | None = None

    @property
    def is_reparameterized(self) -> bool:
        return self.fused is not None

    def reparameterize(self) -> None:
        if self.fused is not None:
            return
        with torch.no_grad():
            parts = [b.fused_branch() for b in self.branches]  # type: ignore[operator]
            if self.identity is not None:
                parts.append(fold_identity_bn(self.identity, self.groups, (1, 1)))
            branch = sum_branches(parts, self.kernel_size)
        template = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
            dilation=self.dilation, groups=self.groups, device="meta",
        )
        self.fused = conv_from_branch(template, branch)
        del self.branches
        self.identity = None

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return self.fused(x)
        if self.training and current_branch_impl() == "fast":
            if applies(self, x):
                return fast_branch_sum(self, x)
            if applies_pointwise(self, x):
                return fast_pointwise_sum(self, x)
        out = sum(branch(x) for branch in self.branches)
        if self.identity is not None:
            out = out + self.identity(x)
        assert isinstance(out, Tensor)
        return out

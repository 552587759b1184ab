"""Fusion maths for structural re-parameterization (docs/design.md section 1).

Pure tensor functions: every block folds its branches through these, none re-implements them.
A "kernel" is a conv weight of shape (out, in/groups, kh, kw); a "branch" is a (kernel, bias) pair.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Branch = tuple[Tensor, Tensor]


def fold_bn(
    kernel: Tensor,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    eps: float,
) -> Branch:
    """Fold an inference-mode BatchNorm into the conv before it (rule 1).

    ``W' = W * t`` and ``b' = beta + (c - mean) * t`` with ``t = gamma / sqrt(var + eps)``.
    """
    std = torch.sqrt(running_var + eps)
    t = (gamma if gamma is not None else torch.ones_like(std)) / std
    shift = beta if beta is not None else torch.zeros_like(std)
    conv_bias = bias if bias is not None else torch.zeros_like(std)
    return kernel * t.reshape(-1, 1, 1, 1), shift + (conv_bias - running_mean) * t


def fold_bn_module(kernel: Tensor, bias: Tensor | None, bn: nn.BatchNorm2d) -> Branch:
    """`fold_bn` reading statistics, affine parameters and ``eps`` from a BatchNorm module."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    return fold_bn(kernel, bias, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)


def identity_kernel(
    channels: int, groups: int, kernel_size: tuple[int, int], *, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Kernel of a conv that returns its input: ``K[i, i % (C/groups), kh//2, kw//2] = 1`` (rule 3)."""
    if channels % groups:
        raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
    in_per_group = channels // groups
    kernel = torch.zeros(channels, in_per_group, *kernel_size, dtype=dtype, device=device)
    index = torch.arange(channels, device=device)
    kernel[index, index % in_per_group, kernel_size[0] // 2, kernel_size[1] // 2] = 1
    return kernel


def fold_identity_bn(bn: nn.BatchNorm2d, groups: int, kernel_size: tuple[int, int]) -> Branch:
    """A BN-only identity branch as a (kernel, bias) pair."""
    ref = bn.running_var
    assert ref is not None
    kernel = identity_kernel(bn.num_features, groups, kernel_size, dtype=ref.dtype, device=ref.device)
    return fold_bn_module(kernel, None, bn)


def pad_kernel(kernel: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero-pad a kernel to ``size`` keeping it centred (rule 2); odd sizes only."""
    kh, kw = kernel.shape[-2:]
    th, tw = size
    if (th - kh) % 2 or (tw - kw) % 2 or th < kh or tw < kw:
        raise ValueError(f"cannot centre a {kh}x{kw} kernel in {th}x{tw}")
    ph, pw = (th - kh) // 2, (tw - kw) // 2
    return F.pad(kernel, (pw, pw, ph, ph))


def largest_kernel_size(kernels: Iterable[Tensor]) -> tuple[int, int]:
    sizes = [k.shape[-2:] for k in kernels]
    return max(s[0] for s in sizes), max(s[1] for s in sizes)


def sum_branches(branches: Sequence[Branch], size: tuple[int, int] | None = None) -> Branch:
    """Add parallel branches with centred receptive fields into one (kernel, bias)."""
    if not branches:
        raise ValueError("no branches to sum")
    size = size or largest_kernel_size(k for k, _ in branches)
    kernel = sum(pad_kernel(k, size) for k, _ in branches)
    bias = sum(b for _, b in branches)
    assert isinstance(kernel, Tensor) and isinstance(bias, Tensor)
    return kernel, bias


def avg_pool_kernel(
    channels: int, kernel_size: int, groups: int, *, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Kernel of a k x k average pool (count_include_pad=True) as a grouped conv (rule 6)."""
    kernel = identity_kernel(channels, groups, (1, 1), dtype=dtype, device=device)
    return kernel.expand(-1, -1, kernel_size, kernel_size) / kernel_size**2


def conv_from_branch(template: nn.Conv2d, branch: Branch) -> nn.Conv2d:
    """A biased Conv2d with ``template``'s geometry carrying the fused (kernel, bias)."""
    kernel, bias = branch
    conv = nn.Conv2d(
        template.in_channels,
        template.out_channels,
        kernel_size=tuple(kernel.shape[-2:]),  # type: ignore[arg-type]
        stride=template.stride,  # type: ignore[arg-type]
        padding=_centred_padding(tuple(kernel.shape[-2:]), template.dilation),
        dilation=template.dilation,  # type: ignore[arg-type]
        groups=template.groups,
        bias=True,
        device=kernel.device,
        dtype=kernel.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(kernel)
        assert conv.bias is not None
        conv.bias.copy_(bias)
    return conv


def _centred_padding(size: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[int, int]:
    return dilation[0] * (size[0] // 2), dilation[1] * (size[1] // 2)


def scale_branch(branch: Branch, scale: Tensor | float) -> Branch:
    """Multiply a branch's output by ``scale`` (a scalar or one factor per output channel).

    A per-channel layer scale (or a subtraction, with ``scale=-1``) applied after a linear branch
    is the same as scaling that branch's kernel rows and bias.
    """
    kernel, bias = branch
    if isinstance(scale, Tensor):
        scale = scale.reshape(-1)
        if scale.numel() != kernel.shape[0]:
            raise ValueError(f"scale has {scale.numel()} entries for {kernel.shape[0]} output channels")
        return kernel * scale.reshape(-1, 1, 1, 1), bias * scale
    return kernel * scale, bias * scale


def concat_branches(branches: Sequence[Branch], size: tuple[int, int] | None = None) -> Branch:
    """Stack branches acting on consecutive channel groups (a mixed-kernel depthwise conv) into one.

    Each kernel is padded, centred, to ``size`` (default: the largest) and the kernels and biases are
    concatenated along the output channel axis; valid for depthwise/grouped kernels, whose input
    slice follows the output channel.
    """
    if not branches:
        raise ValueError("no branches to concatenate")
    size = size or largest_kernel_size(k for k, _ in branches)
    kernel = torch.cat([pad_kernel(k, size) for k, _ in branches])
    return kernel, torch.cat([b for _, b in branches])


def fold_pointwise_after(branch: Branch, pointwise: Tensor) -> Branch:
    """A dense conv followed by a bias-free 1x1 conv ``Q`` (P, O, 1, 1), merged into one conv.

    ``W'' = Q W`` and ``b'' = Q b`` (exact: both are linear and the 1x1 needs no padding). Only for
    ``groups == 1`` kernels: ``Q`` mixes output channels, which a grouped conv cannot express.
    Used by ResRep to fold its compactors.
    """
    kernel, bias = branch
    if pointwise.ndim != 4 or pointwise.shape[-2:] != (1, 1) or pointwise.shape[1] != kernel.shape[0]:
        raise ValueError(
            f"pointwise kernel {tuple(pointwise.shape)} cannot follow a conv with {kernel.shape[0]} outputs"
        )
    q = pointwise.flatten(1)
    return torch.einsum("po,oikl->pikl", q, kernel), q @ bias

"""Stride-1, centred ("same") depthwise conv primitives and their gradients, for the fast paths.

`dwconv_t` is the input gradient as a forward conv with the flipped kernel, which oneDNN runs
about 2x faster than its own input-gradient kernel on CPU (measured, see the README).
`weight_grad` calls the weight-gradient kernel directly: at 3x3 it is a fraction of a forward
pass, at 5x5 and 7x7 it is 5-10x a forward pass (oneDNN, channels_last, measured here), which is
why the fast paths count weight-gradient passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def padding(shape: tuple[int, int], dilation: int) -> tuple[int, int]:
    return dilation * (shape[0] // 2), dilation * (shape[1] // 2)


def pad_kernel(kernel: Tensor, size: tuple[int, int]) -> Tensor:
    """A (C, 1, kh, kw) kernel centred in a zero ``size`` kernel (the same tensor when it is that size)."""
    ph, pw = (size[0] - kernel.shape[-2]) // 2, (size[1] - kernel.shape[-1]) // 2
    return F.pad(kernel, (pw, pw, ph, ph)) if ph or pw else kernel


def dwconv(x: Tensor, kernel: Tensor, dilation: int, bias: Tensor | None = None) -> Tensor:
    shape = (kernel.shape[-2], kernel.shape[-1])
    return F.conv2d(x, kernel, bias, padding=padding(shape, dilation), dilation=dilation, groups=x.shape[1])


def dwconv_t(g: Tensor, kernel: Tensor, dilation: int) -> Tensor:
    """Input gradient of a stride-1 centred depthwise conv: the same conv with the kernel flipped."""
    return dwconv(g, kernel.flip(-1, -2), dilation)


def weight_grad(x: Tensor, g: Tensor, shape: tuple[int, int], dilation: int) -> Tensor:
    """``corr(x, g)``: the weight gradient of a depthwise conv of kernel ``shape``, (C, 1, kh, kw)."""
    channels = x.shape[1]
    template = torch.empty((channels, 1, *shape), dtype=x.dtype, device=x.device)
    pad = padding(shape, dilation)
    return torch.ops.aten.convolution_backward(
        g, x, template, None, [1, 1], list(pad), [dilation, dilation], False, [0, 0], channels,
        [False, True, False],
    )[1]

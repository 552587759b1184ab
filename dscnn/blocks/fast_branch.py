"""Exact fast training path for parallel depthwise conv-BN branches (SPEC section 9).

A `BranchConv` in train mode computes ``y = sum_b BN_b(conv(x, W_b)) [+ BN_id(x)]`` with batch
statistics. Every BN is affine in its input given its batch statistics, so once the statistics are
known the whole sum is ONE conv: ``y = conv(x, sum_b t_b W_b) + sum_b (beta_b - t_b mu_b)`` with
``t_b = gamma_b / sqrt(var_b + eps_b)`` (SPEC rule 1 with batch instead of running statistics).
This module computes the same function and the same gradients as the per-branch reference in fewer
passes over memory, in a custom autograd function:

- forward: one conv per kernel branch, only to get its variance (``mu_b`` comes free from the
  patch sums of x), then one conv with the statistics-folded kernel. A 1x1 depthwise branch and the
  identity need no pass of their own: ``BN(a * x)`` has mean ``a * mu_x`` and variance
  ``a^2 * var_x``, so they are a per-channel ``alpha * x`` folded into the centre tap.
- backward: with ``g = dL/dy`` and per-channel scalars, ``dL/dz_b = t_b g + e_b z_b + c_b`` (the
  standard BN backward rewritten), so ``dL/dx = conv^T(g, W_eff) + sum_b conv^T(z_b, e_b W_b)
  + const`` and ``dL/dW_b = t_b G + e_b corr(x, z_b) + c_b P`` where ``G = corr(x, g)`` is shared by
  all branches (one weight-gradient pass) and ``P`` are the patch sums of x. ``sum(g * z_b)``,
  needed by every BN backward, is ``<W_b, G>``: no pass either. ``z_b`` is recomputed in backward,
  so a block saves only its input (this is where the memory saving comes from).
- ``conv^T`` of a stride-1 depthwise conv is a depthwise conv with the flipped kernel, which
  oneDNN runs about 2x faster than its own input-gradient kernel on CPU (measured, see the README).

Scope: depthwise branches (``groups == in == out``), stride 1, affine BNs tracking running
statistics, no autocast. Anything else takes the reference path (`applies` says which).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from dscnn.layers import ConvBN

if TYPE_CHECKING:
    from dscnn.blocks.branch_conv import BranchConv

#: Train-mode implementations of `BranchConv`: "fast" (this module, where it `applies`) or
#: "reference" (one conv and one BN module per branch, summed: the definition, kept for tests).
BRANCH_IMPLS = ("fast", "reference")
_impl = ["fast"]


def current_branch_impl() -> str:
    """The train-mode implementation `BranchConv` uses now ("fast" unless switched)."""
    return _impl[-1]


@contextmanager
def branch_impl(name: str) -> Iterator[None]:
    """Use implementation ``name`` (one of `BRANCH_IMPLS`) for every `BranchConv` inside the block."""
    if name not in BRANCH_IMPLS:
        raise ValueError(f"unknown branch implementation {name!r}; valid: {', '.join(BRANCH_IMPLS)}")
    _impl.append(name)
    try:
        yield
    finally:
        _impl.pop()


@dataclass
class _Plan:
    """Static geometry of one call, and the batch statistics the forward found (for running stats)."""

    kernel_sizes: tuple[tuple[int, int], ...]  # of the kernel branches, in order
    scaled: tuple[bool, ...]  # per x-branch: True = DW 1x1 conv (has a weight), False = identity
    eps: tuple[float, ...]  # kernel branches, then x-branches
    size: tuple[int, int]  # largest kernel
    dilation: int
    means: list[Tensor] = field(default_factory=list)  # batch mean per BN (kernel, then x-branches)
    variances: list[Tensor] = field(default_factory=list)  # biased batch variance per BN
    count: int = 0  # elements per channel


def _pad_to(kernel: Tensor, size: tuple[int, int]) -> Tensor:
    ph, pw = (size[0] - kernel.shape[-2]) // 2, (size[1] - kernel.shape[-1]) // 2
    return F.pad(kernel, (pw, pw, ph, ph))


def _crop(full: Tensor, shape: tuple[int, int]) -> Tensor:
    """The centred ``shape`` window of a (C, 1, KH, KW) tensor."""
    oh, ow = (full.shape[-2] - shape[0]) // 2, (full.shape[-1] - shape[1]) // 2
    return full[..., oh : oh + shape[0], ow : ow + shape[1]]


def _padding(shape: tuple[int, int], dilation: int) -> tuple[int, int]:
    return dilation * (shape[0] // 2), dilation * (shape[1] // 2)


def _dwconv(x: Tensor, kernel: Tensor, dilation: int, bias: Tensor | None = None) -> Tensor:
    shape = (kernel.shape[-2], kernel.shape[-1])
    return F.conv2d(x, kernel, bias, padding=_padding(shape, dilation), dilation=dilation, groups=x.shape[1])


def _dwconv_t(g: Tensor, kernel: Tensor, dilation: int) -> Tensor:
    """Input gradient of a stride-1 centred depthwise conv: the same conv with the kernel flipped."""
    return _dwconv(g, kernel.flip(-1, -2), dilation)


def _weight_grad(x: Tensor, g: Tensor, shape: tuple[int, int], dilation: int) -> Tensor:
    """``corr(x, g)``: the weight gradient of a depthwise conv of kernel ``shape``, (C, 1, kh, kw)."""
    channels = x.shape[1]
    template = torch.empty((channels, 1, *shape), dtype=x.dtype, device=x.device)
    pad = _padding(shape, dilation)
    return torch.ops.aten.convolution_backward(
        g, x, template, None, [1, 1], list(pad), [dilation, dilation], False, [0, 0], channels,
        [False, True, False],
    )[1]


def _channel_sum(t: Tensor) -> Tensor:
    return t.sum(dim=(0, 2, 3))


def _patch_sums(x: Tensor, size: tuple[int, int], dilation: int) -> Tensor:
    """``P[c, 0, i, j]`` = sum of x over the grid shifted by tap (i, j): the weight gradient of ones."""
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last):  # a GEMV: much faster than sum(0) there
        xs = torch.ones((1, n), dtype=x.dtype, device=x.device) @ x.permute(0, 2, 3, 1).reshape(n, -1)
        xs = xs.view(1, h, w, c).permute(0, 3, 1, 2)
    else:
        xs = x.sum(0, keepdim=True)
    return _weight_grad(xs, torch.ones_like(xs), size, dilation)


class _FastBranchSum(torch.autograd.Function):
    """y = sum of BN_b(dwconv(x, W_b)) + sum of BN_j(a_j * x), batch statistics, as described above.

    Inputs after ``plan`` and ``x``: per kernel branch (W_b, gamma_b, beta_b), then per x-branch
    (a_j or None, gamma_j, beta_j).
    """

    @staticmethod
    def forward(ctx: Any, plan: _Plan, x: Tensor, *params: Tensor | None) -> Tensor:
        nk = len(plan.kernel_sizes)
        kernels, gammas, betas = _split(params, nk, len(plan.scaled))
        n = x.shape[0] * x.shape[2] * x.shape[3]
        size, d = plan.size, plan.dilation
        patches = _patch_sums(x, size, d)  # (C, 1, KH, KW)
        means, variances, ts = [], [], []
        for b in range(nk):
            w = kernels[b]
            assert w is not None
            mu = (w * _crop(patches, plan.kernel_sizes[b])).sum(dim=(1, 2, 3)) / n
            z = _dwconv(x, w, d)
            z.sub_(mu.view(1, -1, 1, 1))
            var = _channel_sum(z.square_()) / n
            del z
            means.append(mu)
            variances.append(var)
        x_mean = x_var = None
        if plan.scaled:
            x_mean = _channel_sum(x) / n
            x_var = (_channel_sum(x * x) / n - x_mean.square()).clamp_(min=0)
            for j, has_weight in enumerate(plan.scaled):
                a = kernels[nk + j].view(-1) if has_weight else None  # type: ignore[union-attr]
                means.append(x_mean if a is None else a * x_mean)
                variances.append(x_var if a is None else a.square() * x_var)
        for i, (var, eps) in enumerate(zip(variances, plan.eps)):
            ts.append(gammas[i] * torch.rsqrt(var + eps))
        w_eff, b_eff = _folded(kernels, ts, means, betas, plan)
        y = _dwconv(x, w_eff, d, b_eff)
        plan.means, plan.variances, plan.count = means, variances, n
        ctx.plan = plan
        ctx.save_for_backward(x, patches, w_eff, *[k for k in kernels if k is not None], *ts,
                              *(t for t in (x_mean, x_var) if t is not None))
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        plan: _Plan = ctx.plan
        nk, nx = len(plan.kernel_sizes), len(plan.scaled)
        saved = ctx.saved_tensors
        x, patches, w_eff = saved[:3]
        n_weights = nk + sum(plan.scaled)
        weights = list(saved[3 : 3 + n_weights])
        ts = list(saved[3 + n_weights : 3 + n_weights + nk + nx])
        x_stats = saved[3 + n_weights + nk + nx :]
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        g = g.contiguous(memory_format=fmt)
        n, d, size = plan.count, plan.dilation, plan.size
        sum_g = _channel_sum(g)
        corr_g = _weight_grad(x, g, size, d)  # G = corr(x, g), (C, 1, KH, KW)
        dx = _dwconv_t(g, w_eff, d)
        const_kernel = torch.zeros_like(w_eff)
        grads: list[Tensor | None] = []
        for b in range(nk):
            w, t, shape = weights[b], ts[b], plan.kernel_sizes[b]
            mu, var = plan.means[b], plan.variances[b]
            inv = torch.rsqrt(var + plan.eps[b])
            k = (w * _crop(corr_g, shape)).sum(dim=(1, 2, 3)) - mu * sum_g  # sum(g * (z - mu))
            e = -t * inv.square() * k / n
            c = -t * sum_g / n - e * mu
            z = _dwconv(x, w, d)
            dx.add_(_dwconv_t(z, w * e.view(-1, 1, 1, 1), d))
            col = lambda v: v.view(-1, 1, 1, 1)  # noqa: E731
            dw = col(t) * _crop(corr_g, shape) + col(c) * _crop(patches, shape) + col(e) * _weight_grad(x, z, shape, d)
            del z
            const_kernel.add_(_pad_to(w * col(c), size))
            grads.extend([dw, k * inv, sum_g])
        if nx:
            grads.extend(_x_branch_grads(plan, x, dx, x_stats, weights[nk:], ts[nk:], corr_g, sum_g,
                                         const_kernel))
        ones = torch.ones((1, *x.shape[1:]), dtype=x.dtype, device=x.device)
        dx.add_(_dwconv_t(ones, const_kernel, d))
        return (None, dx, *grads)


def _x_branch_grads(
    plan: _Plan, x: Tensor, dx: Tensor, x_stats: Sequence[Tensor], weights: list[Tensor], ts: list[Tensor],
    corr_g: Tensor, sum_g: Tensor, const_kernel: Tensor,
) -> list[Tensor | None]:
    """Gradients of the x-branches (``z = a * x``; identity: a = 1); adds their part of dL/dx."""
    nk, n = len(plan.kernel_sizes), plan.count
    x_mean, x_var = x_stats
    ch, cw = plan.size[0] // 2, plan.size[1] // 2
    corr_c = corr_g[:, 0, ch, cw]  # sum(g * x)
    scale_x = torch.zeros_like(x_mean)
    grads: list[Tensor | None] = []
    weight_iter = iter(weights)
    for j, has_weight in enumerate(plan.scaled):
        a = next(weight_iter).view(-1) if has_weight else torch.ones_like(x_mean)
        t, mu, var = ts[j], plan.means[nk + j], plan.variances[nk + j]
        inv = torch.rsqrt(var + plan.eps[nk + j])
        centred = corr_c - x_mean * sum_g  # sum(g * (x - mu_x))
        k = a * centred
        e = -t * inv.square() * k / n
        c = -t * sum_g / n - e * mu
        scale_x += e * a * a
        const_kernel[:, 0, ch, cw] += a * c
        # d/da of BN(a x) = gamma * eps * (x - mu) / (a^2 var + eps)^1.5: BN cancels a's scale up to
        # eps, so this closed form avoids the cancellation of t*sum(gx) + e*a*sum(xx) + c*sum(x).
        da = ((t / inv) * plan.eps[nk + j] * inv.pow(3) * centred).view(-1, 1, 1, 1) if has_weight else None
        grads.extend([da, k * inv, sum_g])
    dx.add_(x * scale_x.view(1, -1, 1, 1))
    return grads


def _split(params: Sequence[Tensor | None], nk: int, nx: int) -> tuple[list[Tensor | None], list[Tensor], list[Tensor]]:
    kernels, gammas, betas = [], [], []
    for i in range(nk + nx):
        w, gamma, beta = params[3 * i : 3 * i + 3]
        assert gamma is not None and beta is not None
        kernels.append(w)
        gammas.append(gamma)
        betas.append(beta)
    return kernels, gammas, betas


def _folded(
    kernels: list[Tensor | None], ts: list[Tensor], means: list[Tensor], betas: list[Tensor], plan: _Plan
) -> tuple[Tensor, Tensor]:
    """The statistics-folded kernel and bias of the whole branch sum."""
    nk = len(plan.kernel_sizes)
    w_eff = ts[0].new_zeros((ts[0].shape[0], 1, *plan.size))
    for b in range(nk):
        w_eff = w_eff + _pad_to(kernels[b] * ts[b].view(-1, 1, 1, 1), plan.size)  # type: ignore[operator]
    bias = sum(beta - t * mu for beta, t, mu in zip(betas, ts, means))
    assert isinstance(bias, Tensor)
    for j in range(len(ts) - nk):
        a = kernels[nk + j]
        w_eff[:, 0, plan.size[0] // 2, plan.size[1] // 2] += ts[nk + j] * (a.view(-1) if a is not None else 1.0)
    return w_eff, bias


def _branches(module: BranchConv) -> list[ConvBN]:
    return [cast(ConvBN, b) for b in module.branches]


def _bn(module: nn.Module | None) -> nn.BatchNorm2d:
    assert isinstance(module, nn.BatchNorm2d)
    return module


def applies(module: BranchConv, x: Tensor) -> bool:
    """Whether `fast_branch_sum` computes ``module``'s train-mode forward exactly for input ``x``."""
    branches = _branches(module)
    bns = [b.bn for b in branches] + ([module.identity] if module.identity is not None else [])
    c = module.in_channels
    return (
        module.training and x.dim() == 4 and x.shape[1] == c and module.out_channels == c
        and module.groups == c and module.stride == 1 and x.shape[0] * x.shape[2] * x.shape[3] > 1
        and not torch.is_autocast_enabled() and x.dtype in (torch.float32, torch.float64)
        and all(isinstance(bn, nn.BatchNorm2d) and bn.training and bn.affine and bn.track_running_stats for bn in bns)
        and all(b.conv.bias is None and b.conv.weight.dtype == x.dtype for b in branches)
    )


def fast_branch_sum(module: BranchConv, x: Tensor) -> Tensor:
    """Train-mode forward of a depthwise `BranchConv` (see `applies`); updates running statistics."""
    kernel_branches = [b for b in _branches(module) if b.conv.kernel_size != (1, 1)]
    pointwise = [b for b in _branches(module) if b.conv.kernel_size == (1, 1)]
    bns = [_bn(b.bn) for b in kernel_branches + pointwise]
    params: list[Tensor | None] = []
    for b, bn in zip(kernel_branches + pointwise, bns):
        params.extend([b.conv.weight, bn.weight, bn.bias])
    scaled = [True] * len(pointwise)
    if module.identity is not None:
        bns.append(module.identity)
        params.extend([None, module.identity.weight, module.identity.bias])
        scaled.append(False)
    plan = _Plan(
        kernel_sizes=tuple((int(b.conv.kernel_size[0]), int(b.conv.kernel_size[1])) for b in kernel_branches),
        scaled=tuple(scaled), eps=tuple(bn.eps for bn in bns), size=module.kernel_size, dilation=module.dilation,
    )
    y = _FastBranchSum.apply(plan, x, *params)
    _update_running_stats(bns, plan)
    assert isinstance(y, Tensor)
    return y


@torch.no_grad()
def _update_running_stats(bns: Sequence[nn.BatchNorm2d], plan: _Plan) -> None:
    """Exactly what ``nn.BatchNorm2d.forward`` does in training mode with the given batch statistics."""
    n = plan.count
    for bn, mean, var in zip(bns, plan.means, plan.variances):
        assert bn.num_batches_tracked is not None and bn.running_mean is not None and bn.running_var is not None
        bn.num_batches_tracked.add_(1)
        m = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        bn.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
        bn.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)

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
  all branches and ``P`` are the patch sums of x. In moment mode (below) G is one cheap 3x3
  weight-gradient pass and ``sum(g * z_b) = <W_b, G>``; otherwise (5x5 and larger kernels, whose
  weight-gradient pass costs 5-10 forward passes) each branch's weight gradient is ONE pass,
  ``corr(x, t_b g + e_b z_b) + c_b P``, and G is never formed. ``z_b`` is recomputed in backward,
  so a block saves only its input (this is where the memory saving comes from).
- ``conv^T`` of a stride-1 depthwise conv is a depthwise conv with the flipped kernel, which
  oneDNN runs about 2x faster than its own input-gradient kernel on CPU (measured, see the README).

Moment mode (kernels up to 3x3, undilated): the per-branch passes above go too; see
`dscnn.blocks.patch_moments` (the patch Gram) and `dscnn.blocks.moment_branches` (all kernel
branches' statistics and gradients from it, stacked).

`depthwise_bn_sum` is the function itself, for any module whose train form is such a sum
(`fast_branch_sum` for a `BranchConv`, `dscnn.blocks.fast_repmix` for RepMiX).

Scope: depthwise branches (``groups == in == out``), stride 1, affine BNs tracking running
statistics, no autocast. Anything else takes the reference path (`applies` says which).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from dscnn.blocks.batch_norm_stats import as_batch_norm, channel_sums, conv_bn_branches, in_scope, update_running_stats
from dscnn.blocks.depthwise_ops import dwconv, dwconv_t, pad_kernel, weight_grad
from dscnn.blocks.moment_branches import branch_grads, branch_moments, stack_padded
from dscnn.blocks.patch_moments import add_border, moment_mix, patch_gram
from dscnn.layers import ConvBN

if TYPE_CHECKING:
    from dscnn.blocks.branch_conv import BranchConv

#: Train-mode implementations of `BranchConv` and `RepMiX`: "fast" (the exact fast paths, where
#: they apply) or "reference" (one conv and one BN module per branch, summed: the definition, kept for tests).
BRANCH_IMPLS = ("fast", "reference")
_impl = ["fast"]
#: Largest kernel side for which the kernel branches run from the patch Gram
#: (`dscnn.blocks.patch_moments`); larger kernels (and dilated ones) take one pass per branch
#: instead. The moment code handles radii <= 1 only, so this is at most 3 (0 switches it off: tests compare both).
MOMENT_MAX_KERNEL = 3
#: Largest kernel side the fast path takes at all: beyond it the per-branch passes (each a large
#: depthwise conv) outweigh the BN passes they save. RepLK 13x13 + 3x3, batch 64, channels_last,
#: 1 thread, fast vs reference ms per step: 111 vs 72 (64 ch, 16x16) and 248 vs 206 (32 ch, 32x32);
#: at 11x11 66 vs 64 and 134 vs 144, at 7x7 30 vs 35 and 96 vs 126 (issue 12).
FAST_MAX_KERNEL = 11


def current_branch_impl() -> str:
    """The train-mode implementation the multi-branch blocks use now ("fast" unless switched)."""
    return _impl[-1]


@contextmanager
def branch_impl(name: str) -> Iterator[None]:
    """Use implementation ``name`` (one of `BRANCH_IMPLS`) for every multi-branch block inside the block."""
    if name not in BRANCH_IMPLS:
        raise ValueError(f"unknown branch implementation {name!r}; valid: {', '.join(BRANCH_IMPLS)}")
    _impl.append(name)
    try:
        yield
    finally:
        _impl.pop()


@dataclass(frozen=True)
class BNTerm:
    """One batch-normalised branch of a depthwise sum: ``BN(dwconv(x, weight))`` for a kernel
    branch; for an x-branch ``BN(a * x)`` with ``weight`` = a as (C, 1, 1, 1), or None (identity)."""

    weight: Tensor | None
    gamma: Tensor
    beta: Tensor
    eps: float


@dataclass(frozen=True)
class BatchStats:
    """The batch statistics a sum used, per term (kernel terms, then x-terms): for running statistics."""

    means: list[Tensor]
    variances: list[Tensor]  # biased
    count: int  # values per channel


@dataclass
class _Plan:
    """Static geometry of one call, and the batch statistics the forward found (for running stats)."""

    kernel_sizes: tuple[tuple[int, int], ...]  # of the kernel branches, in order
    scaled: tuple[bool, ...]  # per x-branch: True = DW 1x1 conv (has a weight), False = identity
    eps: tuple[float, ...]  # kernel branches, then x-branches
    size: tuple[int, int]  # largest kernel
    dilation: int
    moments: bool = False  # kernel branches' statistics and backward from the patch Gram (see `patch_gram`)
    means: list[Tensor] = field(default_factory=list)  # batch mean per BN (kernel, then x-branches)
    variances: list[Tensor] = field(default_factory=list)  # biased batch variance per BN
    count: int = 0  # elements per channel


def _crop(full: Tensor, shape: tuple[int, int]) -> Tensor:
    """The centred ``shape`` window of a (C, 1, KH, KW) tensor."""
    oh, ow = (full.shape[-2] - shape[0]) // 2, (full.shape[-1] - shape[1]) // 2
    return full[..., oh : oh + shape[0], ow : ow + shape[1]]


def _patch_sums(x: Tensor, size: tuple[int, int], dilation: int) -> Tensor:
    """``P[c, 0, i, j]`` = sum of x over the grid shifted by tap (i, j): the weight gradient of ones."""
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last):  # a GEMV: much faster than sum(0) there
        xs = torch.ones((1, n), dtype=x.dtype, device=x.device) @ x.permute(0, 2, 3, 1).reshape(n, -1)
        xs = xs.view(1, h, w, c).permute(0, 3, 1, 2)
    else:
        xs = x.sum(0, keepdim=True)
    return weight_grad(xs, torch.ones_like(xs), size, dilation)


def _col(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def _row(v: Tensor) -> Tensor:
    return v.view(1, -1, 1, 1)


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
        gram = patch_gram(x, size) if plan.moments else None  # (C, D, D)
        means: list[Tensor] = []
        variances: list[Tensor] = []
        stacked = sigma_w = None
        if gram is not None:
            stacked = stack_padded(cast(list[Tensor], kernels[:nk]), size)  # (C, B, D)
            mu_k, var_k, sigma_w = branch_moments(stacked, patches.flatten(1), gram, n)
            means.extend(mu_k.unbind(1))
            variances.extend(var_k.unbind(1))
        else:
            for b in range(nk):
                w = kernels[b]
                assert w is not None
                mu = (w * _crop(patches, plan.kernel_sizes[b])).sum(dim=(1, 2, 3)) / n
                z = dwconv(x, w, d)
                z.sub_(_row(mu))
                means.append(mu)
                variances.append(channel_sums(z.square_()) / n)
                del z
        x_mean = x_var = None
        if plan.scaled:
            ch, cw = size[0] // 2, size[1] // 2
            x_mean = patches[:, 0, ch, cw] / n  # the centre tap's patch sum is sum(x)
            if gram is not None:
                sq = gram[:, (size[0] * size[1]) // 2, (size[0] * size[1]) // 2]  # sum(x * x)
            else:
                sq = channel_sums(x * x)
            x_var = (sq / n - x_mean.square()).clamp_(min=0)
            for j, has_weight in enumerate(plan.scaled):
                a = kernels[nk + j].view(-1) if has_weight else None  # type: ignore[union-attr]
                means.append(x_mean if a is None else a * x_mean)
                variances.append(x_var if a is None else a.square() * x_var)
        eps = _eps(plan.eps, x)
        ts = torch.stack(gammas, 1) * torch.rsqrt(torch.stack(variances, 1) + eps)  # (C, terms)
        w_eff, b_eff = _folded(kernels, stacked, ts, torch.stack(means, 1), torch.stack(betas, 1), plan)
        y = dwconv(x, w_eff, d, b_eff)
        plan.means, plan.variances, plan.count = means, variances, n
        ctx.plan = plan
        moment_tensors = () if gram is None else (gram, stacked, sigma_w)
        ctx.save_for_backward(x, patches, w_eff, ts, *[k for k in kernels if k is not None],
                              *(t for t in (x_mean, x_var) if t is not None), *moment_tensors)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        plan: _Plan = ctx.plan
        nk, nx = len(plan.kernel_sizes), len(plan.scaled)
        saved = ctx.saved_tensors
        x, patches, w_eff, ts_all = saved[:4]
        n_weights = nk + sum(plan.scaled)
        weights = list(saved[4 : 4 + n_weights])
        ts = list(ts_all.unbind(1))
        x_stats = saved[4 + n_weights : 4 + n_weights + (2 if nx else 0)]
        gram, stacked, sigma_w = saved[-3:] if plan.moments else (None, None, None)
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        g = g.contiguous(memory_format=fmt)
        n, d, size = plan.count, plan.dilation, plan.size
        sum_g = channel_sums(g)
        dx = dwconv_t(g, w_eff, d)
        grads: list[Tensor | None] = []
        mix = corr_g = None
        if gram is not None and stacked is not None and sigma_w is not None:
            # G = corr(x, g): one cheap 3x3 pass; every branch's gradient is algebra on it.
            corr_g = weight_grad(x, g, size, d)
            eps = _eps(plan.eps[:nk], x)
            bg = branch_grads(
                stacked, ts_all[:, :nk], torch.stack(plan.means[:nk], 1), torch.stack(plan.variances[:nk], 1), eps,
                patches.flatten(1), sigma_w, corr_g.flatten(1), sum_g, n,
            )
            mix, const_kernel = bg.mix, bg.const_kernel.view_as(w_eff)
            for b, shape in enumerate(plan.kernel_sizes):
                dw = _crop(bg.weights[:, b].view_as(w_eff), shape).contiguous()
                grads.extend([dw, bg.gammas[:, b], sum_g])
        else:
            # Each branch's weight gradient is one pass of its own (5x5 and larger weight-gradient
            # passes are expensive) and only G's centre tap, sum(g * x), is needed.
            const_kernel = torch.zeros_like(w_eff)
            for b in range(nk):
                w, t, shape = weights[b], ts[b], plan.kernel_sizes[b]
                mu, var = plan.means[b], plan.variances[b]
                inv = torch.rsqrt(var + plan.eps[b])
                z = dwconv(x, w, d)
                k = channel_sums(g * z) - mu * sum_g
                e = -t * inv.square() * k / n
                c = -t * sum_g / n - e * mu
                dx.add_(dwconv_t(z, w * _col(e), d))
                dz = z.mul_(_row(e)).addcmul_(g, _row(t))  # dL/dz_b less its constant c_b
                dw = weight_grad(x, dz, shape, d) + _col(c) * _crop(patches, shape)
                del z, dz
                const_kernel.add_(pad_kernel(w * _col(c), size))
                grads.extend([dw, k * inv, sum_g])
        if nx:
            ch, cw = size[0] // 2, size[1] // 2
            corr_c = corr_g[:, 0, ch, cw] if corr_g is not None else channel_sums(g * x)  # sum(g * x)
            x_grads, scale_x = _x_branch_grads(plan, x_stats, weights[nk:], ts[nk:], corr_c, sum_g, const_kernel)
            grads.extend(x_grads)
            if mix is not None:  # z_j = a_j x: its e-term a_j^2 e_j x is the centre tap of the mix
                centre = (size[0] * size[1]) // 2
                mix[:, centre, centre] += scale_x
            else:
                dx.add_(x * _row(scale_x))
        ones = torch.ones((1, *x.shape[1:]), dtype=x.dtype, device=x.device).contiguous(memory_format=fmt)
        const_map = dwconv_t(ones, const_kernel, d)  # the constant part of dL/dx, (1, C, H, W)
        if mix is not None:
            # The constant map is const_kernel's sum away from the border: that part rides as the
            # bias of the mix conv (a broadcast add over a whole activation costs a pass).
            interior = const_kernel.sum(dim=(1, 2, 3))
            part = moment_mix(x, mix, size, interior)
            add_border(part, const_map - _row(interior), size)
            dx.add_(part)
        else:
            dx.add_(const_map)
        return (None, dx, *grads)


def _eps(values: tuple[float, ...], x: Tensor) -> Tensor | float:
    """The BNs' eps, broadcastable over (C, terms): a plain float when they agree (the usual case;
    a tensor built from host values is a blocking copy, i.e. a stream sync, on CUDA)."""
    if len(set(values)) == 1:
        return values[0]
    return torch.tensor(values, dtype=x.dtype).to(x.device, non_blocking=True)


def _x_branch_grads(
    plan: _Plan, x_stats: Sequence[Tensor], weights: list[Tensor], ts: list[Tensor],
    corr_c: Tensor, sum_g: Tensor, const_kernel: Tensor,
) -> tuple[list[Tensor | None], Tensor]:
    """Gradients of the x-branches (``z = a * x``; identity: a = 1), and the per-channel factor
    ``s`` of their part ``s * x`` of dL/dx (their constant part goes into ``const_kernel``);
    ``corr_c`` is ``sum(g * x)`` per channel."""
    nk, n = len(plan.kernel_sizes), plan.count
    x_mean, x_var = x_stats
    ch, cw = plan.size[0] // 2, plan.size[1] // 2
    scale_x = torch.zeros_like(x_mean)
    grads: list[Tensor | None] = []
    weight_iter = iter(weights)
    centred = corr_c - x_mean * sum_g  # sum(g * (x - mu_x)), shared by every x-term
    for j, has_weight in enumerate(plan.scaled):
        a = next(weight_iter).view(-1) if has_weight else torch.ones_like(x_mean)
        t, mu, var = ts[j], plan.means[nk + j], plan.variances[nk + j]
        inv = torch.rsqrt(var + plan.eps[nk + j])
        k = a * centred
        e = -t * inv.square() * k / n
        c = -t * sum_g / n - e * mu
        scale_x += e * a * a
        const_kernel[:, 0, ch, cw] += a * c
        # d/da of BN(a x) = gamma * eps * (x - mu) / (a^2 var + eps)^1.5: BN cancels a's scale up to
        # eps, so this closed form avoids the cancellation of t*sum(gx) + e*a*sum(xx) + c*sum(x).
        da = _col((t / inv) * plan.eps[nk + j] * inv.pow(3) * centred) if has_weight else None
        grads.extend([da, k * inv, sum_g])
    return grads, scale_x


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
    kernels: list[Tensor | None], stacked: Tensor | None, ts: Tensor, means: Tensor, betas: Tensor, plan: _Plan
) -> tuple[Tensor, Tensor]:
    """The statistics-folded kernel and bias of the whole branch sum (``ts``, ``means``, ``betas``: (C, terms))."""
    nk = len(plan.kernel_sizes)
    channels = ts.shape[0]
    if stacked is not None:
        w_eff = torch.bmm(ts[:, None, :nk], stacked).view(channels, 1, *plan.size)
    else:
        w_eff = ts.new_zeros((channels, 1, *plan.size))
        for b in range(nk):
            w_eff = w_eff + pad_kernel(kernels[b] * _col(ts[:, b]), plan.size)  # type: ignore[operator]
    bias = (betas - ts * means).sum(1)
    for j in range(ts.shape[1] - nk):
        a = kernels[nk + j]
        w_eff[:, 0, plan.size[0] // 2, plan.size[1] // 2] += ts[:, nk + j] * (a.view(-1) if a is not None else 1.0)
    return w_eff, bias


def depthwise_bn_sum(
    x: Tensor, kernel_terms: Sequence[BNTerm], x_terms: Sequence[BNTerm], *, dilation: int = 1,
) -> tuple[Tensor, BatchStats]:
    """``sum of BN(dwconv(x, w))`` over ``kernel_terms`` plus ``sum of BN(a * x)`` over ``x_terms``,
    with batch statistics, stride 1, centred padding: the exact fast path of this module.

    Differentiable in x and every term's tensors. The caller owns the BN modules: it updates their
    running statistics from the returned `BatchStats` (`update_running_stats`). Kernels must be odd
    (their centres align); ``x`` float32/float64 with more than one value per channel.
    """
    if not kernel_terms and not x_terms:
        raise ValueError("depthwise_bn_sum needs at least one term")
    shapes = [(int(t.weight.shape[-2]), int(t.weight.shape[-1])) for t in kernel_terms if t.weight is not None]
    if len(shapes) != len(kernel_terms):
        raise ValueError("every kernel term needs a weight")
    size = (max((s[0] for s in shapes), default=1), max((s[1] for s in shapes), default=1))
    plan = _Plan(
        kernel_sizes=tuple(shapes), scaled=tuple(t.weight is not None for t in x_terms),
        eps=tuple(t.eps for t in (*kernel_terms, *x_terms)), size=size, dilation=dilation,
        moments=dilation == 1 and max(size) <= MOMENT_MAX_KERNEL and bool(kernel_terms),
    )
    params = [p for t in (*kernel_terms, *x_terms) for p in (t.weight, t.gamma, t.beta)]
    y = _FastBranchSum.apply(plan, x, *params)
    assert isinstance(y, Tensor)
    return y, BatchStats(plan.means, plan.variances, plan.count)


def applies(module: BranchConv, x: Tensor) -> bool:
    """Whether `fast_branch_sum` computes ``module``'s train-mode forward exactly for input ``x``."""
    branches = conv_bn_branches(module)
    bns = [b.bn for b in branches] + ([module.identity] if module.identity is not None else [])
    c = module.in_channels
    return (
        module.training and x.dim() == 4 and x.shape[1] == c and module.out_channels == c
        and module.groups == c and module.stride == 1 and max(module.kernel_size) <= FAST_MAX_KERNEL
        and in_scope(x, bns, [b.conv for b in branches])
    )


def term(conv_bn: ConvBN) -> BNTerm:
    """A conv-BN branch as a `BNTerm` (its conv weight, its BN's affine parameters and eps)."""
    bn = as_batch_norm(conv_bn.bn)
    assert bn.weight is not None and bn.bias is not None
    return BNTerm(conv_bn.conv.weight, bn.weight, bn.bias, bn.eps)


def identity_term(bn: nn.BatchNorm2d, sign: float = 1.0) -> BNTerm:
    """``sign * BN(x)`` as an x-term (sign -1: a subtracted BN; its parameters' gradients follow)."""
    assert bn.weight is not None and bn.bias is not None
    if sign == 1.0:
        return BNTerm(None, bn.weight, bn.bias, bn.eps)
    return BNTerm(None, bn.weight * sign, bn.bias * sign, bn.eps)


def fast_branch_sum(module: BranchConv, x: Tensor) -> Tensor:
    """Train-mode forward of a depthwise `BranchConv` (see `applies`); updates running statistics."""
    kernel_branches = [b for b in conv_bn_branches(module) if b.conv.kernel_size != (1, 1)]
    pointwise = [b for b in conv_bn_branches(module) if b.conv.kernel_size == (1, 1)]
    bns = [as_batch_norm(b.bn) for b in kernel_branches + pointwise]
    x_terms = [term(b) for b in pointwise]
    if module.identity is not None:
        bns.append(module.identity)
        x_terms.append(identity_term(module.identity))
    y, stats = depthwise_bn_sum(x, [term(b) for b in kernel_branches], x_terms, dilation=module.dilation)
    update_running_stats(bns, stats.means, stats.variances, stats.count)
    return y

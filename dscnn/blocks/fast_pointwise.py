"""Exact fast training path for parallel (grouped) 1x1 conv-BN branches (SPEC section 9, issue 12).

FalconNet's RefCO stages are ``y = sum_b BN_b(conv1x1(x, W_b))`` with ``groups`` groups (and a
`BranchConv` may add ``BN(x)``). Per group a 1x1 conv is a matrix ``W_b`` acting on each pixel's
channel vector, so every BN statistic is a quadratic form of the input's per-group moments:

- ``s = sum_p x(p)`` and the Gram matrix ``S = sum_p x(p) x(p)^T`` (one block per group) give
  ``mu_b = W_b s / n`` and ``E[z_b^2] = diag(W_b S W_b^T) / n``: the batch statistics of every
  branch from ONE weight-gradient-shaped pass over x, with no branch output materialised;
- forward is then ONE grouped conv with ``W_eff = sum_b t_b W_b`` and the folded bias;
- backward: with ``dL/dz_b = t_b g + e_b z_b + c_b`` (per-channel scalars, the BN backward
  rewritten), ``dL/dx = W_eff^T g + (sum_b W_b^T diag(e_b) W_b) x + const`` (two grouped 1x1 passes,
  z_b never recomputed) and ``dL/dW_b = t_b G + e_b W_b S + c_b s^T`` with ``G = sum_p g x^T`` shared
  by all branches (one weight-gradient pass); ``sum(g * (z_b - mu_b)) = <W_b, G> - mu_b sum(g)``.

An identity branch is a branch with the fixed weight I (per group). Only x is saved for backward
(plus per-channel moments), not one output per branch and BN.

Scope: every branch 1x1, stride 1, any groups, affine BNs tracking running statistics, float32 or
float64, no autocast (`applies_pointwise`). The variance is ``E[z^2] - mu^2`` from float sums: exact
in real arithmetic, and within float32 rounding of the two-pass reference for inputs whose mean is
not many standard deviations away from zero (BN outputs and ReLU'd activations are not).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from dscnn.blocks.batch_norm_stats import (
    channel_sums,
    conv_bn_branches,
    in_scope,
    memory_format_of,
    update_running_stats,
)

if TYPE_CHECKING:
    from dscnn.blocks.branch_conv import BranchConv


def _grouped_gram(x: Tensor, g: Tensor, groups: int, in_per_group: int) -> Tensor:
    """``sum_p g_o(p) x_i(p)`` for each output channel o and input channel i of o's group: (C_out, k_in, 1, 1)."""
    template = torch.empty((g.shape[1], in_per_group, 1, 1), dtype=x.dtype, device=x.device)
    return torch.ops.aten.convolution_backward(
        g, x, template, None, [1, 1], [0, 0], [1, 1], False, [0, 0], groups, [False, True, False],
    )[1]


def input_gram(x: Tensor, groups: int) -> Tensor:
    """``sum_p x(p) x(p)^T`` per group of channels, (groups, k_in, k_in): one weight-gradient-shaped pass."""
    k_in = x.shape[1] // groups
    return _blocks(_grouped_gram(x, x, groups, k_in), groups)


def _blocks(w: Tensor, groups: int) -> Tensor:
    """A (C_out, k_in, 1, 1) weight as (groups, k_out, k_in)."""
    return w.reshape(groups, w.shape[0] // groups, w.shape[1])


def _per_group(v: Tensor, groups: int) -> Tensor:
    """A per-input-channel vector as (groups, k_in, 1)."""
    return v.reshape(groups, -1, 1)


def pointwise_stats(
    weights: list[Tensor], gammas: list[Tensor], eps: tuple[float, ...], s: Tensor, gram: Tensor, n: int,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Batch mean, biased variance and ``t = gamma / sqrt(var + eps)`` of each grouped 1x1 branch
    ``conv1x1(x, W_b)`` from x's channel sums ``s`` and per-group Gram ``gram`` (G, k_in, k_in), ``n``
    values per channel (no branch output materialised)."""
    groups = gram.shape[0]
    means, variances, ts = [], [], []
    for w, gamma, e in zip(weights, gammas, eps):
        wb = _blocks(w, groups)
        mu = torch.bmm(wb, _per_group(s, groups)).reshape(-1) / n
        ez2 = (torch.bmm(wb, gram) * wb).sum(-1).reshape(-1) / n
        var = (ez2 - mu.square()).clamp_(min=0)
        means.append(mu)
        variances.append(var)
        ts.append(gamma * torch.rsqrt(var + e))
    return means, variances, ts


def folded(weights: list[Tensor], ts: list[Tensor], means: list[Tensor], betas: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The statistics-folded weight ``sum_b t_b W_b`` and bias ``sum_b (beta_b - t_b mu_b)``."""
    w_eff = sum(w * t.view(-1, 1, 1, 1) for w, t in zip(weights, ts))
    b_eff = sum(beta - t * mu for beta, t, mu in zip(betas, ts, means))
    assert isinstance(w_eff, Tensor) and isinstance(b_eff, Tensor)
    return w_eff, b_eff


def pointwise_grads(
    weights: list[Tensor], has_weight: list[bool], ts: list[Tensor], means: list[Tensor], variances: list[Tensor],
    eps: tuple[float, ...], s: Tensor, gram: Tensor, corr: Tensor, sum_g: Tensor, n: int,
) -> tuple[Tensor, Tensor, list[Tensor | None]]:
    """The backward of `pointwise_stats` + `folded` given ``corr = sum_p g x^T`` (the folded conv's
    weight gradient, (C_out, k_in, 1, 1)) and ``sum_g``: the (G, k_in, k_in) ``mix`` and per-channel
    ``const`` of the input gradient's part ``conv1x1(x, mix) + const`` (beside ``W_eff^T g``), and per
    branch (dW_b or None where it has no weight, dgamma_b, dbeta_b)."""
    groups = gram.shape[0]
    corr_b = _blocks(corr, groups)  # G = sum_p g x^T, (G, k_out, k_in)
    s_b = _per_group(s, groups).transpose(1, 2)  # (G, 1, k_in)
    mix = torch.zeros_like(gram)  # sum_b W_b^T diag(e_b) W_b
    const = torch.zeros_like(s)  # sum_b W_b^T c_b
    grads: list[Tensor | None] = []
    for w, t, mu, var, e_b, weighted in zip(weights, ts, means, variances, eps, has_weight):
        wb = _blocks(w, groups)
        inv = torch.rsqrt(var + e_b)
        k = (wb * corr_b).sum(-1).reshape(-1) - mu * sum_g  # sum(g * (z_b - mu_b))
        e = -t * inv.square() * k / n
        c = -t * sum_g / n - e * mu
        eb, cb = _per_group(e, groups), _per_group(c, groups)
        mix += torch.bmm(wb.transpose(1, 2), eb * wb)
        const += torch.bmm(wb.transpose(1, 2), cb).reshape(-1)
        if weighted:
            dw = _per_group(t, groups) * corr_b + eb * torch.bmm(wb, gram) + cb * s_b
            grads.append(dw.reshape(w.shape))
        else:
            grads.append(None)
        grads.extend([k * inv, sum_g])
    return mix, const, grads


class _Stats:
    """The batch statistics the forward found, for the running-statistics update."""

    def __init__(self) -> None:
        self.means: list[Tensor] = []
        self.variances: list[Tensor] = []
        self.count = 0


class _FastPointwiseSum(torch.autograd.Function):
    """y = sum_b BN_b(conv1x1(x, W_b, groups)), batch statistics. Inputs after the static args:
    per branch (W_b, gamma_b, beta_b); W_b is None for the identity (fixed weight ``eye``)."""

    @staticmethod
    def forward(
        ctx: Any, groups: int, eps: tuple[float, ...], eye: Tensor | None, stats: _Stats, x: Tensor,
        *params: Tensor | None,
    ) -> Tensor:
        n = x.shape[0] * x.shape[2] * x.shape[3]
        weights = cast(list[Tensor], [eye if w is None else w for w in params[0::3]])
        gammas, betas = cast(list[Tensor], list(params[1::3])), cast(list[Tensor], list(params[2::3]))
        s = channel_sums(x)
        gram = input_gram(x, groups)  # (G, k_in, k_in), symmetric
        means, variances, ts = pointwise_stats(weights, gammas, eps, s, gram, n)
        w_eff, b_eff = folded(weights, ts, means, betas)
        y = F.conv2d(x, w_eff, b_eff, groups=groups)
        stats.means, stats.variances, stats.count = means, variances, n
        ctx.groups, ctx.eps, ctx.n, ctx.has_weight = groups, eps, n, [w is not None for w in params[0::3]]
        ctx.save_for_backward(x, s, gram, w_eff, *[w for w in weights if w is not None], *ts, *means, *variances)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        groups, n, nb = ctx.groups, ctx.n, len(ctx.eps)
        x, s, gram, w_eff, *rest = ctx.saved_tensors
        weights, ts, means, variances = rest[:nb], rest[nb : 2 * nb], rest[2 * nb : 3 * nb], rest[3 * nb :]
        g = g.contiguous(memory_format=memory_format_of(x))
        sum_g = channel_sums(g)
        dx, corr = torch.ops.aten.convolution_backward(
            g, x, w_eff, None, [1, 1], [0, 0], [1, 1], False, [0, 0], groups, [True, True, False],
        )[:2]
        mix, const, grads = pointwise_grads(
            weights, ctx.has_weight, ts, means, variances, ctx.eps, s, gram, corr, sum_g, n,
        )
        dx = dx.add_(F.conv2d(x, mix.reshape(-1, mix.shape[-1], 1, 1), const, groups=groups))
        return (None, None, None, None, dx, *grads)


def applies_pointwise(module: BranchConv, x: Tensor) -> bool:
    """Whether `fast_pointwise_sum` computes ``module``'s train-mode forward exactly for input ``x``."""
    branches = conv_bn_branches(module)
    bns = [b.bn for b in branches] + ([module.identity] if module.identity is not None else [])
    return (
        module.training and x.dim() == 4 and x.shape[1] == module.in_channels and module.stride == 1
        and module.kernel_size == (1, 1) and len(bns) >= 2 and in_scope(x, bns, [b.conv for b in branches])
    )


def identity_weight(channels: int, groups: int, like: Tensor) -> Tensor:
    """The (C, C/groups, 1, 1) grouped 1x1 weight of the identity."""
    k = channels // groups
    eye = torch.zeros((channels, k, 1, 1), dtype=like.dtype, device=like.device)
    eye[torch.arange(channels), torch.arange(channels) % k] = 1.0
    return eye


def fast_pointwise_sum(module: BranchConv, x: Tensor) -> Tensor:
    """Train-mode forward of an all-1x1 `BranchConv` (see `applies_pointwise`); updates running statistics."""
    branches = conv_bn_branches(module)
    bns = [cast(nn.BatchNorm2d, b.bn) for b in branches]
    params: list[Tensor | None] = []
    for b, bn in zip(branches, bns):
        params.extend([b.conv.weight, bn.weight, bn.bias])
    eye = None
    if module.identity is not None:
        bns.append(module.identity)
        params.extend([None, module.identity.weight, module.identity.bias])
        eye = identity_weight(module.out_channels, module.groups, x)
    stats = _Stats()
    y = _FastPointwiseSum.apply(module.groups, tuple(bn.eps for bn in bns), eye, stats, x, *params)
    update_running_stats(bns, stats.means, stats.variances, stats.count)
    assert isinstance(y, Tensor)
    return y

"""Exact fast training path for dense (and grouped) conv-BN branch sums: RepVGG, dense ACB (issue 12).

A `BranchConv` in train mode computes ``y = sum_b BN_b(z_b) [+ BN_id(x)]`` with ``z_b = conv(x, W_b)``
and batch statistics. With ``t_b = gamma_b / sqrt(var_b + eps_b)`` every BN is ``t_b z_b + (beta_b -
t_b mu_b)`` once its statistics are known, so the sum is, without a BN pass or an add of its own:

- forward: each *explicit* branch's output ``z_b`` (its variance needs it: for a dense kxk conv the
  patch moments would be a (C k^2)^2 Gram), its statistics from one ``sum(z)`` and one ``sum(z^2)``;
  the 1x1 branches and the identity (*Gram* terms) take theirs from x's channel sums and per-group
  Gram (`dscnn.blocks.fast_pointwise`), and all of them are ONE 1x1 conv with the folded weight
  ``sum_j t_j W_j + t_id I`` and the whole sum's bias; then ``y += t_b z_b`` per explicit branch
  (one addcmul each). At stride s a 1x1 conv with padding 0 reads ``x[:, :, ::s, ::s]``, exactly the
  centres of a kxk pad-(k//2) stride-s conv, so the Gram is that subsample's;
- backward: ``dL/dz_b = t_b g + e_b z_b + c_b`` (the BN backward rewritten with per-channel
  scalars ``e_b``, ``c_b`` from ``sum(g)`` and ``sum(g z_b)``), then ONE
  ``aten.convolution_backward`` per explicit branch for its input and weight gradients; the Gram
  terms' part is `fast_pointwise.pointwise_grads` (one input-and-weight-gradient call of the folded
  1x1 conv on g, one 1x1 conv of x with the mixing matrix).

Without Gram terms (``gram=False``) the 1x1 branches are explicit too and the identity is the
explicit ``z = x``: the same conv FLOPs as the reference, only the BN and add passes fused.

Scope (`applies_dense`): not depthwise (that is `fast_branch`), at least two branches, not all 1x1 at
stride 1 (that is `fast_pointwise`), affine BNs tracking running statistics, float32/float64, no
autocast. Variances are ``E[z^2] - mu^2`` from float sums, as in the other fast paths
(`batch_norm_stats.in_scope` gives the precision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from dscnn.blocks.batch_norm_stats import (
    as_batch_norm,
    channel_sums,
    conv_bn_branches,
    in_scope,
    memory_format_of,
    update_running_stats,
)
from dscnn.blocks.fast_pointwise import folded, identity_weight, input_gram, pointwise_grads, pointwise_stats

if TYPE_CHECKING:
    from dscnn.blocks.branch_conv import BranchConv


@dataclass
class _Plan:
    """Static geometry of one call, and the batch statistics the forward found (for running stats)."""

    paddings: tuple[tuple[int, int], ...]  # per explicit conv branch, in order
    explicit_identity: bool  # the identity as an explicit term z = x (after the conv branches)
    gram_weighted: tuple[bool, ...]  # per Gram term: True = 1x1 branch, False = identity
    eps: tuple[float, ...]  # explicit terms, then Gram terms
    stride: int
    groups: int
    dilation: int
    means: list[Tensor] = field(default_factory=list)  # per BN, explicit then Gram terms
    variances: list[Tensor] = field(default_factory=list)  # biased
    count: int = 0  # values per channel


def _row(v: Tensor) -> Tensor:
    return v.view(1, -1, 1, 1)


def _moments(z: Tensor, n: int) -> tuple[Tensor, Tensor]:
    mu = channel_sums(z) / n
    return mu, (channel_sums(z * z) / n - mu.square()).clamp_(min=0)


class _FastDenseSum(torch.autograd.Function):
    """y = sum_b BN_b(conv(x, W_b)) [+ BN_id(x)], batch statistics, as described above. Inputs after
    ``plan``, ``eye`` (the identity's 1x1 weight, when a Gram term) and ``x``: per explicit conv branch
    (W, gamma, beta), the explicit identity's (gamma, beta), then per Gram term (W or None, gamma, beta)."""

    @staticmethod
    def forward(ctx: Any, plan: _Plan, eye: Tensor | None, x: Tensor, *params: Tensor | None) -> Tensor:
        nc, s, groups = len(plan.paddings), plan.stride, plan.groups
        conv_w = cast(list[Tensor], list(params[0 : 3 * nc : 3]))
        gammas = cast(list[Tensor], list(params[1 : 3 * nc : 3]))
        betas = cast(list[Tensor], list(params[2 : 3 * nc : 3]))
        rest = params[3 * nc :]
        if plan.explicit_identity:
            gammas.append(cast(Tensor, rest[0]))
            betas.append(cast(Tensor, rest[1]))
            rest = rest[2:]
        zs = [F.conv2d(x, w, None, s, pad, plan.dilation, groups) for w, pad in zip(conv_w, plan.paddings)]
        zs += [x] if plan.explicit_identity else []
        n = x.shape[0] * ((x.shape[2] - 1) // s + 1) * ((x.shape[3] - 1) // s + 1)  # every branch's output size
        moments = [_moments(z, n) for z in zs]
        means, variances = [m for m, _ in moments], [v for _, v in moments]
        ts = [gm * torch.rsqrt(v + e) for gm, v, e in zip(gammas, variances, plan.eps)]
        bias = sum(beta - t * mu for beta, t, mu in zip(betas, ts, means))
        xs = s_x = gram = w_eff = None
        gram_w: list[Tensor] = []
        if plan.gram_weighted:
            xs = x if s == 1 else x[:, :, ::s, ::s].contiguous(memory_format=memory_format_of(x))
            gram_w = [eye if w is None else w for w in cast(list[Tensor], list(rest[0::3]))]
            s_x, gram = channel_sums(xs), input_gram(xs, groups)
            g_means, g_vars, g_ts = pointwise_stats(
                gram_w, cast(list[Tensor], list(rest[1::3])), plan.eps[len(zs) :], s_x, gram, n)
            w_eff, b_eff = folded(gram_w, g_ts, g_means, cast(list[Tensor], list(rest[2::3])))
            y = F.conv2d(xs, w_eff, b_eff + bias, groups=groups)
            means, variances, ts = means + g_means, variances + g_vars, ts + g_ts
        else:
            assert isinstance(bias, Tensor)
            y = torch.addcmul(_row(bias), zs[0], _row(ts[0])).contiguous(memory_format=memory_format_of(zs[0]))
            zs_rest, ts_rest = zs[1:], ts[1:]
        for z, t in zip(zs if plan.gram_weighted else zs_rest, ts if plan.gram_weighted else ts_rest):
            y.addcmul_(z, _row(t))
        plan.means, plan.variances, plan.count = means, variances, n
        ctx.plan = plan
        ctx.save_for_backward(x, *zs[:nc], *conv_w, *ts, *means, *variances,
                              *([xs, s_x, gram, w_eff, *gram_w] if plan.gram_weighted else []))
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        plan: _Plan = ctx.plan
        nc, ne, s, groups, n = len(plan.paddings), len(plan.paddings) + plan.explicit_identity, plan.stride, \
            plan.groups, plan.count
        nt = ne + len(plan.gram_weighted)
        x, *saved = ctx.saved_tensors
        zs, conv_w = saved[:nc], saved[nc : 2 * nc]
        ts, means, variances = saved[2 * nc : 2 * nc + nt], saved[2 * nc + nt : 2 * nc + 2 * nt], \
            saved[2 * nc + 2 * nt : 2 * nc + 3 * nt]
        g = g.contiguous(memory_format=memory_format_of(x))
        sum_g = channel_sums(g)
        dx: Tensor | None = None
        grads: list[Tensor | None] = []
        for b, z in enumerate([*zs, x] if plan.explicit_identity else zs):
            t, mu, inv = ts[b], means[b], torch.rsqrt(variances[b] + plan.eps[b])
            k = channel_sums(g * z) - mu * sum_g  # sum(g * (z - mu))
            e = -t * inv.square() * k / n
            c = -t * sum_g / n - e * mu
            dz = torch.addcmul(_row(c), z, _row(e)).contiguous(memory_format=memory_format_of(z)).addcmul_(g, _row(t))
            if b < nc:
                dxb, dw = torch.ops.aten.convolution_backward(
                    dz, x, conv_w[b], None, [s, s], list(plan.paddings[b]), [plan.dilation] * 2, False, [0, 0],
                    groups, [True, True, False],
                )[:2]
                grads.append(dw)
            else:
                dxb = dz
            grads.extend([k * inv, sum_g])
            dx = dxb if dx is None else dx.add_(dxb)
        if plan.gram_weighted:
            xs, s_x, gram, w_eff, *gram_w = saved[2 * nc + 3 * nt :]
            dxg, corr = torch.ops.aten.convolution_backward(
                g, x, w_eff, None, [s, s], [0, 0], [1, 1], False, [0, 0], groups, [True, True, False],
            )[:2]
            mix, const, g_grads = pointwise_grads(
                gram_w, list(plan.gram_weighted), list(ts[ne:]), list(means[ne:]), list(variances[ne:]),
                plan.eps[ne:], s_x, gram, corr, sum_g, n,
            )
            part = F.conv2d(xs, mix.reshape(-1, mix.shape[-1], 1, 1), const, groups=groups)
            (dxg if s == 1 else dxg[:, :, ::s, ::s]).add_(part)
            dx = dxg if dx is None else dx.add_(dxg)
            grads.extend(g_grads)
        return (None, None, dx, *grads)


#: Widest group input (``in_channels / groups``) whose 1x1 branches and identity take their statistics
#: from x's Gram: the Gram and the mixing conv cost two 1x1 convs (``C_in`` MACs per output value)
#: and save about four elementwise passes, so they pay off for narrow inputs only (measured, issue 12).
GRAM_MAX_CHANNELS = 64


def applies_dense(module: BranchConv, x: Tensor) -> bool:
    """Whether `fast_dense_sum` computes ``module``'s train-mode forward exactly for input ``x``."""
    branches = conv_bn_branches(module)
    bns = [b.bn for b in branches] + ([module.identity] if module.identity is not None else [])
    depthwise = module.groups == module.in_channels == module.out_channels
    pointwise = module.stride == 1 and module.kernel_size == (1, 1)
    return (
        module.training and x.dim() == 4 and x.shape[1] == module.in_channels and not depthwise
        and not pointwise and len(bns) >= 2 and in_scope(x, bns, [b.conv for b in branches])
    )


def fast_dense_sum(module: BranchConv, x: Tensor, *, gram: bool | None = None) -> Tensor:
    """Train-mode forward of a dense `BranchConv` (see `applies_dense`); updates running statistics.

    ``gram``: the 1x1 branches and the identity from x's Gram (else explicit, like the kxk branches);
    None: where the group input is at most `GRAM_MAX_CHANNELS` wide.
    """
    if gram is None:
        gram = module.in_channels // module.groups <= GRAM_MAX_CHANNELS
    convs = [b for b in conv_bn_branches(module) if not (gram and b.conv.kernel_size == (1, 1))]
    pointwise = [b for b in conv_bn_branches(module) if gram and b.conv.kernel_size == (1, 1)]
    identity = module.identity
    bns = [as_batch_norm(b.bn) for b in convs]
    params: list[Tensor | None] = []
    for b in convs:
        params.extend([b.conv.weight, as_batch_norm(b.bn).weight, as_batch_norm(b.bn).bias])
    if identity is not None and not gram:
        bns.append(identity)
        params.extend([identity.weight, identity.bias])
    for b in pointwise:
        bns.append(as_batch_norm(b.bn))
        params.extend([b.conv.weight, as_batch_norm(b.bn).weight, as_batch_norm(b.bn).bias])
    eye = None
    if identity is not None and gram:
        bns.append(identity)
        params.extend([None, identity.weight, identity.bias])
        eye = identity_weight(module.out_channels, module.groups, x)
    plan = _Plan(
        paddings=tuple((int(b.conv.padding[0]), int(b.conv.padding[1])) for b in convs),
        explicit_identity=identity is not None and not gram,
        gram_weighted=tuple([True] * len(pointwise) + ([False] if identity is not None and gram else [])),
        eps=tuple(bn.eps for bn in bns), stride=module.stride, groups=module.groups, dilation=module.dilation,
    )
    y = _FastDenseSum.apply(plan, eye, x, *params)
    update_running_stats(bns, plan.means, plan.variances, plan.count)
    assert isinstance(y, Tensor)
    return y

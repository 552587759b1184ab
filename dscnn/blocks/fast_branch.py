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

Moment mode (kernels up to 3x3, undilated: RepSO, RepASO set J; issue 12): the per-branch passes
above go too. Every kernel branch is ``z_b = w_b . patch(x)``, so with the per-channel patch Gram
``Sigma = sum_p patch(p) patch(p)^T`` (9x9): ``sum z_b^2 = w_b^T Sigma w_b`` (forward statistics)
and ``corr(x, z_b) = Sigma w_b`` (weight gradient) need no pass, and ``sum_b conv^T(z_b, e_b w_b)``
is ONE 5x5 depthwise conv of x with the kernel collected from ``sum_b e_b w_b w_b^T``, exact up to
terms on the border lines that go through the zero-padded intermediate (subtracted as 1D convs of
those lines). Sigma is the 5x5 autocorrelation of x (three 3x3 weight-gradient passes: oneDNN's
5x5 one is ~9x slower) minus the same border terms. Measured on one RepSO at 64 ch, 32x32, batch
64, channels_last, 1 thread (busy machine): reference 420 ms, per-branch fast path 270 ms, moment
mode 93 ms per forward + backward.

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
#: Largest kernel side for which the kernel branches run from the patch Gram (`_patch_gram`,
#: `_moment_mix`); larger kernels (and dilated ones) take one pass per branch instead. The moment
#: code handles radii <= 1 only, so this is at most 3 (0 switches it off: tests compare both).
MOMENT_MAX_KERNEL = 3


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
    moments: bool = False  # kernel branches' statistics and backward from the patch Gram (see `_patch_gram`)
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


def _tap_offsets(size: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor]:
    """Row and column offset of every tap of a centred ``size`` kernel, row-major: (D,), (D,)."""
    rh, rw = size[0] // 2, size[1] // 2
    dr = torch.arange(size[0], device=device).repeat_interleave(size[1]) - rh
    dc = torch.arange(size[1], device=device).repeat(size[0]) - rw
    return dr, dc


def _border_lines(x: Tensor, size: tuple[int, int]) -> list[tuple[int, int, Tensor, tuple[int, int]]]:
    """The lines of x next to the zero padding: (axis 0=row/1=column, sign of the tap offset that
    reaches it from the ring outside, the line as a (N, C, 1, W) or (N, C, H, 1) view, its slice start)."""
    h, w = x.shape[2], x.shape[3]
    lines = []
    if size[0] // 2:
        lines += [(0, 1, x[:, :, :1, :], (0, 0)), (0, -1, x[:, :, h - 1 :, :], (h - 1, 0))]
    if size[1] // 2:
        lines += [(1, 1, x[:, :, :, :1], (0, 0)), (1, -1, x[:, :, :, w - 1 :], (0, w - 1))]
    return lines


def _corners(x: Tensor, size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """(row, column, row offset, column offset) of the four corners when both kernel radii are 1."""
    if not (size[0] // 2 and size[1] // 2):
        return []
    h, w = x.shape[2] - 1, x.shape[3] - 1
    return [(0, 0, 1, 1), (0, w, 1, -1), (h, 0, -1, 1), (h, w, -1, -1)]


def _autocorrelation(x: Tensor, lags: list[Tensor]) -> Tensor:
    """``A[c, 2 + a, 2 + b] = sum_q x(q) x(q + (a, b))`` for |a|, |b| <= 2 (zero padding): (C, 5, 5).

    oneDNN's depthwise weight gradient is fast for an undilated 3x3 kernel only (5x5: ~9x slower
    here), so A comes from three 3x3 ones: ``corr(x, x)`` gives the lags in [-1, 1]^2, and
    ``corr(x, x(. + s))`` for s = (1, 1) and (1, -1) the lags ``delta' - s`` (plus the terms of the
    border line that the shifted copy cut off: the rows' and columns' own 1D lags, ``lags`` in
    `_border_lines` order: top, bottom, left, right); the rest by symmetry ``A(-d) = A(d)``.
    """
    h, w = x.shape[2], x.shape[3]
    top, _, left, right = lags
    auto = x.new_empty((x.shape[1], 5, 5))
    auto[:, 1:4, 1:4] = _weight_grad(x, x, (3, 3), 1)[:, 0]
    for sc, side, col in ((1, left, 0), (-1, right, w - 1)):
        shifted = torch.empty_like(x)  # shifted(p) = x(p + (1, sc)), zero outside
        shifted[:, :, h - 1 :].zero_()
        if sc == 1:
            shifted[:, :, : h - 1, w - 1 :].zero_()
            shifted[:, :, : h - 1, : w - 1].copy_(x[:, :, 1:, 1:])
        else:
            shifted[:, :, : h - 1, :1].zero_()
            shifted[:, :, : h - 1, 1:].copy_(x[:, :, 1:, : w - 1])
        part = _weight_grad(x, shifted, (3, 3), 1)[:, 0]  # [1 + d'] = A(d' - (1, sc)), d' in [-1, 1]^2
        part[:, 2, :] += top[:, 1 - sc : 4 - sc]  # row 0 (cut off by the shift): its lags at delta_r = 0
        part[:, :, 1 + sc] += side[:, 0:3]  # column 0 or W-1 (cut off): its lags at delta_c = 0
        part[:, 2, 1 + sc] -= x[:, :, 0, col].square().sum(0)  # their corner, added twice
        auto[:, 0:3, 1 - sc : 4 - sc] = part
    auto[:, 3:] = auto[:, :2].flip(1, 2)
    return auto


def _patch_gram(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``Sigma[c, i, j] = sum over the output grid p of x(p + d_i) x(p + d_j)`` (zero padding): (C, D, D).

    Kernel radii <= 1. Summed over the output grid padded by the radius, the sum is the plain
    autocorrelation ``A(d_j - d_i)`` of x (one depthwise weight-gradient pass with a 5x5 "kernel");
    the padding ring's part, subtracted, only touches the border lines of x: a 1D autocorrelation
    of each border row (full padded width) and column (full padded height), and the four corners
    that both of those subtract.
    """
    rh, rw = size[0] // 2, size[1] // 2
    dr, dc = _tap_offsets(size, x.device)
    ir, ic = dr.view(1, -1) - dr.view(-1, 1), dc.view(1, -1) - dc.view(-1, 1)  # d_j - d_i, (D, D)
    lags = [
        _weight_grad(line, line, (1, 4 * rw + 1) if axis == 0 else (4 * rh + 1, 1), 1).flatten(1)  # (C, 4r+1)
        for axis, _, line, _ in _border_lines(x, size)
    ]
    auto = _autocorrelation(x, lags) if rh and rw else _weight_grad(x, x, (4 * rh + 1, 4 * rw + 1), 1)[:, 0]
    gram = auto[:, ir + 2 * rh, ic + 2 * rw]
    for (axis, sign, _, _), lag in zip(_border_lines(x, size), lags):
        if axis == 0:
            mask = (dr.view(-1, 1) == sign) & (dr.view(1, -1) == sign)
            gram = gram - lag[:, ic + 2 * rw] * mask
        else:
            mask = (dc.view(-1, 1) == sign) & (dc.view(1, -1) == sign)
            gram = gram - lag[:, ir + 2 * rh] * mask
    for r, c, sr, sc in _corners(x, size):
        tap = (sr + rh) * size[1] + (sc + rw)
        gram[:, tap, tap] += x[:, :, r, c].square().sum(0)
    return gram


def _add_border(out: Tensor, delta: Tensor, size: tuple[int, int]) -> None:
    """``out += delta`` on the lines within a kernel radius (<= 1) of the border; ``delta`` is zero elsewhere."""
    h, w = out.shape[2], out.shape[3]
    rh, rw = size[0] // 2, size[1] // 2
    if h <= 2 * rh or w <= 2 * rw:
        out.add_(delta)
        return
    if rh:
        out[:, :, :rh].add_(delta[:, :, :rh])
        out[:, :, h - rh :].add_(delta[:, :, h - rh :])
    if rw:
        out[:, :, rh : h - rh, :rw].add_(delta[:, :, rh : h - rh, :rw])
        out[:, :, rh : h - rh, w - rw :].add_(delta[:, :, rh : h - rh, w - rw :])


def _moment_mix(x: Tensor, mix: Tensor, size: tuple[int, int], bias: Tensor | None = None) -> Tensor:
    """``sum_b e_b conv^T(conv(x, w_b), w_b)`` for ``mix = sum_b e_b w_b w_b^T`` (C, D, D), radii <= 1.

    Away from the border this is one depthwise conv of x with the 5x5 kernel ``K(delta) = sum of
    mix[i, j] over d_j - d_i = delta``; on the border lines the terms through the zero-padded
    intermediate (the ring outside the grid) are subtracted, as 1D convs of those lines, and the
    corners added back (the same inclusion-exclusion as `_patch_gram`).
    """
    channels = x.shape[1]
    rh, rw = size[0] // 2, size[1] // 2
    dr, dc = _tap_offsets(size, x.device)
    ir, ic = dr.view(1, -1) - dr.view(-1, 1), dc.view(1, -1) - dc.view(-1, 1)
    kh, kw = 4 * rh + 1, 4 * rw + 1
    flat = ((ir + 2 * rh) * kw + (ic + 2 * rw)).flatten()
    kernel = mix.new_zeros((channels, kh * kw)).index_add_(1, flat, mix.flatten(1))
    out = _dwconv(x, kernel.view(channels, 1, kh, kw), 1, bias)
    for axis, sign, line, (r0, c0) in _border_lines(x, size):
        if axis == 0:
            mask = ((dr.view(-1, 1) == sign) & (dr.view(1, -1) == sign)).flatten()
            k = mix.new_zeros((channels, kw)).index_add_(1, (ic + 2 * rw).flatten()[mask], mix.flatten(1)[:, mask])
            out[:, :, r0 : r0 + 1, :] -= _dwconv(line, k.view(channels, 1, 1, kw), 1)
        else:
            mask = ((dc.view(-1, 1) == sign) & (dc.view(1, -1) == sign)).flatten()
            k = mix.new_zeros((channels, kh)).index_add_(1, (ir + 2 * rh).flatten()[mask], mix.flatten(1)[:, mask])
            out[:, :, :, c0 : c0 + 1] -= _dwconv(line, k.view(channels, 1, kh, 1), 1)
    for r, c, sr, sc in _corners(x, size):
        tap = (sr + rh) * size[1] + (sc + rw)
        out[:, :, r, c] += mix[:, tap, tap] * x[:, :, r, c]
    return out


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
        gram = _patch_gram(x, size) if plan.moments else None  # (C, D, D)
        means, variances, ts = [], [], []
        for b in range(nk):
            w = kernels[b]
            assert w is not None
            mu = (w * _crop(patches, plan.kernel_sizes[b])).sum(dim=(1, 2, 3)) / n
            if gram is not None:
                wv = _pad_to(w, size).flatten(1)  # (C, D)
                var = ((torch.bmm(gram, wv.unsqueeze(2)).squeeze(2) * wv).sum(1) / n - mu.square()).clamp_(min=0)
            else:
                z = _dwconv(x, w, d)
                z.sub_(mu.view(1, -1, 1, 1))
                var = _channel_sum(z.square_()) / n
                del z
            means.append(mu)
            variances.append(var)
        x_mean = x_var = None
        if plan.scaled:
            ch, cw = size[0] // 2, size[1] // 2
            x_mean = patches[:, 0, ch, cw] / n  # the centre tap's patch sum is sum(x)
            if gram is not None:
                sq = gram[:, (size[0] * size[1]) // 2, (size[0] * size[1]) // 2]  # sum(x * x)
            else:
                sq = _channel_sum(x * x)
            x_var = (sq / n - x_mean.square()).clamp_(min=0)
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
                              *(t for t in (x_mean, x_var) if t is not None), *(() if gram is None else (gram,)))
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
        x_stats = saved[3 + n_weights + nk + nx : 3 + n_weights + nk + nx + (2 if nx else 0)]
        gram = saved[-1] if plan.moments else None
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        g = g.contiguous(memory_format=fmt)
        n, d, size = plan.count, plan.dilation, plan.size
        sum_g = _channel_sum(g)
        corr_g = _weight_grad(x, g, size, d)  # G = corr(x, g), (C, 1, KH, KW)
        dx = _dwconv_t(g, w_eff, d)
        const_kernel = torch.zeros_like(w_eff)
        mix = None if gram is None else torch.zeros_like(gram)  # sum_b e_b w_b w_b^T, (C, D, D)
        col = lambda v: v.view(-1, 1, 1, 1)  # noqa: E731
        grads: list[Tensor | None] = []
        for b in range(nk):
            w, t, shape = weights[b], ts[b], plan.kernel_sizes[b]
            mu, var = plan.means[b], plan.variances[b]
            inv = torch.rsqrt(var + plan.eps[b])
            k = (w * _crop(corr_g, shape)).sum(dim=(1, 2, 3)) - mu * sum_g  # sum(g * (z - mu))
            e = -t * inv.square() * k / n
            c = -t * sum_g / n - e * mu
            if gram is not None and mix is not None:
                wv = _pad_to(w, size).flatten(1)
                mix += e.view(-1, 1, 1) * wv.unsqueeze(2) * wv.unsqueeze(1)
                corr_z = torch.bmm(gram, wv.unsqueeze(2)).view(w_eff.shape)  # corr(x, z_b) = Gram w_b
                dw = col(t) * _crop(corr_g, shape) + col(c) * _crop(patches, shape) + col(e) * _crop(corr_z, shape)
            else:
                z = _dwconv(x, w, d)
                dx.add_(_dwconv_t(z, w * e.view(-1, 1, 1, 1), d))
                dw = col(t) * _crop(corr_g, shape) + col(c) * _crop(patches, shape) + col(e) * _weight_grad(x, z, shape, d)
                del z
            const_kernel.add_(_pad_to(w * col(c), size))
            grads.extend([dw, k * inv, sum_g])
        if nx:
            x_grads, scale_x = _x_branch_grads(plan, x_stats, weights[nk:], ts[nk:], corr_g, sum_g, const_kernel)
            grads.extend(x_grads)
            if mix is not None:  # z_j = a_j x: its e-term a_j^2 e_j x is the centre tap of the mix
                centre = (size[0] * size[1]) // 2
                mix[:, centre, centre] += scale_x
            else:
                dx.add_(x * scale_x.view(1, -1, 1, 1))
        ones = torch.ones((1, *x.shape[1:]), dtype=x.dtype, device=x.device).contiguous(memory_format=fmt)
        const_map = _dwconv_t(ones, const_kernel, d)  # the constant part of dL/dx, (1, C, H, W)
        if mix is not None:
            # The constant map is const_kernel's sum away from the border: that part rides as the
            # bias of the mix conv (a broadcast add over a whole activation costs a pass).
            interior = const_kernel.sum(dim=(1, 2, 3))
            part = _moment_mix(x, mix, size, interior)
            _add_border(part, const_map - interior.view(1, -1, 1, 1), size)
            dx.add_(part)
        else:
            dx.add_(const_map)
        return (None, dx, *grads)


def _x_branch_grads(
    plan: _Plan, x_stats: Sequence[Tensor], weights: list[Tensor], ts: list[Tensor],
    corr_g: Tensor, sum_g: Tensor, const_kernel: Tensor,
) -> tuple[list[Tensor | None], Tensor]:
    """Gradients of the x-branches (``z = a * x``; identity: a = 1), and the per-channel factor
    ``s`` of their part ``s * x`` of dL/dx (their constant part goes into ``const_kernel``)."""
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
        moments=module.dilation == 1 and max(module.kernel_size) <= MOMENT_MAX_KERNEL,
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

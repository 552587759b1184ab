"""Patch moments: the depthwise kernel branches of a fast path without a pass per branch (issue 12).

For kernels up to 3x3, undilated (RepSO, RepASO set J, a RepMiX r=1 group), `dscnn.blocks.fast_branch`
needs no pass per branch. Every kernel branch is ``z_b = w_b . patch(x)``, so with the per-channel patch Gram
``Sigma = sum_p patch(p) patch(p)^T`` (9x9): ``sum z_b^2 = w_b^T Sigma w_b`` (forward statistics)
and ``corr(x, z_b) = Sigma w_b`` (weight gradient) need no pass, and ``sum_b conv^T(z_b, e_b w_b)``
is ONE 5x5 depthwise conv of x with the kernel collected from ``sum_b e_b w_b w_b^T``, exact up to
terms on the border lines that go through the zero-padded intermediate (subtracted as 1D convs of
those lines). Sigma is the 5x5 autocorrelation of x (two 3x3 weight-gradient passes: oneDNN's
5x5 one is ~9x slower) minus the same border terms. Measured on one RepSO at 64 ch, 32x32, batch
64, channels_last, 1 thread (busy machine): reference 420 ms, per-branch fast path 270 ms, moment
mode 93 ms per forward + backward.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dscnn.blocks.depthwise_ops import dwconv, weight_grad


def tap_offsets(size: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor]:
    """Row and column offset of every tap of a centred ``size`` kernel, row-major: (D,), (D,)."""
    rh, rw = size[0] // 2, size[1] // 2
    dr = torch.arange(size[0], device=device).repeat_interleave(size[1]) - rh
    dc = torch.arange(size[1], device=device).repeat(size[0]) - rw
    return dr, dc


@dataclass(frozen=True)
class _Geometry:
    """Index tensors of one kernel size (built once per size and device: rebuilding them cost more
    than the small algebra they index at 8x8 and 4x4)."""

    pairs: Tensor  # (D*D,): flat index of the lag d_j - d_i of tap pair (i, j) in the (4rh+1, 4rw+1) grid
    lines: tuple[tuple[Tensor, Tensor], ...]  # per border line (`border_lines` order): the tap pairs
    # that both reach it from the padding ring (flat, in D*D), and their lag along the line (1D index)
    corner_list: tuple[int, ...]  # flat D*D index of the diagonal pair of each corner's tap (`corners` order)


@functools.lru_cache(maxsize=64)
def _geometry(size: tuple[int, int], device: torch.device) -> _Geometry:
    rh, rw = size[0] // 2, size[1] // 2
    d = size[0] * size[1]
    dr, dc = tap_offsets(size, device)
    ir, ic = dr.view(1, -1) - dr.view(-1, 1), dc.view(1, -1) - dc.view(-1, 1)  # d_j - d_i, (D, D)
    pairs = ((ir + 2 * rh) * (4 * rw + 1) + (ic + 2 * rw)).flatten()
    lines = []
    for axis, sign in ([(0, 1), (0, -1)] if rh else []) + ([(1, 1), (1, -1)] if rw else []):
        offsets, along = (dr, ic + 2 * rw) if axis == 0 else (dc, ir + 2 * rh)
        mask = ((offsets.view(-1, 1) == sign) & (offsets.view(1, -1) == sign)).flatten()
        lines.append((mask.nonzero().flatten(), along.flatten()[mask]))
    taps = [(sr + rh) * size[1] + (sc + rw) for sr, sc in ((1, 1), (1, -1), (-1, 1), (-1, -1))] if rh and rw else []
    return _Geometry(pairs, tuple(lines), tuple(t * d + t for t in taps))


def border_lines(x: Tensor, size: tuple[int, int]) -> list[tuple[int, int, Tensor, tuple[int, int]]]:
    """The lines of x next to the zero padding: (axis 0=row/1=column, sign of the tap offset that
    reaches it from the ring outside, the line as a (N, C, 1, W) or (N, C, H, 1) view, its slice start)."""
    h, w = x.shape[2], x.shape[3]
    lines = []
    if size[0] // 2:
        lines += [(0, 1, x[:, :, :1, :], (0, 0)), (0, -1, x[:, :, h - 1 :, :], (h - 1, 0))]
    if size[1] // 2:
        lines += [(1, 1, x[:, :, :, :1], (0, 0)), (1, -1, x[:, :, :, w - 1 :], (0, w - 1))]
    return lines


def corners(x: Tensor, size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """(row, column, row offset, column offset) of the four corners when both kernel radii are 1."""
    if not (size[0] // 2 and size[1] // 2):
        return []
    h, w = x.shape[2] - 1, x.shape[3] - 1
    return [(0, 0, 1, 1), (0, w, 1, -1), (h, 0, -1, 1), (h, w, -1, -1)]


def line_lags(line: Tensor, axis: int, reach: int) -> Tensor:
    """``L[c, reach + d] = sum over the line of x(q) x(q + d)`` for |d| <= reach (zero padding): (C, 2 reach + 1).

    ``line`` is a (N, C, 1, W) row (axis 0) or (N, C, H, 1) column (axis 1). Products of shifted
    slices, not a weight-gradient pass: oneDNN's 1x5 weight gradient of one line costs more than
    its 3x3 one of the whole tensor (0.8 vs 0.54 ms at 320 ch, 8x8, batch 64, measured here). One
    line at a time: batching the two rows into one (N, C, 2, W) product reduced over (N, W) was
    5-10x slower than these reductions to channels (measured).
    """
    dim = 3 if axis == 0 else 2
    length = line.shape[dim]
    products = [(line.narrow(dim, 0, length - d) * line.narrow(dim, d, length - d)).sum(dim=(0, 2, 3))
                for d in range(min(reach, length - 1) + 1)]
    half = torch.stack(products, 1)  # d = 0, 1, ...
    if len(products) <= reach:  # lags beyond the line's length are zero
        half = F.pad(half, (0, reach + 1 - len(products)))
    return torch.cat([half[:, 1:].flip(1), half], 1)


def autocorrelation(x: Tensor, lags: list[Tensor]) -> Tensor:
    """``A[c, 2 + a, 2 + b] = sum_q x(q) x(q + (a, b))`` for |a|, |b| <= 2 (zero padding): (C, 5, 5).

    oneDNN's depthwise weight gradient is fast for an undilated 3x3 kernel only (5x5: ~9x slower
    here), so A comes from two 3x3 ones: ``corr(x, x(. + s))`` for s = (1, 1) and (1, -1) gives the
    lags ``delta' - s`` for delta' in [-1, 1]^2 (plus the terms of the border line that the shifted
    copy cut off: the rows' and columns' own 1D lags, ``lags`` in `border_lines` order: top,
    bottom, left, right), i.e. every lag with a row offset in [-2, 0]; the rest by symmetry
    ``A(-d) = A(d)``.
    """
    h, w = x.shape[2], x.shape[3]
    top, _, left, right = lags
    auto = x.new_empty((x.shape[1], 5, 5))
    for sc, side, col in ((1, left, 0), (-1, right, w - 1)):
        shifted = torch.empty_like(x)  # shifted(p) = x(p + (1, sc)), zero outside
        shifted[:, :, h - 1 :].zero_()
        if sc == 1:
            shifted[:, :, : h - 1, w - 1 :].zero_()
            shifted[:, :, : h - 1, : w - 1].copy_(x[:, :, 1:, 1:])
        else:
            shifted[:, :, : h - 1, :1].zero_()
            shifted[:, :, : h - 1, 1:].copy_(x[:, :, 1:, : w - 1])
        part = weight_grad(x, shifted, (3, 3), 1)[:, 0]  # [1 + d'] = A(d' - (1, sc)), d' in [-1, 1]^2
        part[:, 2, :] += top[:, 1 - sc : 4 - sc]  # row 0 (cut off by the shift): its lags at delta_r = 0
        part[:, :, 1 + sc] += side[:, 0:3]  # column 0 or W-1 (cut off): its lags at delta_c = 0
        part[:, 2, 1 + sc] -= x[:, :, 0, col].square().sum(0)  # their corner, added twice
        auto[:, 0:3, 1 - sc : 4 - sc] = part
    auto[:, 3:] = auto[:, :2].flip(1, 2)
    return auto


def patch_gram(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``Sigma[c, i, j] = sum over the output grid p of x(p + d_i) x(p + d_j)`` (zero padding): (C, D, D).

    Kernel radii <= 1. Summed over the output grid padded by the radius, the sum is the plain
    autocorrelation ``A(d_j - d_i)`` of x (one depthwise weight-gradient pass with a 5x5 "kernel");
    the padding ring's part, subtracted, only touches the border lines of x: a 1D autocorrelation
    of each border row (full padded width) and column (full padded height), and the four corners
    that both of those subtract.
    """
    rh, rw = size[0] // 2, size[1] // 2
    geo = _geometry(size, x.device)
    lags = [line_lags(line, axis, 2 * (rw if axis == 0 else rh)) for axis, _, line, _ in border_lines(x, size)]
    auto = autocorrelation(x, lags) if rh and rw else weight_grad(x, x, (4 * rh + 1, 4 * rw + 1), 1)[:, 0]
    gram = auto.flatten(1)[:, geo.pairs]  # (C, D*D)
    for (pairs, along), lag in zip(geo.lines, lags):
        gram.index_add_(1, pairs, lag[:, along], alpha=-1)
    for (r, c, _, _), pair in zip(corners(x, size), geo.corner_list):  # one by one: a gather was 2-10x slower
        gram[:, pair] += x[:, :, r, c].square().sum(0)
    d = size[0] * size[1]
    return gram.view(-1, d, d)


def add_border(out: Tensor, delta: Tensor, size: tuple[int, int]) -> None:
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


def moment_mix(x: Tensor, mix: Tensor, size: tuple[int, int], bias: Tensor | None = None) -> Tensor:
    """``sum_b e_b conv^T(conv(x, w_b), w_b)`` for ``mix = sum_b e_b w_b w_b^T`` (C, D, D), radii <= 1.

    Away from the border this is one depthwise conv of x with the 5x5 kernel ``K(delta) = sum of
    mix[i, j] over d_j - d_i = delta``; on the border lines the terms through the zero-padded
    intermediate (the ring outside the grid) are subtracted, as 1D convs of those lines, and the
    corners added back (the same inclusion-exclusion as `patch_gram`).
    """
    channels = x.shape[1]
    rh, rw = size[0] // 2, size[1] // 2
    geo = _geometry(size, x.device)
    kh, kw = 4 * rh + 1, 4 * rw + 1
    flat = mix.flatten(1)
    kernel = mix.new_zeros((channels, kh * kw)).index_add_(1, geo.pairs, flat)
    out = dwconv(x, kernel.view(channels, 1, kh, kw), 1, bias)
    for (axis, _, line, (r0, c0)), (pairs, along) in zip(border_lines(x, size), geo.lines):
        length = kw if axis == 0 else kh
        k = mix.new_zeros((channels, length)).index_add_(1, along, flat[:, pairs])
        if axis == 0:
            out[:, :, r0 : r0 + 1, :] -= dwconv(line, k.view(channels, 1, 1, kw), 1)
        else:
            out[:, :, :, c0 : c0 + 1] -= dwconv(line, k.view(channels, 1, kh, 1), 1)
    # one pixel at a time: an accumulating index_put_ of the four was 5-13x slower (measured)
    for (r, c, _, _), pair in zip(corners(x, size), geo.corner_list):
        out[:, :, r, c] += flat[:, pair] * x[:, :, r, c]
    return out

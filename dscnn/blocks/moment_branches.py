"""Moment mode of the depthwise fast path, all kernel branches at once (issue 12).

In moment mode (`dscnn.blocks.patch_moments`) every kernel branch's batch statistics and gradients
are small per-channel algebra on the patch sums ``P`` (C, D) and the patch Gram ``Sigma`` (C, D, D):
``mu_b = <w_b, P> / n``, ``sum z_b^2 = w_b^T Sigma w_b``, ``corr(x, z_b) = Sigma w_b``. The
branches' kernels are zero-padded to the largest kernel and stacked as ``W`` (C, B, D), so each of
those is ONE batched op over all B branches instead of a dozen small ops per branch: at 320
channels, 8x8, the per-branch loop cost more than the block's convolutions (measured here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dscnn.blocks.depthwise_ops import pad_kernel


def stack_padded(kernels: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
    """(C, 1, kh, kw) kernels, each centred in a zero ``size`` kernel, flattened and stacked: (C, B, D)."""
    return torch.stack([pad_kernel(w, size).flatten(1) for w in kernels], 1)


def branch_moments(stacked: Tensor, patches: Tensor, gram: Tensor, count: int) -> tuple[Tensor, Tensor, Tensor]:
    """Batch means (C, B), biased variances (C, B) of ``z_b = dwconv(x, w_b)``, and ``Sigma W`` (C, D, B).

    ``patches`` (C, D) are the patch sums of x, ``gram`` its patch Gram, ``count`` values per channel.
    """
    means = torch.bmm(stacked, patches.unsqueeze(2)).squeeze(2) / count
    sigma_w = torch.bmm(gram, stacked.transpose(1, 2))
    second = (sigma_w * stacked.transpose(1, 2)).sum(1) / count
    return means, (second - means.square()).clamp_(min=0), sigma_w


@dataclass(frozen=True)
class BranchGrads:
    """What the backward of the kernel branches needs from moment mode, all branches stacked."""

    weights: Tensor  # dL/dW_b on the padded grid, (C, B, D)
    gammas: Tensor  # dL/dgamma_b, (C, B)
    mix: Tensor  # sum_b e_b w_b w_b^T, (C, D, D): their e-terms of dL/dx (`patch_moments.moment_mix`)
    const_kernel: Tensor  # sum_b c_b w_b, (C, D): their constant part of dL/dx, as a kernel of ones


def branch_grads(
    stacked: Tensor, ts: Tensor, means: Tensor, variances: Tensor, eps: Tensor | float, patches: Tensor,
    sigma_w: Tensor, corr_g: Tensor, sum_g: Tensor, count: int,
) -> BranchGrads:
    """Kernel-branch gradients from ``G = corr(x, g)`` (C, D) and ``sum(g)`` (C,), per branch
    ``dL/dz_b = t_b g + e_b (z_b - mu_b) + ...`` rewritten as in `dscnn.blocks.fast_branch`:
    ``k_b = sum(g (z_b - mu_b)) = <w_b, G> - mu_b sum(g)``, ``e_b = -t_b k_b / (n (var_b + eps_b))``,
    ``c_b = -t_b sum(g) / n - e_b mu_b``, ``dL/dW_b = t_b G + e_b Sigma w_b + c_b P``."""
    inv = torch.rsqrt(variances + eps)
    k = torch.bmm(stacked, corr_g.unsqueeze(2)).squeeze(2) - means * sum_g.unsqueeze(1)
    e = -ts * inv.square() * k / count
    c = -ts * sum_g.unsqueeze(1) / count - e * means
    weights = (ts.unsqueeze(2) * corr_g.unsqueeze(1) + c.unsqueeze(2) * patches.unsqueeze(1)
               + e.unsqueeze(2) * sigma_w.transpose(1, 2))
    mix = torch.bmm(stacked.transpose(1, 2) * e.unsqueeze(1), stacked)
    const_kernel = torch.bmm(c.unsqueeze(1), stacked).squeeze(1)
    return BranchGrads(weights, k * inv, mix, const_kernel)

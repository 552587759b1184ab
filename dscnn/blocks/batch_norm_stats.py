"""Batch-statistics pieces every exact train-mode fast path shares (SPEC section 9, issue 12).

The fast paths (`fast_branch`, `fast_pointwise`, `fast_repmix`) compute BN batch statistics
themselves instead of running the BN modules, so they must (a) apply only where that computation is
the module's (`in_scope`), (b) reduce over (N, H, W) quickly (`channel_sums`), and (c) leave the
running statistics exactly as ``nn.BatchNorm2d.forward`` would (`update_running_stats`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from dscnn.blocks.branch_conv import BranchConv
    from dscnn.layers import ConvBN


def conv_bn_branches(module: BranchConv) -> list[ConvBN]:
    """A `BranchConv`'s kernel branches, typed (``nn.ModuleList`` holds plain modules)."""
    return [cast("ConvBN", b) for b in module.branches]


def as_batch_norm(module: nn.Module | None) -> nn.BatchNorm2d:
    """``module``, checked to be the BN a fast path's scope (`in_scope`) already required."""
    assert isinstance(module, nn.BatchNorm2d)
    return module


def memory_format_of(x: Tensor) -> torch.memory_format:
    """``channels_last`` when ``x`` is laid out so (and not also plain contiguous), else ``contiguous_format``:
    the layout a fast path gives the tensors it makes from ``x``."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def channel_sums(x: Tensor) -> Tensor:
    """``sum over (N, H, W)`` per channel; a GEMV in channels_last (much faster than a reduction there)."""
    n, c, h, w = x.shape
    if memory_format_of(x) == torch.channels_last:
        return (torch.ones((1, n * h * w), dtype=x.dtype, device=x.device) @ x.permute(0, 2, 3, 1).reshape(-1, c))[0]
    return x.sum(dim=(0, 2, 3))


def in_scope(x: Tensor, bns: Iterable[nn.Module | None], convs: Iterable[nn.Conv2d]) -> bool:
    """Whether a fast path may replace these train-mode BNs (and bias-free convs) for input ``x``:
    a 4-d float32/float64 batch with more than one value per channel, no autocast on x's device,
    every BN affine, in training mode and tracking running statistics (what the fast paths reproduce).

    Precision: the fast paths take variances as ``E[v^2] - E[v]^2`` from float sums, exact in real
    arithmetic; in float32 that is within 1e-5 of the float64 reference for inputs whose per-channel
    mean is within about two standard deviations of zero (BN outputs, ReLU'd activations), and loses
    digits beyond (review, session 4: mean 3 std -> 2e-5 on a BN weight gradient, 10 std -> 1e-5 on
    dx, 30 std -> 1e-4 on running_var). float64 is exact to 1e-10 regardless.
    """
    return (
        x.dim() == 4 and x.shape[0] * x.shape[2] * x.shape[3] > 1
        # the device's own autocast: the bare call reports CUDA's only, and under CPU autocast the
        # reference runs its convs in bf16 while the fast path would stay in float32
        and not torch.is_autocast_enabled(x.device.type) and x.dtype in (torch.float32, torch.float64)
        and all(isinstance(bn, nn.BatchNorm2d) and bn.training and bn.affine and bn.track_running_stats for bn in bns)
        and all(conv.bias is None and conv.weight.dtype == x.dtype for conv in convs)
    )


@torch.no_grad()
def update_running_stats(bns: Sequence[nn.BatchNorm2d], means: Sequence[Tensor], variances: Sequence[Tensor],
                         n: int) -> None:
    """Exactly what ``nn.BatchNorm2d.forward`` does in training mode with the given batch statistics
    (``variances`` biased, over ``n`` values per channel)."""
    if not bns:
        return
    tracked, running_means, running_vars = [], [], []
    for bn in bns:
        assert bn.num_batches_tracked is not None and bn.running_mean is not None and bn.running_var is not None
        tracked.append(bn.num_batches_tracked)
        running_means.append(bn.running_mean)
        running_vars.append(bn.running_var)
    torch._foreach_add_(tracked, 1)
    factors = [1.0 / float(t) if bn.momentum is None else bn.momentum for bn, t in zip(bns, tracked)]
    if len(set(factors)) != 1:  # mixed momenta: one BN at a time
        for i, m in enumerate(factors):
            _blend(running_means[i : i + 1], means[i : i + 1], m, 1.0)
            _blend(running_vars[i : i + 1], variances[i : i + 1], m, n / (n - 1))
        return
    # one foreach op per statistic for all BNs: a block's 5-9 BNs cost ~50 small ops one by one
    _blend(running_means, means, factors[0], 1.0)
    _blend(running_vars, variances, factors[0], n / (n - 1))


def _blend(running: list[Tensor], batch: Sequence[Tensor], momentum: float, scale: float) -> None:
    """``running = (1 - m) running + m * scale * batch``, as BatchNorm2d's own update does it."""
    values = [b.detach() for b in batch]
    if scale != 1.0:
        values = list(torch._foreach_mul(values, scale))
    torch._foreach_mul_(running, 1 - momentum)
    torch._foreach_add_(running, values, alpha=momentum)

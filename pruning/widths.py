"""Uniform target widths: one keep ratio for every prunable group, the largest whose cost meets a target.

Shared by the pruners that fix the widths up front (C-SGD, docs/design.md 6.4, and L1 magnitude, as
Torch-Pruning's ``MagnitudePruner`` prunes every layer by one ratio). A group of ``size`` channels at
ratio ``r`` keeps ``max(1, round(r * size))``. The cost is `pruning.macs.CostModel` (deploy MACs) or
anything with its interface (`pruning.latency_table.LatencyCost`, predicted ms): within a group,
which channels go does not change the cost, only how many, and the cost only grows with the ratio,
so the ratio is found by bisection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pruning.algorithm import PruningError
from pruning.groups import ChannelGroup
from pruning.macs import CostModel

__all__ = ["uniform_widths", "widths_at", "widths_macs"]


def widths_at(groups: Iterable[ChannelGroup], ratio: float) -> dict[str, int]:
    """Per group root: the width kept at keep ratio ``ratio``."""
    return {g.root: max(1, min(g.size, round(ratio * g.size))) for g in groups}


def widths_macs(cost: CostModel, widths: Mapping[str, int]) -> int:
    """Deploy MACs (or the cost's unit) with each group (by root) cut to ``widths[root]`` channels."""
    return cost.macs({root: range(width, cost.groups[root].size) for root, width in widths.items()})


def uniform_widths(
    groups: tuple[ChannelGroup, ...], cost: CostModel, target_macs: float, steps: int = 40
) -> tuple[float, dict[str, int]]:
    """The largest uniform keep ratio whose widths cost at most ``target_macs``, and those widths.

    Raises:
        PruningError: if even one channel per group costs more than the target.
    """
    floor = widths_macs(cost, widths_at(groups, 0.0))
    if floor > target_macs:
        raise PruningError(
            f"FLOPs target {target_macs / 1e6:.4g}M MACs is below {floor / 1e6:.4g}M, what remains with every "
            "prunable layer at one channel"
        )
    low, high = 0.0, 1.0  # low meets the target; high (nothing pruned) does not: the target is below it
    for _ in range(steps):
        mid = (low + high) / 2
        if widths_macs(cost, widths_at(groups, mid)) <= target_macs:
            low = mid
        else:
            high = mid
    return low, widths_at(groups, low)

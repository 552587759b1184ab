"""Per-group target widths for pruners that fix the widths up front (C-SGD, docs/design.md 6.4).

Either one uniform keep ratio for every prunable group, the largest whose deploy MACs meet the
target (bisection: the MACs of the implied widths only grow with the ratio), or per-layer keep
ratios read from a JSON file, checked against the target. A group of ``size`` channels at ratio
``r`` keeps ``max(1, round(r * size))``. The MACs come from `pruning.macs.CostModel`: within a
group, which channels go does not change the cost, only how many.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from pruning.algorithm import PruningError
from pruning.groups import OUT, ChannelGroup
from pruning.macs import CostModel


def widths_at(groups: Iterable[ChannelGroup], ratio: float) -> dict[str, int]:
    """Per group root: the width kept at keep ratio ``ratio``."""
    return {g.root: max(1, min(g.size, round(ratio * g.size))) for g in groups}


def widths_macs(cost: CostModel, widths: Mapping[str, int]) -> int:
    """Deploy MACs with each group (by root) cut to ``widths[root]`` channels."""
    return cost.macs({root: range(width, cost.groups[root].size) for root, width in widths.items()})


def uniform_widths(
    groups: tuple[ChannelGroup, ...], cost: CostModel, target_macs: float, steps: int = 40
) -> tuple[float, dict[str, int]]:
    """The largest uniform keep ratio whose widths cost at most ``target_macs``, and those widths.

    Raises:
        ValueError: if even one channel per group costs more than the target.
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


def read_ratios(path: str | Path) -> dict[str, float]:
    """Per-layer keep ratios from a JSON object ``{"layer name": ratio}``, each ratio in (0, 1]."""
    file = Path(path)
    if not file.is_file():
        raise PruningError(f"layer ratio file {str(file)!r} does not exist")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise PruningError(f"layer ratio file {str(file)!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise PruningError(f"layer ratio file {str(file)!r} must hold a non-empty JSON object {{layer name: keep ratio}}")
    for name, ratio in data.items():
        number = isinstance(ratio, (int, float)) and not isinstance(ratio, bool)
        if not (number and math.isfinite(ratio) and 0 < ratio <= 1):
            raise PruningError(f"layer ratio file {str(file)!r}: keep ratio of {name!r} must be in (0, 1], got {ratio!r}")
    return {str(k): float(v) for k, v in data.items()}


def ratio_widths(groups: tuple[ChannelGroup, ...], ratios: Mapping[str, float]) -> dict[str, int]:
    """Per group root: the width at the ratio given for its root or any conv producing its channels.

    Groups not named keep every channel. Naming a layer that produces no prunable group, or two
    producers of one group with different ratios, is a ValueError.
    """
    owner = {m.module: g for g in groups for m in g.members if m.side == OUT}
    unknown = sorted(set(ratios) - set(owner))
    if unknown:
        raise PruningError(
            f"layer ratios name {', '.join(map(repr, unknown[:5]))}, which produce no prunable channel group; "
            f"prunable group roots: {', '.join(g.root for g in groups[:8])}{' ...' if len(groups) > 8 else ''}"
        )
    chosen: dict[str, float] = {}
    for name, ratio in ratios.items():
        root = owner[name].root
        if chosen.setdefault(root, ratio) != ratio:
            raise PruningError(f"layer ratios give group {root!r} two keep ratios: {chosen[root]} and {ratio} ({name!r})")
    return {g.root: max(1, min(g.size, round(chosen.get(g.root, 1.0) * g.size))) for g in groups}

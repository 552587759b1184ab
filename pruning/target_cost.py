"""The cost a pruning target is counted in, and the width snapping against it (shared by every algorithm).

With a FLOPs target the cost is deploy MACs (`pruning.macs.CostModel`); with a latency target it is
the latency table's predicted ms (`pruning.latency_table.LatencyCost`, same interface), and a target
below what one channel per prunable layer is predicted to reach is refused before any training.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor, nn

from pruning.algorithm import PruningError
from pruning.groups import ChannelGroup
from pruning.latency_table import LatencyCost, LatencyTable, Measure, snap_widths, within
from pruning.macs import CostModel

__all__ = ["snap_to_target", "target_cost"]


def target_cost(model: nn.Module, groups: tuple[ChannelGroup, ...], example: Tensor, table: LatencyTable | None,
                target: float) -> CostModel:
    """The cost the algorithm's selection minimises for ``target`` (MACs, or ms with a ``table``)."""
    cost = CostModel(model, groups, example) if table is None else LatencyCost(table, groups)
    if table is not None and cost.min_macs() > target:
        raise PruningError(f"latency target {target:.4g} ms is below {cost.min_macs():.4g} ms, the predicted "
                           "latency with every prunable layer at one channel")
    return cost


def snap_to_target(model: nn.Module, groups: Iterable[ChannelGroup], widths: Mapping[str, int], example: Tensor,
                   measure: Measure, cost: CostModel, target: float) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Widths snapped by measurement while the cost still meets ``target``; and the changed ones, [before, after]."""
    snapped = snap_widths(model, groups, widths, example, measure, within(cost, target))
    return snapped, {r: [widths[r], w] for r, w in snapped.items() if w != widths[r]}

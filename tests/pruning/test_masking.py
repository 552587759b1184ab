"""ResRep's mask update: smallest importance first, FLOPs-target stop, granularity, one channel kept."""

from __future__ import annotations

import torch

from pruning.groups import find_groups
from pruning.macs import CostModel
from pruning.resrep.masking import update_masks
from tests.pruning.tiny import tiny_deploy

X = torch.zeros(1, 3, 32, 32)


def _setup() -> tuple[CostModel, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    model = tiny_deploy("resnet20")
    groups = find_groups(model, X).groups
    g = torch.Generator().manual_seed(0)
    importance = {gr.root: torch.rand(gr.size, generator=g) + 1 for gr in groups}
    none = {gr.root: torch.zeros(gr.size, dtype=torch.bool) for gr in groups}
    return CostModel(model, groups, X), importance, none


def test_granularity_limits_each_update_and_ranking_is_global() -> None:
    cost, importance, none = _setup()
    root = next(iter(importance))
    importance[root][[2, 5]] = 0.01  # the two least important channels anywhere
    first = update_masks(importance, none, cost, 0.5 * cost.total_macs, granularity=3)
    assert first.count == 3 and first.newly_masked == 3
    assert first.masked[root][[2, 5]].all()
    second = update_masks(importance, first.masked, cost, 0.5 * cost.total_macs, granularity=3)
    assert second.count == 6 and second.newly_masked == 3
    assert all((second.masked[r] | ~first.masked[r]).all() for r in first.masked)  # same ranking: a superset
    assert second.macs == cost.macs({r: m.nonzero().flatten().tolist() for r, m in second.masked.items()})


def test_stops_at_the_target_without_a_limit() -> None:
    cost, importance, none = _setup()
    target = 0.5 * cost.total_macs
    update = update_masks(importance, none, cost, target, granularity=None)
    assert update.macs <= target
    # one channel fewer masked would still be above the target: it stopped as soon as it got there
    last_root, last = max(
        ((r, c) for r, m in update.masked.items() for c in m.nonzero().flatten().tolist()),
        key=lambda rc: importance[rc[0]][rc[1]],
    )
    fewer = {r: [c for c in m.nonzero().flatten().tolist() if (r, c) != (last_root, last)] for r, m in update.masked.items()}
    assert cost.macs(fewer) > target


def test_keeps_one_channel_per_group_even_for_an_unreachable_target() -> None:
    cost, importance, none = _setup()
    update = update_masks(importance, none, cost, 1.0, granularity=None)
    assert all(int((~m).sum()) >= 1 for m in update.masked.values())
    assert update.macs == cost.min_macs()

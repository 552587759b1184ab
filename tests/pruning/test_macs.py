"""The analytic cost model agrees with fvcore on the pruned models it predicts, and never undercounts."""

from __future__ import annotations

import copy

import pytest
import torch

import dscnn
from pruning.groups import find_groups
from pruning.macs import CostModel
from pruning.surgery import remove_channels
from tests.pruning.tiny import tiny_deploy

X = torch.zeros(1, 3, 32, 32)


@pytest.mark.parametrize("name", ["resnet20", "dscnn_t0", "fasternet_t0"])
def test_estimate_matches_fvcore_on_pruned_copies(name: str) -> None:
    model = tiny_deploy(name)
    groups = find_groups(model, X).groups
    cost = CostModel(model, groups, X)
    assert cost.total_macs == dscnn.count_macs(model, 32) and cost.other_macs >= 0
    assert cost.macs({}) == cost.total_macs
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        removed = {gr.root: torch.randperm(gr.size, generator=g)[: gr.size // 2].tolist() for gr in groups}
        estimate = cost.macs(removed)
        actual = dscnn.count_macs(remove_channels(copy.deepcopy(model), groups, removed, X), 32)
        # convs and linears are counted exactly; only pooling etc. is held at its unpruned value
        assert 0 <= estimate - actual <= cost.other_macs
        assert estimate < cost.total_macs


def test_one_channel_always_stays() -> None:
    model = tiny_deploy("resnet20")
    groups = find_groups(model, X).groups
    cost = CostModel(model, groups, X)
    state = cost.state()
    group = groups[0]
    for c in range(group.size - 1):
        assert state.can_remove(group.root, c)
        state.remove(group.root, c)
    assert not state.can_remove(group.root, group.size - 1)
    assert not state.can_remove(group.root, 0)  # already gone
    floor = cost.min_macs()
    pruned = remove_channels(copy.deepcopy(model), groups, {gr.root: range(1, gr.size) for gr in groups}, X)
    assert floor >= dscnn.count_macs(pruned, 32) and floor < cost.total_macs / 10

"""On every registry model's deploy graph (and torchvision's resnet18 / mobilenet_v2), pruning the
masked compactor model gives the same outputs, within docs/design.md section 0's float64 tolerance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dscnn
from dscnn.external import create_bench_model, deploy_function
from pruning.resrep import ResRep
from pruning.resrep.masking import MaskUpdate
from tests.pruning.tiny import tiny_deploy

DOUBLE = torch.float64


def _prune_randomly(model: nn.Module) -> tuple[ResRep, int, int]:
    """Random compactors and masks on ``model``, then ResRep's conversion (which checks equality)."""
    x = torch.zeros(1, 3, 32, 32, dtype=DOUBLE)
    resrep = ResRep()
    resrep.prepare(model, 1e18, x, steps_per_epoch=1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for c in resrep.compactors():
            c.compactor.weight.add_(torch.randn(c.compactor.weight.shape, generator=g, dtype=DOUBLE) * 0.3)
    masked = {gr.root: torch.rand(gr.size, generator=g) < 0.4 for gr in resrep.groups}
    for gr in resrep.groups:
        masked[gr.root][0] = False  # keep one
    resrep.apply_masks(MaskUpdate(masked, 0, 0))
    estimate = resrep._masked_macs()
    with pytest.warns(UserWarning, match="not yet forgotten"):  # random rows are far from zero
        resrep.prune(model)
    return resrep, estimate, sum(int(m.sum()) for m in masked.values())


@pytest.mark.parametrize("name", dscnn.list_models())
def test_pruned_equals_masked_on_every_registry_model(name: str) -> None:
    model = tiny_deploy(name, dtype=DOUBLE)
    before = dscnn.count_macs(model, 32)
    resrep, estimate, removed = _prune_randomly(model)
    assert removed > 0 and resrep.conversion_error <= 1e-10
    after = dscnn.count_macs(model, 32)
    assert after < before and 0 <= estimate - after <= resrep.cost.other_macs
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_pruned_equals_masked_on_torchvision(name: str) -> None:
    torch.manual_seed(0)
    model = deploy_function(name)(create_bench_model(name, num_classes=10)).to(DOUBLE)
    before = dscnn.count_macs(model, 32)
    resrep, _, removed = _prune_randomly(model)
    assert removed > 0 and resrep.conversion_error <= 1e-10 and not resrep.skipped
    assert dscnn.count_macs(model, 32) < before

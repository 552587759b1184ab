"""ResRep on depthwise-coupled groups: gradual masking, exact constant folding, mask cap, internal groups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import dscnn
from pruning.resrep import ResRep, ResRepConfig
from pruning.resrep.masking import MaskUpdate
from pruning.surgery import relative_error
from tests.pruning.tiny import tiny_deploy

X = torch.zeros(1, 3, 32, 32)
HIDDEN = "stages.0.0.spatial.fused"  # dscnn_t0: expand 1x1 -> depthwise 3x3 -> project 1x1


def _prepared(name: str = "dscnn_t0", **knobs: object) -> tuple[nn.Module, ResRep]:
    model = tiny_deploy(name, dtype=torch.float64)
    resrep = ResRep(ResRepConfig(mask_interval=1000, granularity=4, warmup_epochs=100, **knobs))  # type: ignore[arg-type]
    with pytest.warns(UserWarning):
        resrep.prepare(model, 0.5 * dscnn.count_macs(model, 32), X.double(), steps_per_epoch=10)
    return model, resrep


def _mask(resrep: ResRep, root: str, channels: list[int]) -> None:
    masked = {r: m.clone() for r, m in resrep.masked.items()}
    masked[root][channels] = True
    resrep.apply_masks(MaskUpdate(masked, 0, len(channels)))


def _dw_output(model: nn.Module, name: str, x: Tensor) -> Tensor:
    seen: list[Tensor] = []
    handle = model.get_submodule(name).register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def test_masked_depthwise_channel_still_flows_after_masking() -> None:
    model, resrep = _prepared()
    group = next(g for g in resrep.groups if g.root == HIDDEN)
    assert any(m.depthwise for m in group.members)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    c = int(_dw_output(model.eval(), HIDDEN, x).std(dim=(0, 2, 3)).argmax())  # a live channel
    _mask(resrep, HIDDEN, [c])
    assert _dw_output(model.eval(), HIDDEN, x)[:, c].std() > 0  # gradual: not zeroed the moment it is masked
    optimizer = torch.optim.SGD([p for g in resrep.param_groups(model, _train()) for p in g["params"]], lr=0.01)
    model.train()
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    resrep.regularize()
    optimizer.step()
    assert _dw_output(model.eval(), HIDDEN, x)[:, c].std() > 0  # and still the step after


def _train():  # type: ignore[no-untyped-def]
    from dscnn.train import TrainConfig

    return TrainConfig(epochs=1, batch_size=2, lr=0.01, weight_decay=1e-4)


def test_zero_expand_row_folds_the_depthwise_constant_into_the_projection_bias() -> None:
    model, resrep = _prepared()
    _mask(resrep, HIDDEN, [1, 5])
    site = resrep.sites[HIDDEN][0]
    with torch.no_grad():
        site.wrapper.compactor.weight[[1, 5]] = 0.0  # the lasso has finished its job
        model.get_submodule(HIDDEN).bias[[1, 5]] = torch.tensor([0.7, 1.3], dtype=torch.float64)  # act(b) != 0
    resrep.target_macs = float("inf")  # these two masks are the whole pruning
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        masked = model.eval()(x)
    project = [m.module for g in resrep.groups if g.root == HIDDEN for m in g.members if m.side == "in"][0]
    wrapped = model.get_submodule(project)  # also a producer of the residual stream: a compactor wraps it
    bias_before = getattr(wrapped, "conv", wrapped).bias.detach().clone()
    pruned = resrep.prune(model)
    with torch.no_grad():
        out = pruned(x)
    assert relative_error(masked, out) <= 1e-10  # pruned == masked (float64 tolerance)
    assert resrep.folded_channels == 2 and resrep.hard_zeroed_channels == 0
    assert not torch.allclose(pruned.get_submodule(project).bias, bias_before)  # act(b_dw) went into it
    with torch.no_grad():  # and it matters: dropping the constant instead changes the outputs
        pruned.get_submodule(project).bias.copy_(bias_before)
        assert relative_error(masked, pruned(x)) > 1e-6
    assert pruned.get_submodule(HIDDEN).out_channels == 14


def test_masks_lift_the_granularity_cap_once_the_target_is_reached() -> None:
    model, resrep = _prepared("resnet20")
    resrep.apply_masks(MaskUpdate(resrep.masked, int(resrep.target_macs) - 1, 0))  # target reached
    resrep.step = resrep.warmup_steps + resrep._schedule().interval - 1
    calls: list[int | None] = []
    original = resrep.next_masks
    resrep.next_masks = lambda g: calls.append(g) or original(g)  # type: ignore[method-assign]
    resrep.regularize()
    assert calls == [None]


def test_internal_groups_skip_residual_streams() -> None:
    model, resrep = _prepared("resnet20", groups="internal")
    assert resrep.groups and all(len(g.dense_producers) == 1 for g in resrep.groups)
    assert any("residual stream" in why for why in resrep.skipped.values())
    everything = _prepared("resnet20")[1]
    assert len(everything.groups) > len(resrep.groups)
    with pytest.raises(ValueError, match="groups must be one of"):
        ResRepConfig(groups="streams")

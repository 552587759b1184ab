"""Issue 12 fast path for dense (and grouped) branch sums, RepVGG and dense ACB, equals the reference.

`BranchConv.forward` does not take it (measured not faster on a whole repvgg_a0 step, README), so
these tests wire it in themselves: `_wired` is the dispatch `BranchConv.forward` would do.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import dscnn.blocks.fast_dense as fast_dense
from dscnn.blocks import ACBlock, RepASO, RepVGGBlock
from dscnn.blocks.branch_conv import BranchConv
from dscnn.blocks.fast_branch import applies, branch_impl, current_branch_impl
from dscnn.blocks.fast_dense import applies_dense, fast_dense_sum
from dscnn.blocks.fast_pointwise import applies_pointwise
from tests.dscnn.test_fast_branch import _random_affine, _step, assert_fast_matches_reference

DENSE = {
    "repvgg_identity": lambda: RepVGGBlock(6, 6).conv,
    "repvgg_stride2": lambda: RepVGGBlock(4, 6, stride=2).conv,
    "repvgg_no_identity": lambda: RepVGGBlock(3, 5).conv,
    "repvgg_grouped": lambda: RepVGGBlock(8, 8, groups=2).conv,
    "repvgg_grouped_stride2": lambda: RepVGGBlock(4, 8, stride=2, groups=2).conv,
    "acb3": lambda: ACBlock(4, 5, 3),
    "acb5": lambda: ACBlock(4, 4, 5),
    "acb3_stride2_dilated": lambda: ACBlock(4, 4, 3, stride=2, dilation=2),
    "pointwise_stride2": lambda: BranchConv(4, 6, [(1, 1)] * 2, stride=2),
}


_reference_forward = BranchConv.forward


def _wired(self: BranchConv, x: torch.Tensor) -> torch.Tensor:
    if self.fused is None and self.training and current_branch_impl() == "fast" and applies_dense(self, x):
        return fast_dense_sum(self, x)
    return _reference_forward(self, x)


@pytest.fixture(autouse=True)
def wire_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BranchConv, "forward", _wired)


@pytest.fixture(params=[True, False], ids=["gram", "explicit"])
def gram_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways of taking the 1x1 branches' and identity's statistics (from x's Gram, or explicit)."""
    monkeypatch.setattr(fast_dense, "GRAM_MAX_CHANNELS", 10**6 if request.param else 0)
    return bool(request.param)


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(DENSE))
def test_dense_fast_equals_reference(name: str, dtype: torch.dtype, fmt: str, gram_mode: bool) -> None:
    torch.manual_seed(0)
    block = DENSE[name]()
    memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    x = (torch.randn(3, block.in_channels, 7, 6) + 0.5).contiguous(memory_format=memory_format)
    assert applies_dense(block.train(), x)
    assert_fast_matches_reference(block.to(memory_format=memory_format), x, dtype)


def test_dense_path_is_taken_and_keeps_the_memory_format(gram_mode: bool) -> None:
    calls: list[bool] = []
    original = fast_dense._FastDenseSum.apply

    def spy(plan, *args):
        calls.append(bool(plan.gram_weighted))
        return original(plan, *args)

    block = RepVGGBlock(4, 4).train().to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fast_dense._FastDenseSum, "apply", spy)
        y = block(x)
        with branch_impl("reference"):
            block(x)
    assert calls == [gram_mode]
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_branch_conv_itself_keeps_the_reference_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BranchConv, "forward", _reference_forward)
    calls: list[object] = []
    original = fast_dense._FastDenseSum.apply

    def spy(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(fast_dense._FastDenseSum, "apply", spy)
    RepVGGBlock(4, 4).train()(torch.randn(2, 4, 5, 5))
    assert calls == []


def test_dense_scope() -> None:
    x = torch.randn(2, 4, 6, 6)
    assert applies_dense(RepVGGBlock(4, 4).conv.train(), x)
    depthwise = RepASO(4, "3x3,1x1,id")
    assert applies(depthwise.train(), x) and not applies_dense(depthwise, x)
    assert not applies_dense(RepASO(4, "3x3,1x1", stride=2).train(), x)  # depthwise stride 2: reference
    pointwise = BranchConv(4, 4, [(1, 1)] * 2).train()
    assert applies_pointwise(pointwise, x) and not applies_dense(pointwise, x)
    assert not applies_dense(BranchConv(4, 4, [(3, 3)]).train(), x)  # one plain conv-BN: nothing to fuse
    assert not applies_dense(RepVGGBlock(4, 4).conv.eval(), x)
    no_affine = RepVGGBlock(4, 4).conv.train()
    no_affine.identity = nn.BatchNorm2d(4, affine=False)
    assert not applies_dense(no_affine, x)
    untracked = RepVGGBlock(4, 4).conv.train()
    untracked.branches[1].bn = nn.BatchNorm2d(4, track_running_stats=False)
    assert not applies_dense(untracked, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not applies_dense(RepVGGBlock(4, 4).conv.train(), x)
    assert not applies_dense(RepVGGBlock(4, 4).conv.train(), x.half())
    assert not applies_dense(RepVGGBlock(4, 4).conv.train(), torch.randn(1, 4, 1, 1))  # one value per channel


def test_two_steps_and_momentum_none(gram_mode: bool) -> None:
    torch.manual_seed(0)
    block = RepVGGBlock(4, 4).conv.double()
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: uses num_batches_tracked
    fast, ref = copy.deepcopy(block), copy.deepcopy(block)
    for i in range(2):
        x = torch.randn(2, 4, 5, 5, dtype=torch.float64) * (i + 1) + i
        grad = torch.randn(2, 4, 5, 5, dtype=torch.float64)
        _step(fast, x, grad, "fast")
        _step(ref, x, grad, "reference")
    for (name, a), b in zip(fast.named_buffers(), ref.buffers()):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), name


def test_different_eps(gram_mode: bool) -> None:
    torch.manual_seed(0)
    block = RepVGGBlock(4, 4).conv
    for i, bn in enumerate(m for m in block.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.eps = 10.0 ** -(i + 1)
    assert_fast_matches_reference(block, torch.randn(2, 4, 5, 5), torch.float64)


def test_repvgg_model_step_matches_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole tiny RepVGG train step (stride-1, stride-2 and identity blocks) equals the reference."""
    from dscnn import create_model

    taken: list[bool] = []

    def counted(self: BranchConv, x: torch.Tensor) -> torch.Tensor:
        taken.append(self.training and current_branch_impl() == "fast" and applies_dense(self, x))
        return _wired(self, x)

    monkeypatch.setattr(BranchConv, "forward", counted)

    torch.manual_seed(0)
    model = create_model("repvgg_a0", num_classes=3, resolution=32, depths=(1, 1, 2, 1, 1),
                         width_multipliers=(0.125, 0.0625)).double().train()
    _random_affine(model, 0)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    grads: dict[str, dict[str, torch.Tensor]] = {}
    buffers: dict[str, dict[str, torch.Tensor]] = {}
    for impl in ("fast", "reference"):
        m = copy.deepcopy(model)
        with branch_impl(impl):
            nn.functional.cross_entropy(m(x), y).backward()
        grads[impl] = {k: p.grad for k, p in m.named_parameters() if p.grad is not None}
        buffers[impl] = dict(m.named_buffers())
    scale = max(float(g.abs().max()) for g in grads["reference"].values())
    blocks = sum(isinstance(m, BranchConv) for m in model.modules())
    assert taken == [True] * blocks + [False] * blocks  # the fast step took the dense path in every block
    assert len(grads["fast"]) == len(list(model.parameters()))
    for k, g in grads["fast"].items():
        assert float((g - grads["reference"][k]).abs().max()) <= 1e-10 * scale, k
    for k, b in buffers["fast"].items():
        assert torch.allclose(b.double(), buffers["reference"][k].double(), rtol=1e-10, atol=1e-12), k

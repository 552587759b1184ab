"""Issue 12 fast paths: grouped-1x1 branch sums (RefCO) and the patch-moment depthwise path equal the reference."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import dscnn.blocks.fast_branch as fast_branch
from dscnn.blocks import RepASO, RepSO
from dscnn.blocks.branch_conv import BranchConv
from dscnn.blocks.depthwise_ops import weight_grad
from dscnn.blocks.fast_branch import branch_impl
from dscnn.blocks.fast_pointwise import applies_pointwise
from dscnn.blocks.patch_moments import autocorrelation, border_lines, line_lags
from dscnn.blocks.refco import RefCO
from tests.dscnn.test_fast_branch import _random_affine, _rel, _step, assert_fast_matches_reference

POINTWISE = {
    "refco_expand_first": lambda: RefCO(16, 32, reduction=2).first,
    "refco_expand_second": lambda: RefCO(16, 32, reduction=2).second,
    "refco_project_first_3_branches": lambda: RefCO(32, 16, reduction=2, branches=3).first,
    "refco_project_second_3_branches": lambda: RefCO(32, 16, reduction=2, branches=3).second,
    "dense_two_branches": lambda: BranchConv(5, 7, [(1, 1)] * 2),
    "grouped_with_identity": lambda: BranchConv(8, 8, [(1, 1)] * 2, groups=2, identity=True),
    "one_branch_and_identity": lambda: BranchConv(6, 6, [(1, 1)], identity=True),
}


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(POINTWISE))
def test_pointwise_fast_equals_reference(name: str, dtype: torch.dtype, fmt: str) -> None:
    torch.manual_seed(0)
    block = POINTWISE[name]()
    memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    x = (torch.randn(3, block.in_channels, 5, 6) + 0.5).contiguous(memory_format=memory_format)
    assert applies_pointwise(block.train(), x)
    assert_fast_matches_reference(block.to(memory_format=memory_format), x, dtype)


def test_pointwise_scope() -> None:
    x = torch.randn(2, 4, 5, 5)
    assert not applies_pointwise(BranchConv(4, 4, [(1, 1)]).train(), x)  # one plain conv-BN: nothing to fuse
    assert not applies_pointwise(BranchConv(4, 4, [(1, 1)] * 2, stride=2).train(), x)
    assert not applies_pointwise(BranchConv(4, 4, [(3, 3), (1, 1)]).train(), x)
    assert not applies_pointwise(BranchConv(4, 4, [(1, 1)] * 2).eval(), x)


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_refco_whole_in_both_formats(fmt: str) -> None:
    """Both stages and the shuffle between them (channels_last uses torch.channel_shuffle)."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    block = RefCO(16, 32, reduction=2).train()
    _random_affine(block, 0)
    x = (torch.randn(4, 16, 6, 6, dtype=torch.float64) + 0.5).contiguous(memory_format=memory_format)
    grad = torch.randn(4, 32, 6, 6, dtype=torch.float64)
    fast, ref = copy.deepcopy(block).double().to(memory_format=memory_format), copy.deepcopy(block).double()
    y_fast, dx_fast = _step(fast, x, grad, "fast")
    y_ref, dx_ref = _step(ref, x.contiguous(), grad, "reference")
    assert y_fast.is_contiguous(memory_format=memory_format)
    assert _rel(y_fast, y_ref) <= 1e-10 and _rel(dx_fast, dx_ref) <= 1e-10
    # absolute bound: the first stage's BN-bias gradients are ~0 (the second stage's BNs centre it)
    scale = max(float(q.grad.abs().max()) for q in ref.parameters() if q.grad is not None)
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert p.grad is not None and q.grad is not None
        assert float((p.grad - q.grad).abs().max()) <= 1e-10 * scale, name
    for (name, b), c in zip(fast.named_buffers(), ref.buffers()):
        assert torch.allclose(b, c, rtol=1e-10, atol=1e-12), name


@pytest.mark.parametrize("hw", [(1, 2), (2, 1), (2, 2), (3, 5), (6, 4)])
def test_autocorrelation_from_two_shifted_3x3_passes(hw: tuple[int, int]) -> None:
    x = torch.randn(3, 4, *hw, dtype=torch.float64)
    lines = border_lines(x, (3, 3))
    lags = [weight_grad(line, line, (1, 5) if axis == 0 else (5, 1), 1).flatten(1) for axis, _, line, _ in lines]
    expected = weight_grad(x, x, (5, 5), 1)[:, 0]
    assert torch.allclose(autocorrelation(x, lags), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("length", [1, 2, 3, 6])
@pytest.mark.parametrize("axis", [0, 1])
def test_line_lags_match_the_weight_gradient_pass(axis: int, length: int) -> None:
    shape = (3, 4, 1, length) if axis == 0 else (3, 4, length, 1)
    line = torch.randn(*shape, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    kernel = (1, 5) if axis == 0 else (5, 1)
    expected = weight_grad(line, line, kernel, 1).flatten(1)
    assert torch.allclose(line_lags(line, axis, 2), expected, rtol=0, atol=1e-12)


MOMENT_SETS = ["3x3*3,1x3,3x1,1x1,id", "1x3", "3x1,1x1", "1x3,3x1,id", "3x3", "1x1,id"]


@pytest.mark.parametrize("moments", [0, 3])
@pytest.mark.parametrize("text", MOMENT_SETS)
def test_moment_path_at_small_and_odd_sizes(text: str, moments: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The border corrections (rows, columns, corners) at sizes where they overlap: float64 exact."""
    monkeypatch.setattr(fast_branch, "MOMENT_MAX_KERNEL", moments)
    for hw in [(1, 2), (2, 1), (2, 3), (5, 4)]:
        for fmt in (torch.contiguous_format, torch.channels_last):
            torch.manual_seed(0)
            x = (torch.randn(2, 3, *hw) + 0.5).contiguous(memory_format=fmt)
            assert_fast_matches_reference(RepASO(3, text), x, torch.float64)


def test_moment_path_float32_realistic_size() -> None:
    torch.manual_seed(0)
    block = RepSO(8).to(memory_format=torch.channels_last)
    x = torch.relu(torch.randn(8, 8, 12, 12)).contiguous(memory_format=torch.channels_last)
    assert_fast_matches_reference(block, x, torch.float32)


def test_moment_path_is_taken_for_3x3_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    original = fast_branch._FastBranchSum.apply

    def spy(plan, *args):  # type: ignore[no-untyped-def]
        seen.append(plan.moments)
        return original(plan, *args)

    monkeypatch.setattr(fast_branch._FastBranchSum, "apply", spy)
    x = torch.randn(2, 4, 6, 6)
    for block in (RepSO(4), RepASO(4, "5x5,3x3")):
        block.train()(x)
    assert seen == [True, False]


def test_falconnet_step_matches_reference() -> None:
    """A whole tiny FalconNet train step (RefCO + RepSO fast paths together) equals the reference."""
    from dscnn import create_model

    torch.manual_seed(0)
    model = create_model("falconnet", num_classes=3, resolution=32, widths=(8, 16), depths=(1, 1),
                         spatial_ops=("repso", "repso"), head_dim=16).double().train()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    grads = {}
    for impl in ("fast", "reference"):
        m = copy.deepcopy(model)
        with branch_impl(impl):
            nn.functional.cross_entropy(m(x), y).backward()
        grads[impl] = {k: p.grad for k, p in m.named_parameters()}
        grads[impl + "_buffers"] = dict(m.named_buffers())
    scale = max(float(g.abs().max()) for g in grads["reference"].values())
    for k, g in grads["fast"].items():
        assert float((g - grads["reference"][k]).abs().max()) <= 1e-10 * scale, k
    for k, b in grads["fast_buffers"].items():
        assert torch.allclose(b.double(), grads["reference_buffers"][k].double(), rtol=1e-10, atol=1e-12), k

"""The exact fast path of `BranchConv` equals the per-branch reference in train mode (SPEC 9)."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from dscnn.blocks import ACBlock, RepASO, RepLKConv, RepSO, RepVGGBlock
from dscnn.blocks.fast_branch import applies, branch_impl, current_branch_impl

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _random_affine(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.num_features, generator=g))


def _step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    with branch_impl(impl):
        y = module(x)
    y.backward(grad)
    assert x.grad is not None
    return y.detach(), x.grad


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300))


def assert_fast_matches_reference(module: nn.Module, x: torch.Tensor, dtype: torch.dtype, seed: int = 0) -> None:
    """Output, input gradient, every parameter's gradient and every buffer after one step.

    float64: fast vs reference, both in float64, <= 1e-10. float32: the fast path in float32
    against the reference in float64 (the definition), <= 1e-5 relative, or no worse than twice
    the float32 reference's own error where that exceeds it (the gradient of a DW 1x1 branch's
    weight is ill-conditioned: BN cancels its scale up to eps, and the float32 reference misses by
    1e-5 there too).
    """
    module = module.train()
    _random_affine(module, seed)
    fast, ref = copy.deepcopy(module).to(dtype), copy.deepcopy(module).double()
    grad = torch.randn(fast(x.to(dtype)).shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    fast.load_state_dict(module.state_dict())  # undo the probe forward's running-stat update
    y_fast, dx_fast = _step(fast, x.to(dtype), grad.to(dtype), "fast")
    y_ref, dx_ref = _step(ref, x.double(), grad, "reference")
    tol = TOL[dtype]
    assert _rel(y_fast, y_ref) <= tol
    assert _rel(dx_fast, dx_ref) <= tol
    own = copy.deepcopy(module).to(dtype)  # the reference at the fast path's precision
    _step(own, x.to(dtype), grad.to(dtype), "reference")
    for (name, p), q, r in zip(fast.named_parameters(), ref.parameters(), own.parameters()):
        assert p.grad is not None and q.grad is not None and r.grad is not None, name
        bound = tol if dtype == torch.float64 else max(tol, 2 * _rel(r.grad, q.grad))
        assert _rel(p.grad, q.grad) <= bound, f"{name}: {_rel(p.grad, q.grad):.3g} > {bound:.3g}"
    for (name, b), c in zip(fast.named_buffers(), ref.buffers()):
        assert torch.allclose(b.double(), c.double(), rtol=tol, atol=tol), name


BLOCKS = {
    "repso": lambda: RepSO(6),
    "repaso_A": lambda: RepASO(5, "A"),
    "repaso_J": lambda: RepASO(4, "J"),
    "repaso_large": lambda: RepASO(4, "7x7,5x5,3x3,1x1,id"),
    "repaso_pointwise_only": lambda: RepASO(4, "1x1,id"),
    "replk": lambda: RepLKConv(4, 7, 3),
    "acb_depthwise_dilated": lambda: ACBlock(4, 4, 3, groups=4, dilation=2),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_fast_equals_reference(name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    block = BLOCKS[name]()
    x = torch.randn(3, block.in_channels, 9, 7) + 0.5
    assert applies(block.train(), x)
    assert_fast_matches_reference(block, x, dtype)


@pytest.mark.parametrize("seed", range(4))
def test_random_branch_sets(seed: int) -> None:
    rng = random.Random(seed)
    items = [f"{rng.choice([1, 3, 5])}x{rng.choice([1, 3, 5])}" for _ in range(rng.randint(1, 5))]
    text = ",".join(items + (["id"] if rng.random() < 0.5 else []))
    torch.manual_seed(seed)
    block = RepASO(3, text)
    x = torch.randn(2, 3, 8, 8)
    for dtype in (torch.float64, torch.float32):
        assert_fast_matches_reference(block, x, dtype, seed)


def test_channels_last_input() -> None:
    torch.manual_seed(0)
    block = RepASO(8, "J").to(memory_format=torch.channels_last)
    x = torch.randn(4, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    assert_fast_matches_reference(block, x, torch.float32)


def test_two_steps_and_momentum_none() -> None:
    torch.manual_seed(0)
    block = RepASO(4, "3x3,1x1,id")
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: uses num_batches_tracked
    fast, ref = copy.deepcopy(block), copy.deepcopy(block)
    for i in range(2):
        x = torch.randn(2, 4, 5, 5, dtype=torch.float32) * (i + 1)
        _step(fast, x, torch.ones(2, 4, 5, 5), "fast")
        _step(ref, x, torch.ones(2, 4, 5, 5), "reference")
    for (name, a), b in zip(fast.named_buffers(), ref.buffers()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name


def test_mixed_momenta_update_each_bn_with_its_own() -> None:
    torch.manual_seed(0)
    block = RepASO(4, "3x3,1x3,1x1,id")
    bns = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn, momentum in zip(bns, (0.1, 0.3, None, 0.05)):
        bn.momentum = momentum
    fast, ref = copy.deepcopy(block), copy.deepcopy(block)
    for i in range(2):
        x = torch.randn(2, 4, 5, 5, dtype=torch.float64) + i
        _step(fast.double(), x, torch.randn(2, 4, 5, 5, dtype=torch.float64), "fast")
        _step(ref.double(), x, torch.randn(2, 4, 5, 5, dtype=torch.float64), "reference")
    for (name, a), b in zip(fast.named_buffers(), ref.buffers()):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), name


@pytest.mark.parametrize("text", ["3x3,1x3,1x1,id", "5x5,3x3,1x1,id"])  # moment mode, per-branch mode
def test_branches_with_different_eps(text: str) -> None:
    torch.manual_seed(0)
    block = RepASO(4, text)
    for i, bn in enumerate(m for m in block.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.eps = 10.0 ** -(i + 1)
    assert_fast_matches_reference(block, torch.randn(2, 4, 5, 5), torch.float64)


@pytest.mark.parametrize("make", [lambda: RepVGGBlock(4, 4), lambda: RepASO(4, "J", stride=2),
                                  lambda: ACBlock(4, 6, 3)])
def test_out_of_scope_blocks_take_the_reference_path(make) -> None:  # type: ignore[no-untyped-def]
    block = make().train()
    conv = block.conv if isinstance(block, RepVGGBlock) else block
    assert not applies(conv, torch.randn(2, 4, 8, 8))
    y = block(torch.randn(2, 4, 8, 8))
    assert torch.isfinite(y).all()


def test_eval_mode_and_switch() -> None:
    block = RepASO(4, "J").eval()
    assert not applies(block, torch.randn(2, 4, 5, 5))
    assert current_branch_impl() == "fast"
    with branch_impl("reference"):
        assert current_branch_impl() == "reference"
    assert current_branch_impl() == "fast"
    with pytest.raises(ValueError, match="unknown branch implementation"):
        with branch_impl("nope"):
            pass


def test_large_kernels_take_the_reference_path() -> None:
    """Beyond `FAST_MAX_KERNEL` the per-branch passes cost more than the BN passes they save."""
    from dscnn.blocks.fast_branch import FAST_MAX_KERNEL

    x = torch.randn(2, 4, 16, 16)
    assert applies(RepLKConv(4, FAST_MAX_KERNEL, 3).train(), x)
    assert not applies(RepLKConv(4, FAST_MAX_KERNEL + 2, 3).train(), x)

"""The exact fast path of RepMiX equals its per-branch reference in train mode (issue 12)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import dscnn.blocks.fast_repmix as fast_repmix
from dscnn.blocks import RepMiX
from dscnn.blocks.fast_branch import branch_impl
from dscnn.blocks.fast_repmix import applies_repmix
from tests.dscnn.test_fast_branch import _step, assert_fast_matches_reference


def _repmix(channels: int, r: int, layout: str, seed: int = 0) -> RepMiX:
    """A RepMiX whose layer scale is O(1): at its 1e-5 init the mixer's gradients would hide in rounding."""
    torch.manual_seed(seed)
    block = RepMiX(channels, r, layout=layout)
    with torch.no_grad():
        block.layer_scale.copy_(1 + 0.5 * torch.randn(channels, 1, 1))
    return block.train()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["split", "parallel"])
@pytest.mark.parametrize("r", [1, 2, 3, 4])
def test_repmix_fast_equals_reference(r: int, layout: str, dtype: torch.dtype) -> None:
    block = _repmix(7, r, layout)  # 7 channels: unequal groups under the split layout
    x = torch.randn(3, 7, 9, 8) + 0.5
    assert applies_repmix(block, x)
    assert_fast_matches_reference(block, x, dtype)


@pytest.mark.parametrize("layout", ["split", "parallel"])
def test_repmix_channels_last(layout: str) -> None:
    block = _repmix(8, 3, layout).to(memory_format=torch.channels_last)
    x = (torch.randn(4, 8, 6, 6) + 0.5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert block(x).is_contiguous(memory_format=torch.channels_last)
    assert_fast_matches_reference(block, x, torch.float32)


def test_repmix_two_steps_running_statistics() -> None:
    """Each shared BN is updated once per step (momentum None counts the steps), from all its groups."""
    block = _repmix(6, 3, "split")
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    fast, ref = copy.deepcopy(block), copy.deepcopy(block)
    for i in range(2):
        x = torch.randn(2, 6, 5, 5) * (i + 1) + i
        _step(fast, x, torch.ones(2, 6, 5, 5), "fast")
        _step(ref, x, torch.ones(2, 6, 5, 5), "reference")
    for (name, a), b in zip(fast.named_buffers(), ref.buffers()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name


def test_repmix_fast_path_is_taken_and_scoped(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = fast_repmix.depthwise_bn_sum

    def spy(x, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(x.shape[1])
        return original(x, *args, **kwargs)

    monkeypatch.setattr(fast_repmix, "depthwise_bn_sum", spy)
    x = torch.randn(2, 7, 5, 5)
    _repmix(7, 3, "split")(x)
    assert calls == [3, 2, 2]  # one sum per channel group
    calls.clear()
    _repmix(7, 3, "parallel")(x)
    assert calls == [7]
    calls.clear()
    with branch_impl("reference"):
        _repmix(7, 3, "split")(x)
    block = _repmix(7, 2, "split").eval()
    assert not applies_repmix(block, x)
    block(x)
    assert calls == []
    assert not applies_repmix(_repmix(7, 2, "split"), torch.randn(1, 7, 1, 1))  # one value per channel


def test_repmix_fast_path_then_fuse() -> None:
    """Running statistics from fast-path steps fuse to a deploy conv equal to the block in eval."""
    block = _repmix(6, 3, "split")
    for _ in range(3):
        block(torch.randn(4, 6, 7, 7) * 2 + 1).sum().backward()
    block.eval()
    x = torch.randn(2, 6, 7, 7)
    with torch.no_grad():
        expected = block(x)
        block.reparameterize()
        assert torch.allclose(block(x), expected, rtol=1e-5, atol=1e-5)


def test_cpu_autocast_takes_the_reference_path() -> None:
    """Under CPU autocast the reference runs its convs in bf16: the float32 fast path must not stand in."""
    from dscnn.blocks.fast_branch import applies
    from dscnn.blocks.repaso import RepASO

    x = torch.randn(2, 6, 5, 5)
    block, aso = _repmix(6, 3, "split"), RepASO(6, "J").train()
    assert applies_repmix(block, x) and applies(aso, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not applies_repmix(block, x)
        assert not applies(aso, x)


@pytest.mark.parametrize("offset", [0.0, 2.0])
def test_repmix_float32_off_centre_input(offset: float) -> None:
    """The one-pass variances hold the float32 contract for inputs up to ~2 std off zero (see `in_scope`)."""
    block = _repmix(8, 3, "split")
    x = torch.randn(8, 8, 12, 12, generator=torch.Generator().manual_seed(3)) + offset
    assert_fast_matches_reference(block, x, torch.float32)

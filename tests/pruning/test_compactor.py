"""Compactors: identity at start, and folding into the conv before them is exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dscnn.fusion import fold_pointwise_after
from dscnn.layers import ConvBN
from pruning.resrep.compactor import CompactedConv, Compactor, zero_masked_rows
from tests.contracts import randomize_bn

DOUBLE = torch.float64


def _random_conv_bn(stride: int = 1) -> nn.Conv2d:
    """A fused ConvBN with random weights and BN statistics, in float64."""
    torch.manual_seed(0)
    block = ConvBN(5, 6, 3, stride=stride).to(DOUBLE)
    randomize_bn(block)
    block.eval().reparameterize()
    return block.conv


@pytest.mark.parametrize("bias", [True, False])
def test_fold_is_exact_on_random_conv_bn(bias: bool) -> None:
    conv = _random_conv_bn(stride=2)
    if not bias:
        conv.bias = None
    wrapped = CompactedConv(conv)
    with torch.no_grad():
        wrapped.compactor.weight.copy_(torch.randn(6, 6, 1, 1, dtype=DOUBLE))
    x = torch.randn(2, 5, 9, 9, dtype=DOUBLE)
    with torch.no_grad():
        expected = wrapped(x)
        folded = wrapped.fold()
        got = folded(x)
    assert folded is conv and (folded.bias is None) == (not bias)
    assert (got - expected).abs().max() <= 1e-12 * expected.abs().max()


def test_fold_pointwise_after_matches_two_convs() -> None:
    kernel, bias, q = torch.randn(4, 3, 3, 3, dtype=DOUBLE), torch.randn(4, dtype=DOUBLE), torch.randn(2, 4, 1, 1, dtype=DOUBLE)
    x = torch.randn(1, 3, 7, 7, dtype=DOUBLE)
    two = nn.functional.conv2d(nn.functional.conv2d(x, kernel, bias, padding=1), q)
    k2, b2 = fold_pointwise_after((kernel, bias), q)
    assert torch.allclose(nn.functional.conv2d(x, k2, b2, padding=1), two, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="cannot follow"):
        fold_pointwise_after((kernel, bias), torch.randn(2, 5, 1, 1))


def test_compactor_starts_as_identity_with_all_rows_kept() -> None:
    compactor = Compactor(7)
    x = torch.randn(2, 7, 4, 4)
    assert torch.equal(compactor(x), x)
    assert torch.equal(compactor.mask, torch.ones(7)) and torch.allclose(compactor.row_norms(), torch.ones(7))


def test_masks_zero_rows_and_channels() -> None:
    conv = _random_conv_bn()
    wrapped = CompactedConv(conv)
    wrapped.compactor.mask[torch.tensor([1, 4])] = 0
    zero_masked_rows(wrapped)
    y = wrapped(torch.randn(1, 5, 6, 6, dtype=DOUBLE))
    assert y[:, [1, 4]].abs().max() == 0 and y[:, [0, 2, 3, 5]].abs().min() > 0


def test_compactor_needs_a_dense_conv() -> None:
    with pytest.raises(ValueError, match="dense conv"):
        CompactedConv(nn.Conv2d(4, 4, 3, groups=4))

"""ConvFFN: the DW conv-BN folds, the 1x1 pair stays, widths and validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dscnn import reparameterize_model
from dscnn.blocks.ffn import ConvFFN
from tests.contracts import assert_deploy_equivalent


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels, expansion", [(5, 3.0), (8, 1.5)])
def test_deploy_equivalent(channels: int, expansion: float, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    assert_deploy_equivalent(ConvFFN(channels, expansion), torch.randn(2, channels, 10, 10), dtype)


def test_structure() -> None:
    ffn = ConvFFN(6, expansion=2.5, activation="relu")
    assert ffn.fc1.out_channels == 15 and ffn.fc2.in_channels == 15 and ffn.fc2.out_channels == 6
    assert isinstance(ffn.act, nn.ReLU)
    reparameterize_model(ffn)
    convs = [m for m in ffn.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.groups, c.bias is not None) for c in convs] == [
        ((7, 7), 6, True), ((1, 1), 1, True), ((1, 1), 1, True)
    ]
    assert ffn(torch.randn(1, 6, 9, 9)).shape == (1, 6, 9, 9)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="no hidden channels"):
        ConvFFN(4, expansion=0.1)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ConvFFN(4, kernel_size=4)
    with pytest.raises(ValueError, match="unknown activation"):
        ConvFFN(4, activation="swishy")

"""RepMiX: exact fusion into one depthwise conv, the r -> kernel mapping, and input validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dscnn import reparameterize_model
from dscnn.blocks.repmix import RepMiX, parallel_layout, split_layout
from tests.contracts import assert_deploy_equivalent, randomize_bn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [7, 8])
@pytest.mark.parametrize("r", [1, 2, 3, 4])
def test_deploy_equivalent(r: int, channels: int, dtype: torch.dtype) -> None:
    torch.manual_seed(r)
    assert_deploy_equivalent(RepMiX(channels, r), torch.randn(2, channels, 12, 12), dtype)


@pytest.mark.parametrize("r", [2, 4])
def test_parallel_layout_deploy_equivalent(r: int) -> None:
    torch.manual_seed(0)
    assert_deploy_equivalent(RepMiX(5, r, layout="parallel"), torch.randn(2, 5, 12, 12), torch.float64)


def test_split_gives_remainder_to_first_groups() -> None:
    assert split_layout(40, 3) == (((14, 3), (13, 5), (13, 7)),)
    assert split_layout(8, 4) == (((2, 3), (2, 5), (2, 7), (2, 9)),)
    assert parallel_layout(6, 2) == (((6, 3),), ((6, 5),))
    block = RepMiX(40, 3)
    assert [g.conv.kernel_size for g in block.mix[0]] == [(3, 3), (5, 5), (7, 7)]
    assert [g.conv.in_channels for g in block.mix[0]] == [14, 13, 13]


def test_deploy_is_one_mixed_depthwise_conv() -> None:
    block = RepMiX(7, 3)
    randomize_bn(block)
    reparameterize_model(block)
    conv = block.fused
    assert isinstance(conv, nn.Conv2d) and conv.bias is not None
    assert conv.kernel_size == (7, 7) and conv.groups == 7 and conv.padding == (3, 3)
    assert [type(m) for m in block.modules()] == [RepMiX, nn.Conv2d]
    w = conv.weight.detach()
    # channels 0-2 (3x3 group) and 3-4 (5x5 group) are zero outside their own kernel size
    ring3 = w[:3].clone()
    ring3[..., 2:5, 2:5] = 0
    ring5 = w[3:5].clone()
    ring5[..., 1:6, 1:6] = 0
    assert ring3.abs().max() == 0 and ring5.abs().max() == 0
    assert w[5:, :, 0, 0].abs().min() > 0  # the 7x7 group uses the full kernel


def test_near_identity_at_init() -> None:
    block = RepMiX(6, 2).eval()
    x = torch.randn(1, 6, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), x, atol=1e-3)
    assert torch.all(block.layer_scale == 1e-5)


@pytest.mark.parametrize("r", [0, 5, -1])
def test_r_out_of_range(r: int) -> None:
    with pytest.raises(ValueError, match="r must be in 1..4"):
        RepMiX(8, r)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="cannot be split into r=4"):
        RepMiX(3, 4)
    with pytest.raises(ValueError, match="unknown layout 'diagonal'"):
        RepMiX(8, 2, layout="diagonal")

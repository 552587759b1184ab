"""SCConv: SRU / CRU against straightforward references, CRU parameter formula, fusion (docs/design.md 2.3)."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from dscnn import reparameterize_model
from dscnn.blocks.scconv import CRU, SRU, SCConv
from tests.contracts import assert_deploy_equivalent


def randomize_gn(module: torch.nn.Module, seed: int = 0) -> None:
    """GN affine away from its (1, 0) init, positive gamma sum so the gate weights stay O(1/C)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(1 + 0.5 * torch.randn(m.num_channels, generator=g))
                m.bias.copy_(0.5 * torch.randn(m.num_channels, generator=g))


def sru_reference(x: Tensor, gamma: Tensor, beta: Tensor, groups: int, eps: float) -> Tensor:
    n, c, h, w = x.shape
    grouped = x.reshape(n, groups, -1)
    mean = grouped.mean(-1, keepdim=True)
    var = grouped.var(-1, unbiased=False, keepdim=True)
    normed = ((grouped - mean) / torch.sqrt(var + eps)).reshape(n, c, h, w)
    gn = normed * gamma.view(1, c, 1, 1) + beta.view(1, c, 1, 1)
    gate = torch.sigmoid(gn * (gamma / gamma.sum()).view(1, c, 1, 1))
    w1 = torch.where(gate > 0.5, 1.0, gate)
    w2 = torch.where(gate > 0.5, 0.0, gate)
    x1, x2 = w1 * x, w2 * x
    half = c // 2
    return torch.cat([x1[:, :half] + x2[:, half:], x2[:, :half] + x1[:, half:]], dim=1)


def test_sru_matches_reference() -> None:
    torch.manual_seed(0)
    sru = SRU(8, gn_groups=4).double()
    randomize_gn(sru)
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    assert sru.gn is not None
    expected = sru_reference(x, sru.gn.weight.detach(), sru.gn.bias.detach(), 4, sru.gn.eps)
    with torch.no_grad():
        torch.testing.assert_close(sru(x), expected, rtol=1e-12, atol=1e-12)
        reparameterize_model(sru)
        assert sru.gn is None and sru.is_reparameterized
        torch.testing.assert_close(sru(x), expected, rtol=1e-12, atol=1e-12)


def cru_reference(cru: CRU, x: Tensor) -> Tensor:
    up, low = x[:, : cru.up_channels], x[:, cru.up_channels :]
    up = F.conv2d(up, cru.squeeze_up.weight)
    low = F.conv2d(low, cru.squeeze_low.weight)
    y1 = F.conv2d(up, cru.gwc.weight, padding=1, groups=2) + F.conv2d(up, cru.pwc_up.weight)
    y2 = torch.cat([F.conv2d(low, cru.pwc_low.weight), low], dim=1)
    s1, s2 = y1.mean((2, 3), keepdim=True), y2.mean((2, 3), keepdim=True)
    beta1 = torch.exp(s1) / (torch.exp(s1) + torch.exp(s2))
    return beta1 * y1 + (1 - beta1) * y2


@pytest.mark.parametrize("alpha", [0.5, 0.75])
def test_cru_matches_reference_per_channel_softmax(alpha: float) -> None:
    torch.manual_seed(1)
    cru = CRU(16, 16, alpha=alpha).double()
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        y = cru(x)
        torch.testing.assert_close(y, cru_reference(cru, x), rtol=1e-12, atol=1e-12)
        # The unofficial all-2C softmax is a different operator: make sure it is not what we compute.
        up = cru.squeeze_up(x[:, : cru.up_channels])
        low = cru.squeeze_low(x[:, cru.up_channels :])
        both = torch.cat([cru.gwc(up) + cru.pwc_up(up), cru.pwc_low(low), low], dim=1)
        weighted = F.softmax(both.mean((2, 3), keepdim=True), dim=1) * both
        assert not torch.allclose(y, weighted[:, :16] + weighted[:, 16:])


@pytest.mark.parametrize("channels", [16, 32])
@pytest.mark.parametrize("alpha,ratio", [(0.5, Fraction(29, 16)), (0.75, Fraction(159, 64))])
def test_cru_parameter_formula(channels: int, alpha: float, ratio: Fraction) -> None:
    cru = CRU(channels, channels, alpha=alpha, squeeze_ratio=2, groups=2)
    assert sum(p.numel() for p in cru.parameters()) == ratio * channels**2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c_in,c_out,alpha", [(16, 16, 0.5), (16, 16, 0.75), (16, 24, 0.5)])
def test_deploy_equivalent(c_in: int, c_out: int, alpha: float, dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    block = SCConv(c_in, c_out, alpha=alpha, gn_groups=4)
    randomize_gn(block)
    x = torch.randn(2, c_in, 32, 32)
    assert block(x).shape == (2, c_out, 32, 32)
    assert_deploy_equivalent(block, x, dtype)


def test_backward_reaches_every_parameter() -> None:
    torch.manual_seed(3)
    block = SCConv(16, alpha=0.75, gn_groups=4).train()
    block(torch.randn(2, 16, 8, 8)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"channels \(15\) must be even"):
        SCConv(15, gn_groups=1)
    with pytest.raises(ValueError, match=r"divisible by gn_groups \(16\)"):
        SCConv(8)
    with pytest.raises(ValueError, match="alpha .* must be a whole number"):
        SCConv(10, alpha=0.25, gn_groups=2)
    with pytest.raises(ValueError, match="alpha"):
        SCConv(16, alpha=1.0, gn_groups=4)
    with pytest.raises(ValueError, match=r"squeeze_ratio \(2\) must divide"):
        SCConv(12, alpha=0.75, gn_groups=4)  # lower part 3 channels
    with pytest.raises(ValueError, match=r"groups \(2\) must divide"):
        SCConv(12, 12, alpha=0.5, gn_groups=4)  # squeezed upper width 3
    with pytest.raises(ValueError, match="must exceed the squeezed lower width"):
        SCConv(16, 4, gn_groups=4)


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.75])
def test_scconv_for_width_builds_every_searched_width(alpha: float) -> None:
    """Every width the search can produce (multiples of 4) gets a valid SCConv close to alpha."""
    from dscnn.blocks.scconv import scconv_for_width

    for channels in range(8, 520, 4):
        block = scconv_for_width(channels, alpha=alpha)
        up = block.cru.up_channels
        assert up % 4 == 0 and 0 < up < channels
        assert abs(up - alpha * channels) <= 2 or up in (4, channels - 2), (channels, up)
    x = torch.randn(1, 60, 5, 5)
    assert scconv_for_width(60, alpha=alpha)(x).shape == x.shape

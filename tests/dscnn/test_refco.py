"""RefCO / SF-Conv: exact fusion, full receptive range, banded = dense reference, sizes (docs/design.md 2.2)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dscnn import reparameterize_model
from dscnn.blocks.refco import RefCO, SFConv, full_range_kernel
from tests.contracts import assert_deploy_equivalent, randomize_bn

# (in, out, R, K, branches): expanding, projecting, square, explicit wider K, non-power-of-two widths,
# and one wide enough to be cut into several tiles with windows narrower than the input.
CASES = [
    (16, 32, 2, None, 2), (32, 16, 2, None, 3), (16, 16, 4, None, 1), (16, 16, 2, 9, 2), (24, 48, 3, None, 2),
    (128, 64, 4, None, 2),
]


def channel_matrix(module: nn.Module, in_channels: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The (out, in) matrix of a linear (eval-mode) channel operator, probed with unit inputs."""
    x = torch.eye(in_channels, dtype=dtype).reshape(in_channels, in_channels, 1, 1)
    with torch.no_grad():
        y = module(x)[..., 0, 0] - module(torch.zeros_like(x[:1]))[..., 0, 0]
    return y.T


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_deploy_equivalent(case: tuple[int, int, int, int | None, int], dtype: torch.dtype) -> None:
    c_in, c_out, r, k, n = case
    torch.manual_seed(0)
    assert_deploy_equivalent(RefCO(c_in, c_out, reduction=r, kernel=k, branches=n), torch.randn(2, c_in, 8, 8), dtype)


@pytest.mark.parametrize("case", CASES)
def test_deploy_keeps_two_banded_convs(case: tuple[int, int, int, int | None, int]) -> None:
    c_in, c_out, r, k, n = case
    torch.manual_seed(0)
    block = reparameterize_model(RefCO(c_in, c_out, reduction=r, kernel=k, branches=n))
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    kernel = k or full_range_kernel(c_in, c_out, r)
    mid = min(c_in, c_out) // r
    assert len(convs) == 2 and [c.out_channels for c in convs] == [mid, c_out]
    # Exactly C_out * K non-zero weights per stage: the tile padding around each band stays zero.
    assert [int((c.weight != 0).sum()) for c in convs] == [mid * min(kernel, c_in), c_out * min(kernel, mid)]


@pytest.mark.parametrize("case", CASES)
def test_full_receptive_range(case: tuple[int, int, int, int | None, int]) -> None:
    c_in, c_out, r, k, n = case
    torch.manual_seed(1)
    block = RefCO(c_in, c_out, reduction=r, kernel=k, branches=n).double()
    randomize_bn(block)
    matrix = channel_matrix(block.eval(), c_in)
    assert matrix.shape == (c_out, c_in)
    assert (matrix.abs() > 1e-12).all(), "some output channel ignores some input channel"


@pytest.mark.parametrize("c_in,c_out,r", [(16, 32, 2), (32, 16, 2), (16, 16, 4), (24, 48, 3)])
def test_full_range_kernel_is_the_smallest(c_in: int, c_out: int, r: int) -> None:
    k = full_range_kernel(c_in, c_out, r)
    mid = min(c_in, c_out) // r
    torch.manual_seed(2)
    pair = nn.Sequential(SFConv(c_in, mid, k - 1), SFConv(mid, c_out, k - 1)).double().eval()
    assert (channel_matrix(pair, c_in).abs() < 1e-300).any(), f"K={k - 1} already reaches every input"
    with pytest.raises(ValueError, match=f"smallest full-range kernel is {k}"):
        RefCO(c_in, c_out, reduction=r, kernel=k - 1)


@pytest.mark.parametrize("c_in,c_out,k", [(16, 8, 5), (8, 32, 3), (12, 12, 4), (8, 16, 20), (256, 128, 40)])
def test_banded_forward_equals_dense_reference(c_in: int, c_out: int, k: int) -> None:
    torch.manual_seed(3)
    sf = SFConv(c_in, c_out, k).double()
    randomize_bn(sf)
    sf.eval()
    band = min(k, c_in)
    weight = sf.weight[0].detach()
    dense = torch.zeros(c_out, c_in, dtype=torch.float64)
    for o in range(c_out):  # output o reads `band` channels from floor(o * C_in / C_out), wrapping
        for j in range(band):
            dense[o, (o * c_in // c_out + j) % c_in] += weight[o, j]
    assert (dense != 0).sum() == c_out * band
    x = torch.randn(2, c_in, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        expected = sf.bns[0](F.conv2d(x, dense[:, :, None, None]))
        torch.testing.assert_close(sf(x), expected, rtol=1e-12, atol=1e-12)
        reparameterize_model(sf)
        torch.testing.assert_close(sf(x), expected, rtol=1e-12, atol=1e-12)


def test_tiles_read_windows_narrower_than_the_input() -> None:
    sf = SFConv(128, 16, 16)  # 8 outputs per tile, band starts 8 apart: window 7 * 8 + 16 = 72
    assert (sf.tiles, sf.window) == (2, 72) and sf.index.tolist()[72:74] == [64, 65]
    sf = SFConv(16, 16 * 8, 7)  # expanding: 64 outputs per tile share 8 band starts: window 7 + 7
    assert (sf.tiles, sf.window) == (2, 14)


def test_train_form_gathers_and_backpropagates() -> None:
    torch.manual_seed(4)
    block = RefCO(16, 32, branches=2).train()
    block(torch.randn(2, 16, 4, 4)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="reduction R=3 must be >= 1 and divide"):
        RefCO(16, 32, reduction=3)
    with pytest.raises(ValueError, match="bottleneck 12 .* must divide both widths"):
        RefCO(24, 40, reduction=2)
    with pytest.raises(ValueError, match="one channel count must be a multiple"):
        SFConv(12, 8, 3)
    with pytest.raises(ValueError, match="kernel .* must be >= 1"):
        SFConv(8, 8, 0)

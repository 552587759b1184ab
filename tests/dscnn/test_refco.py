"""RefCO / SF-Conv: exact fusion, full receptive range, the paper's factorisation, sizes (docs/design.md 2.2)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import dscnn
from dscnn import reparameterize_model
from dscnn.blocks.refco import RefCO, refco_kernel, refco_weight_count, shuffle_index, valid_kernels
from tests.contracts import assert_deploy_equivalent, randomize_bn

# (in, out, R, K, branches): expanding, projecting, square, explicit K, R=3 with non-power-of-two
# widths, and a wide projecting one at R=4.
CASES = [
    (16, 32, 2, None, 2), (32, 16, 2, None, 3), (16, 16, 4, None, 1), (16, 16, 2, 8, 2), (24, 48, 3, None, 2),
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
def test_deploy_is_grouped_shuffle_grouped(case: tuple[int, int, int, int | None, int]) -> None:
    c_in, c_out, r, k, n = case
    torch.manual_seed(0)
    block = reparameterize_model(RefCO(c_in, c_out, reduction=r, kernel=k, branches=n))
    kernel = k or refco_kernel(c_in, c_out, r)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 and all(c.kernel_size == (1, 1) and c.bias is not None for c in convs)
    assert [c.out_channels for c in convs] == [c_in // r, c_out]
    assert [c.groups for c in convs] == [c_in // kernel, kernel // r]


@pytest.mark.parametrize("channels,expansion,reduction", [(64, 2, 2), (32, 2, 2), (96, 3, 2), (64, 1, 4), (128, 2, 4)])
def test_deploy_weight_count_is_the_formula(channels: int, expansion: int, reduction: int) -> None:
    c_out = expansion * channels
    k = refco_kernel(channels, c_out, reduction)
    deployed = reparameterize_model(RefCO(channels, c_out, reduction=reduction))
    weights = sum(m.weight.numel() for m in deployed.modules() if isinstance(m, nn.Conv2d))
    assert weights == channels * k / reduction + expansion * channels**2 / k == refco_weight_count(
        channels, c_out, reduction, k
    )
    optimum = math.sqrt(expansion * reduction * channels)
    if optimum == k:  # the paper's minimum 2*C*sqrt(λC/R), a fraction 2/sqrt(λRC) of the dense λC²
        assert weights == pytest.approx(2 * channels * math.sqrt(expansion * channels / reduction))
        assert weights / (expansion * channels**2) == pytest.approx(2 / optimum)


def test_paper_example() -> None:
    assert refco_kernel(64, 128, 2) == 16 and refco_weight_count(64, 128, 2, 16) == 512 + 512


@pytest.mark.parametrize("case", CASES)
def test_full_receptive_range(case: tuple[int, int, int, int | None, int]) -> None:
    c_in, c_out, r, k, n = case
    torch.manual_seed(1)
    block = RefCO(c_in, c_out, reduction=r, kernel=k, branches=n).double()
    randomize_bn(block)
    matrix = channel_matrix(block.eval(), c_in)
    assert matrix.shape == (c_out, c_in)
    assert (matrix.abs() > 1e-12).all(), "some output channel ignores some input channel"


@pytest.mark.parametrize("c_in,c_out,r,k", [(16, 32, 2, 8), (24, 12, 3, 6), (16, 16, 4, 4), (8, 16, 2, 8)])
def test_forward_equals_the_papers_factorisation(c_in: int, c_out: int, r: int, k: int) -> None:
    """Deploy RefCO == W2 @ W1 built from the paper's description with explicit window/slot indices."""
    torch.manual_seed(3)
    block = reparameterize_model(RefCO(c_in, c_out, reduction=r, kernel=k).double())
    first, second = block.first.fused, block.second.fused
    assert first is not None and second is not None
    windows, slots = c_in // k, k // r
    w1 = torch.zeros(windows, slots, c_in, dtype=torch.float64)  # hidden (w, j) <- input channel
    for w in range(windows):
        for j in range(slots):
            w1[w, j, w * k : (w + 1) * k] = first.weight[w * slots + j, :, 0, 0]
    per_slot = c_out // slots  # outputs of second-stage group j, each reading slot j of every window
    w2 = torch.zeros(c_out, windows, slots, dtype=torch.float64)
    for o in range(c_out):
        w2[o, :, o // per_slot] = second.weight[o, :, 0, 0]
    dense = w2.flatten(1) @ w1.flatten(0, 1)
    torch.testing.assert_close(channel_matrix(block, c_in), dense, rtol=1e-12, atol=1e-12)


def test_shuffle_index() -> None:
    assert shuffle_index(3, 2).tolist() == [0, 2, 4, 1, 3, 5]  # (w, j) = w*2 + j -> order (j, w)


def test_kernel_choice() -> None:
    assert valid_kernels(32, 64, 2) == [2, 4, 8, 16, 32]
    assert refco_kernel(64, 32, 2) == 8  # sqrt(2 * 32) = 8 exactly
    assert refco_kernel(32, 64, 2) == 8  # sqrt(128) ties between 8 and 16 (384 weights each): the smaller
    assert refco_kernel(24, 48, 3) == 12  # sqrt(144) = 12
    assert refco_kernel(40, 80, 2) == 10  # sqrt(160) = 12.6 is not valid; 10 (520 weights) beats 8 and 20 (560)
    assert refco_kernel(64, 128, 2, requested=6) == 8 and refco_kernel(64, 128, 2, requested=64) == 64


def test_train_form_backpropagates() -> None:
    torch.manual_seed(4)
    block = RefCO(16, 32, branches=2).train()
    block(torch.randn(2, 16, 4, 4)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="reduction R=3 must be >= 1 and divide"):
        RefCO(16, 32, reduction=3)
    with pytest.raises(ValueError, match=r"K=6 must divide 16.*valid K: \[2, 4, 8, 16\]"):
        RefCO(16, 32, kernel=6)
    with pytest.raises(ValueError, match="branches must be >= 1"):
        RefCO(16, 32, branches=0)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_a_deployed_falconnet_traces_with_torch_fx(memory_format: torch.memory_format) -> None:
    # the shuffle's channels_last branch must not call bool() on an fx Proxy (it once did)
    model = dscnn.create_model("falconnet", num_classes=10, resolution=32, widths=(16, 32, 64, 128),
                               depths=(1, 1, 1, 1), head_dim=32)
    deploy = dscnn.reparameterize_model(model).eval().to(memory_format=memory_format)
    traced = torch.fx.symbolic_trace(deploy)
    x = torch.randn(2, 3, 32, 32).to(memory_format=memory_format)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), deploy(x), rtol=1e-5, atol=1e-6)

"""Every function of dscnn.fusion against the un-fused computation, in float64 (docs/design.md section 1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dscnn import fusion

D = torch.float64
TOL = 1e-12


def _close(a: Tensor, b: Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= TOL * max(1.0, b.abs().max().item())


def _random_bn(channels: int, seed: int, eps: float = 1e-5) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels, eps=eps).to(D).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=g, dtype=D) * 0.5)  # type: ignore[union-attr]
        bn.running_var.copy_(torch.rand(channels, generator=g, dtype=D) * 1.8 + 0.2)  # type: ignore[union-attr]
        bn.weight.copy_(1 + 0.3 * torch.randn(channels, generator=g, dtype=D))
        bn.bias.copy_(0.3 * torch.randn(channels, generator=g, dtype=D))
    return bn


def _x(channels: int = 6, size: int = 9, seed: int = 1) -> Tensor:
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(seed), dtype=D)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_fold_bn_matches_conv_then_bn(with_bias: bool, eps: float) -> None:
    bn = _random_bn(4, seed=2, eps=eps)
    w = torch.randn(4, 6, 3, 3, dtype=D)
    b = torch.randn(4, dtype=D) if with_bias else None
    x = _x()
    ref = bn(F.conv2d(x, w, b, padding=1))
    k, c = fusion.fold_bn(w, b, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)  # type: ignore[arg-type]
    _close(F.conv2d(x, k, c, padding=1), ref)
    k2, c2 = fusion.fold_bn_module(w, b, bn)  # reads eps from the module, not a default
    _close(F.conv2d(x, k2, c2, padding=1), ref)


def test_fold_bn_without_affine() -> None:
    bn = nn.BatchNorm2d(4, affine=False).to(D).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)  # type: ignore[union-attr]
        bn.running_var.uniform_(0.5, 2)  # type: ignore[union-attr]
    w, x = torch.randn(4, 6, 1, 1, dtype=D), _x()
    k, c = fusion.fold_bn_module(w, None, bn)
    _close(F.conv2d(x, k, c), bn(F.conv2d(x, w)))


def test_fold_bn_module_needs_running_stats() -> None:
    bn = nn.BatchNorm2d(4, track_running_stats=False)
    with pytest.raises(ValueError, match="running statistics"):
        fusion.fold_bn_module(torch.randn(4, 4, 1, 1), None, bn)


@pytest.mark.parametrize(
    ("channels", "groups", "size"), [(6, 1, (3, 3)), (6, 2, (1, 1)), (6, 6, (3, 3)), (4, 4, (5, 3))]
)
def test_identity_kernel_returns_input(channels: int, groups: int, size: tuple[int, int]) -> None:
    k = fusion.identity_kernel(channels, groups, size, dtype=D, device=torch.device("cpu"))
    assert k.shape == (channels, channels // groups, *size) and k.dtype == D
    x = _x(channels)
    y = F.conv2d(x, k, padding=(size[0] // 2, size[1] // 2), groups=groups)
    assert torch.equal(y, x)


def test_identity_kernel_rejects_bad_groups() -> None:
    with pytest.raises(ValueError, match="divisible by groups"):
        fusion.identity_kernel(6, 4, (3, 3), dtype=D, device=torch.device("cpu"))


@pytest.mark.parametrize("groups", [1, 3, 6])
def test_fold_identity_bn_equals_bn(groups: int) -> None:
    bn, x = _random_bn(6, seed=3), _x()
    k, c = fusion.fold_identity_bn(bn, groups, (3, 3))
    _close(F.conv2d(x, k, c, padding=1, groups=groups), bn(x))


def test_pad_kernel_centres() -> None:
    k = torch.randn(2, 3, 1, 3, dtype=D)
    padded = fusion.pad_kernel(k, (5, 5))
    assert padded.shape == (2, 3, 5, 5)
    assert torch.equal(padded[:, :, 2:3, 1:4], k)
    outside = padded.clone()
    outside[:, :, 2:3, 1:4] = 0
    assert not outside.any()  # everything else is zero
    x = _x(3)  # a centred pad changes nothing once the padding grows with the kernel
    _close(F.conv2d(x, padded, padding=2), F.conv2d(x, k, padding=(0, 1)))


@pytest.mark.parametrize("size", [(4, 4), (2, 3), (1, 3)])
def test_pad_kernel_refuses_off_centre(size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="cannot centre"):
        fusion.pad_kernel(torch.randn(1, 1, 3, 3), size)


def test_largest_kernel_size_per_axis() -> None:
    shapes = [(1, 5), (3, 1), (3, 3)]
    assert fusion.largest_kernel_size(torch.zeros(1, 1, *s) for s in shapes) == (3, 5)


def test_sum_branches_equals_sum_of_convs() -> None:
    x = _x(4)
    shapes, dilation = [(3, 3), (1, 3), (3, 1), (1, 1), (5, 5)], 2
    branches = [(torch.randn(4, 4, *s, dtype=D), torch.randn(4, dtype=D)) for s in shapes]
    ref = sum(
        F.conv2d(x, k, b, padding=(dilation * (k.shape[2] // 2), dilation * (k.shape[3] // 2)), dilation=dilation)
        for k, b in branches
    )
    k, b = fusion.sum_branches(branches)
    assert k.shape[-2:] == (5, 5)
    _close(F.conv2d(x, k, b, padding=2 * dilation, dilation=dilation), ref)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no branches"):
        fusion.sum_branches([])


@pytest.mark.parametrize(("k", "stride"), [(3, 1), (3, 2), (5, 1)])
def test_avg_pool_kernel_matches_avg_pool(k: int, stride: int) -> None:
    x = _x(4)
    kernel = fusion.avg_pool_kernel(4, k, 4, dtype=D, device=torch.device("cpu"))
    y = F.conv2d(x, kernel, stride=stride, padding=k // 2, groups=4)
    _close(y, F.avg_pool2d(x, k, stride=stride, padding=k // 2, count_include_pad=True))


def test_avg_pool_kernel_grouped() -> None:
    x = _x(4)
    kernel = fusion.avg_pool_kernel(4, 3, 2, dtype=D, device=torch.device("cpu"))
    _close(F.conv2d(x, kernel, padding=1, groups=2), F.avg_pool2d(x, 3, 1, 1, count_include_pad=True))


@pytest.mark.parametrize(("stride", "dilation", "groups"), [(1, 1, 1), (2, 1, 2), (1, 2, 1), (2, 3, 4)])
def test_conv_from_branch_geometry(stride: int, dilation: int, groups: int) -> None:
    template = nn.Conv2d(4, 8, 3, stride=stride, dilation=dilation, groups=groups, device="meta")
    kernel, bias = torch.randn(8, 4 // groups, 5, 3, dtype=D), torch.randn(8, dtype=D)
    conv = fusion.conv_from_branch(template, (kernel, bias))
    assert conv.kernel_size == (5, 3) and conv.stride == (stride, stride) and conv.groups == groups
    assert conv.dilation == (dilation, dilation) and conv.weight.dtype == D
    x = _x(4, size=11)
    ref = F.conv2d(x, kernel, bias, stride, padding=(2 * dilation, dilation), dilation=dilation, groups=groups)
    with torch.no_grad():
        _close(conv(x), ref)


def test_scale_branch_per_channel_and_scalar() -> None:
    x = _x(4)
    k, b = torch.randn(4, 4, 3, 3, dtype=D), torch.randn(4, dtype=D)
    s = torch.randn(4, dtype=D)
    y = F.conv2d(x, k, b, padding=1)
    k2, b2 = fusion.scale_branch((k, b), s)
    _close(F.conv2d(x, k2, b2, padding=1), y * s.reshape(1, -1, 1, 1))
    k3, b3 = fusion.scale_branch((k, b), -1.0)
    _close(F.conv2d(x, k3, b3, padding=1), -y)
    with pytest.raises(ValueError, match="entries for 4 output channels"):
        fusion.scale_branch((k, b), torch.ones(3))


def test_concat_branches_is_mixed_depthwise_conv() -> None:
    x = _x(6)
    sizes, parts = [3, 5, 7], []
    for s in sizes:
        parts.append((torch.randn(2, 1, s, s, dtype=D), torch.randn(2, dtype=D)))
    ref = torch.cat(
        [F.conv2d(x[:, 2 * i : 2 * i + 2], k, b, padding=k.shape[-1] // 2, groups=2) for i, (k, b) in enumerate(parts)],
        dim=1,
    )
    k, b = fusion.concat_branches(parts)
    assert k.shape == (6, 1, 7, 7)
    _close(F.conv2d(x, k, b, padding=3, groups=6), ref)
    with pytest.raises(ValueError, match="no branches"):
        fusion.concat_branches([])

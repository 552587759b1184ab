"""Basic layers shared by every block: conv + BN as one fusable unit, and named activations."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dscnn.fusion import Branch, conv_from_branch, fold_bn_module
from dscnn.reparam import Reparameterizable

IntPair = int | tuple[int, int]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "gelu": nn.GELU,
    "silu": lambda: nn.SiLU(inplace=True),
    "hardswish": lambda: nn.Hardswish(inplace=True),
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """The activation called ``name`` (one of `ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}") from None


def _pair(value: IntPair) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def check_groups(in_channels: int, out_channels: int, groups: int, where: str = "conv") -> None:
    """Raise a clear error when channel counts are not divisible by ``groups``."""
    if groups < 1 or in_channels % groups or out_channels % groups:
        raise ValueError(
            f"{where}: in_channels={in_channels} and out_channels={out_channels} "
            f"must both be divisible by groups={groups}"
        )


class ConvBN(Reparameterizable):
    """Conv2d (no bias) followed by BatchNorm2d; fuses into one biased Conv2d.

    Padding defaults to the centred "same" padding ``dilation * (k // 2)`` per axis, which is what
    lets parallel branches of different kernel sizes add exactly (docs/design.md rule 2).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        groups: int = 1,
        dilation: IntPair = 1,
        padding: IntPair | None = None,
    ) -> None:
        super().__init__()
        check_groups(in_channels, out_channels, groups, f"ConvBN({in_channels}->{out_channels})")
        k, d = _pair(kernel_size), _pair(dilation)
        pad = _pair(padding) if padding is not None else (d[0] * (k[0] // 2), d[1] * (k[1] // 2))
        self.conv = nn.Conv2d(
            in_channels, out_channels, k, stride=stride, padding=pad, dilation=d, groups=groups, bias=False
        )
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(out_channels)

    @property
    def is_reparameterized(self) -> bool:
        return self.bn is None

    def fused_branch(self) -> Branch:
        """(kernel, bias) of this conv with BN folded, before or after `reparameterize`."""
        if self.bn is None:
            assert self.conv.bias is not None
            return self.conv.weight, self.conv.bias
        return fold_bn_module(self.conv.weight, None, self.bn)

    def reparameterize(self) -> None:
        if self.bn is None:
            return
        with torch.no_grad():
            branch = self.fused_branch()
        fused = conv_from_branch(self.conv, branch)
        fused.padding = self.conv.padding  # keep explicit non-centred padding of asymmetric branches
        self.conv = fused
        self.bn = None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return x if self.bn is None else self.bn(x)

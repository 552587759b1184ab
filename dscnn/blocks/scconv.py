"""SCConv (Li, Wen, He, "SCConv: Spatial and Channel Reconstruction Convolution for Feature
Redundancy", CVPR 2023), docs/design.md 2.3: a plug-in replacement for a 3x3 conv.

SRU (spatial reconstruction): a GroupNorm-driven gate separates informative from redundant
activations, and the two parts are cross-added between channel halves.
CRU (channel reconstruction): split channels alpha / (1 - alpha), squeeze each by r, a rich upper
path (group-wise 3x3 + point-wise 1x1) and a cheap lower path (1x1 + the squeezed input itself),
fused per channel by a 2-way softmax over their pooled outputs (beta1 + beta2 = 1 per channel).

interpretation: the fusion follows the paper's per-channel 2-way softmax, not the widely copied
unofficial one over all 2C channels. Convs carry no bias (the paper's CRU parameter count, e.g.
29/16 C^2 at alpha=1/2, has none). GroupNorm and the gate are not linear, so they stay in the
deploy form; the only exact fold is the gate's per-channel weight ``gamma / sum(gamma)`` into a copy
of the GroupNorm's affine parameters (`SRU.reparameterize`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dscnn.reparam import Reparameterizable


class SRU(Reparameterizable):
    """Spatial reconstruction unit on ``channels`` (even; divisible by ``gn_groups``)."""

    def __init__(self, channels: int, *, gn_groups: int = 16, threshold: float = 0.5) -> None:
        super().__init__()
        if channels < 2 or channels % 2:
            raise ValueError(f"SRU: channels ({channels}) must be even to split into halves")
        if gn_groups < 1 or channels % gn_groups:
            raise ValueError(f"SRU: channels ({channels}) must be divisible by gn_groups ({gn_groups})")
        self.threshold = threshold
        self.gn: nn.GroupNorm | None = nn.GroupNorm(gn_groups, channels)
        # Deploy form: GroupNorm whose affine already includes the gate weight gamma / sum(gamma).
        self.gate_norm: nn.GroupNorm | None = None

    @property
    def is_reparameterized(self) -> bool:
        return self.gate_norm is not None

    def reparameterize(self) -> None:
        if self.gn is None:
            return
        gn = self.gn
        folded = nn.GroupNorm(gn.num_groups, gn.num_channels, eps=gn.eps, device=gn.weight.device, dtype=gn.weight.dtype)
        with torch.no_grad():
            w = gn.weight / gn.weight.sum()
            # w * (gamma * xhat + beta) = (w * gamma) * xhat + w * beta: exact.
            folded.weight.copy_(gn.weight * w)
            folded.bias.copy_(gn.bias * w)
        self.gate_norm, self.gn = folded, None

    def gate_logits(self, x: Tensor) -> Tensor:
        """``w * GN(x)`` with ``w = gamma / sum(gamma)`` per channel."""
        if self.gate_norm is not None:
            return self.gate_norm(x)
        assert self.gn is not None
        w = self.gn.weight / self.gn.weight.sum()
        return self.gn(x) * w.view(1, -1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.gate_logits(x))
        informative = gate > self.threshold
        x1 = torch.where(informative, torch.ones_like(gate), gate) * x
        x2 = torch.where(informative, torch.zeros_like(gate), gate) * x
        x1a, x1b = x1.chunk(2, dim=1)
        x2a, x2b = x2.chunk(2, dim=1)
        return torch.cat([x1a + x2b, x2a + x1b], dim=1)


class CRU(nn.Module):
    """Channel reconstruction unit ``in_channels -> out_channels`` (3x3 receptive field, stride 1)."""

    def __init__(
        self, in_channels: int, out_channels: int, *, alpha: float = 0.5, squeeze_ratio: int = 2, groups: int = 2
    ) -> None:
        super().__init__()
        up, low = _split_channels(in_channels, alpha)
        r = squeeze_ratio
        if r < 1 or up % r or low % r:
            raise ValueError(
                f"CRU: squeeze_ratio ({r}) must divide both channel parts {up} (alpha*C) and {low} ((1-alpha)*C)"
            )
        if groups < 1 or (up // r) % groups or out_channels % groups:
            raise ValueError(
                f"CRU: groups ({groups}) must divide the squeezed upper width {up // r} and out_channels {out_channels}"
            )
        if out_channels <= low // r:
            raise ValueError(f"CRU: out_channels ({out_channels}) must exceed the squeezed lower width {low // r}")
        self.up_channels, self.low_channels = up, low
        self.squeeze_up = nn.Conv2d(up, up // r, 1, bias=False)
        self.squeeze_low = nn.Conv2d(low, low // r, 1, bias=False)
        self.gwc = nn.Conv2d(up // r, out_channels, 3, padding=1, groups=groups, bias=False)
        self.pwc_up = nn.Conv2d(up // r, out_channels, 1, bias=False)
        self.pwc_low = nn.Conv2d(low // r, out_channels - low // r, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.softmax = nn.Softmax(dim=0)

    def forward(self, x: Tensor) -> Tensor:
        up, low = x.split([self.up_channels, self.low_channels], dim=1)
        up, low = self.squeeze_up(up), self.squeeze_low(low)
        y1 = self.gwc(up) + self.pwc_up(up)
        y2 = torch.cat([self.pwc_low(low), low], dim=1)
        # Per-channel 2-way softmax: beta1 + beta2 = 1 for every channel (the paper's operator).
        beta = self.softmax(torch.stack([self.pool(y1), self.pool(y2)]))
        return beta[0] * y1 + beta[1] * y2


def _split_channels(channels: int, alpha: float) -> tuple[int, int]:
    up = round(alpha * channels)
    if not 0 < alpha < 1 or abs(up - alpha * channels) > 1e-9 or up in (0, channels):
        raise ValueError(f"CRU: alpha ({alpha}) * in_channels ({channels}) must be a whole number in (0, C)")
    return up, channels - up


class SCConv(nn.Module):
    """SRU then CRU; replaces a stride-1 3x3 conv ``in_channels -> out_channels``.

    Args:
        in_channels: input channels (even; divisible by ``gn_groups``).
        out_channels: output channels (default ``in_channels``).
        alpha: share of channels on the CRU's rich upper path.
        squeeze_ratio: r, the CRU's 1x1 squeeze factor.
        groups: g, groups of the CRU's group-wise 3x3 conv.
        gn_groups: GroupNorm groups of the SRU (16 as in the authors' code).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        alpha: float = 0.5,
        squeeze_ratio: int = 2,
        groups: int = 2,
        gn_groups: int = 16,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.sru = SRU(in_channels, gn_groups=gn_groups)
        self.cru = CRU(in_channels, out_channels, alpha=alpha, squeeze_ratio=squeeze_ratio, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.cru(self.sru(x))


def scconv_for_width(channels: int, *, alpha: float = 0.5, gn_groups: int = 16, squeeze_ratio: int = 2,
                     groups: int = 2) -> SCConv:
    """SCConv as a spatial operator on any searched width (the one factory DSCNN and FalconNet use).

    interpretation: the paper fixes widths where α·C splits evenly; a search samples widths that
    do not. The SRU uses gcd(gn_groups, C) GroupNorm groups, and the CRU's upper part is rounded to
    the nearest multiple of r·g (at least one, leaving at least r channels below), so α is a target.
    """
    step = squeeze_ratio * groups
    largest = (channels - squeeze_ratio) // step * step
    up = min(max(step, round(alpha * channels / step) * step), largest)
    if up <= 0 or (channels - up) % squeeze_ratio:
        raise ValueError(f"SCConv: no valid alpha split of {channels} channels with r={squeeze_ratio}, g={groups}")
    return SCConv(channels, alpha=up / channels, squeeze_ratio=squeeze_ratio, groups=groups,
                  gn_groups=math.gcd(gn_groups, channels))

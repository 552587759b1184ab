"""RepMiX: DSCNN's re-parameterizable mixed-kernel depthwise token mixer.

DSCNN (a latency-aware, re-parameterized FasterNet-style CNN; paper available to us only as an
abstract and tables) names a "mixed depthwise convolution" (MixConv, Tan & Le, BMVC 2019) used in a
RepMixer (FastViT, Vasu et al., ICCV 2023) stem, with a knob r (1..4) whose growth adds parameters.

Train form (FastViT's RepMixer with MixConv as the mixer's conv)::

    y = x + s * (mixer(x) - BN_norm(x))
    mixer(x) = MixDW(x) + DW1x1-BN(x) + BN_skip(x)

s is a per-channel layer scale (init 1e-5). MixDW splits the channels into r groups with kernels
3, 5, ..., 2r+1, each group its own depthwise conv + BN. Deploy form: ONE depthwise conv of kernel
2r+1 + bias (each group's kernel zero-padded, centred); the residual and the subtracted BN are
absorbed into it, which is exact because every term is linear per channel.

interpretation: r = number of channel groups of the mixed-kernel conv (``layout="split"``, the
default). The other reading, r parallel full-channel DW branches of kernels 3..2r+1 summed, is
``layout="parallel"``; `MIX_LAYOUTS` is the one place that maps r to kernels. With the split
reading, when ``channels % r != 0`` the first ``channels % r`` groups get one channel more
(40 channels, r=3 -> 14, 13, 13).

How RepMiX "fuses information between different channels and spatial locations" (the abstract):
this module alone is depthwise, so it mixes spatial locations at r scales within each channel and
no channels. The abstract says RepMiX follows the depthwise-separable (DS-Conv) idea: RepMiX is the
depthwise half and the pointwise convs that follow it are the channel half. In DSCNN's stem
(Table 1: 3x3 conv, RepMixer, FFN) that is the ConvFFN's two 1x1 convs, as in FastViT's RepMixer
block; where the model places RepMiX in its blocks too (`DSCNNConfig.repmix_placement`), the
MetaLightBlock's 1x1 convs around or after it. A channel-mixing term inside the mixer would stop
the deploy form from being one depthwise conv, which the re-parameterization is for.

Which placement: `dscnn.repmix_sweep` sweeps r = 1..4 for each placement and layout beside Table 6.
In the stem alone a step of r adds a few hundred parameters against the table's ~60k; a RepMiX
after the spatial operator of every block ("hidden", split) fits the table's steps best, but costs
DSCNN_T0 0.40 GMACs against Table 1's 0.32G, so the models keep the stem-only placement (see
`dscnn.models.dscnn`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dscnn.blocks.fast_branch import current_branch_impl
from dscnn.blocks.fast_repmix import applies_repmix, fast_repmix
from dscnn.fusion import (
    Branch,
    concat_branches,
    conv_from_branch,
    fold_identity_bn,
    identity_kernel,
    scale_branch,
    sum_branches,
)
from dscnn.layers import ConvBN
from dscnn.reparam import Reparameterizable

#: One summed layer of the mixer conv: consecutive (channel count, kernel size) groups covering all channels.
MixLayer = tuple[tuple[int, int], ...]


def split_layout(channels: int, r: int) -> tuple[MixLayer, ...]:
    """MixConv reading: one layer, channels split into r groups with kernels 3, 5, ..., 2r+1."""
    if channels < r:
        raise ValueError(f"RepMiX: {channels} channels cannot be split into r={r} groups")
    base, extra = divmod(channels, r)
    return (tuple((base + (i < extra), 2 * i + 3) for i in range(r)),)


def parallel_layout(channels: int, r: int) -> tuple[MixLayer, ...]:
    """Alternative reading: r full-channel depthwise branches of kernels 3, 5, ..., 2r+1, summed."""
    return tuple(((channels, 2 * i + 3),) for i in range(r))


MIX_LAYOUTS: dict[str, Callable[[int, int], tuple[MixLayer, ...]]] = {
    "split": split_layout,
    "parallel": parallel_layout,
}


class RepMiX(Reparameterizable):
    """RepMixer with a mixed-kernel depthwise mixer on ``channels``; ``r`` in 1..4.

    In train mode it runs the exact fast path of `dscnn.blocks.fast_repmix` (same function and
    gradients, fewer passes) unless ``branch_impl("reference")`` is active.
    """

    def __init__(self, channels: int, r: int = 3, *, layer_scale_init: float = 1e-5, layout: str = "split") -> None:
        super().__init__()
        if not 1 <= r <= 4:
            raise ValueError(f"RepMiX: r must be in 1..4, got {r}")
        if layout not in MIX_LAYOUTS:
            raise ValueError(f"RepMiX: unknown layout {layout!r}; valid: {', '.join(MIX_LAYOUTS)}")
        self.channels, self.r, self.kernel_size = channels, r, 2 * r + 1
        self.mix = nn.ModuleList(
            nn.ModuleList(ConvBN(n, n, k, groups=n) for n, k in layer) for layer in MIX_LAYOUTS[layout](channels, r)
        )
        self.pointwise = ConvBN(channels, channels, 1, groups=channels)
        self.skip = nn.BatchNorm2d(channels)
        self.norm = nn.BatchNorm2d(channels)  # subtracted: the mixer learns a correction to x
        self.layer_scale = nn.Parameter(torch.full((channels, 1, 1), float(layer_scale_init)))
        self.fused: nn.Conv2d | None = None

    @property
    def is_reparameterized(self) -> bool:
        return self.fused is not None

    def _mixer_minus_norm(self) -> Branch:
        k = (self.kernel_size, self.kernel_size)
        parts = [
            concat_branches([g.fused_branch() for g in layer], k) for layer in self.mix  # type: ignore[attr-defined]
        ]
        parts.append(self.pointwise.fused_branch())
        parts.append(fold_identity_bn(self.skip, self.channels, (1, 1)))
        parts.append(scale_branch(fold_identity_bn(self.norm, self.channels, (1, 1)), -1.0))
        return sum_branches(parts, k)

    def reparameterize(self) -> None:
        if self.fused is not None:
            return
        with torch.no_grad():
            scaled = scale_branch(self._mixer_minus_norm(), self.layer_scale)
            w = self.layer_scale
            eye = identity_kernel(self.channels, self.channels, (1, 1), dtype=w.dtype, device=w.device)
            k = (self.kernel_size, self.kernel_size)
            branch = sum_branches([scaled, (eye, torch.zeros_like(scaled[1]))], k)
        template = nn.Conv2d(self.channels, self.channels, self.kernel_size, groups=self.channels, device="meta")
        self.fused = conv_from_branch(template, branch)
        del self.mix, self.pointwise, self.skip, self.norm, self.layer_scale

    def _mix_forward(self, x: Tensor) -> Tensor:
        out: Tensor | None = None
        for layer in self.mix:
            sizes = [g.conv.in_channels for g in layer]  # type: ignore[attr-defined]
            y = torch.cat([g(part) for g, part in zip(layer, torch.split(x, sizes, dim=1))], dim=1)  # type: ignore[call-overload]
            out = y if out is None else out + y
        assert out is not None
        return out

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return self.fused(x)
        if self.training and current_branch_impl() == "fast" and applies_repmix(self, x):
            return fast_repmix(self, x)
        mixer = self._mix_forward(x) + self.pointwise(x) + self.skip(x)
        return x + self.layer_scale * (mixer - self.norm(x))

"""RefCO: a re-parameterized, sparsely factorised channel operator -- OUR design (SPEC 2.2).

FalconNet (Cai et al., "FalconNet: Factorization for the Light-weight ConvNets", 2023) replaces the
1x1 convs of its blocks with "RefCO". The paper's details of RefCO were not retrievable, so this
module implements the reading fixed in SPEC 2.2 and is not claimed to be the paper's operator.

SF-Conv (banded 1x1 conv): output channel ``o`` reads ``K`` consecutive input channels starting
at ``floor(o * C_in / C_out)``, with its own weights: ``C_out * K`` weights instead of
``C_in * C_out``.

Interpretations (ours):
- Bands wrap around modulo ``C_in``, so every output reads exactly ``K`` channels.
- The bottleneck is ``min(C_in, C_out) / R`` channels (R times narrower than the narrower end), so
  both the expanding and the projecting operator of an inverted bottleneck save weights.
- ``K`` is one band width for both stages, clipped to each stage's input width. It must give full
  receptive range; `full_range_kernel` returns the smallest such ``K``.
- "Several SF-Conv pairs in parallel" would be a sum of products, which is not one product of
  summed weights. To keep the fusion exact, the parallelism sits *inside* each stage: each stage is
  a sum of parallel banded conv-BN branches with the same band geometry, fused into one banded conv.
  The two stages stay two sparse ops in the deploy form, with no activation between them.

Implementation: a fixed channel gather (index buffer) followed by a grouped 1x1 Conv2d, one group
per band, so every fused leaf is a plain Conv2d and no dense masked matrix is ever formed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dscnn.blocks.branch_conv import BranchConv
from dscnn.reparam import Reparameterizable


def band_geometry(in_channels: int, out_channels: int) -> tuple[int, int]:
    """(number of distinct bands, channel stride between band starts) of an SF-Conv.

    Reducing (``C_in >= C_out``): one band per output, starts ``C_in / C_out`` apart. Expanding:
    one band per input channel, each shared by ``C_out / C_in`` consecutive outputs.
    """
    big, small = max(in_channels, out_channels), min(in_channels, out_channels)
    if small < 1 or big % small:
        raise ValueError(
            f"SF-Conv {in_channels}->{out_channels}: one channel count must be a multiple of the other"
        )
    if in_channels >= out_channels:
        return out_channels, in_channels // out_channels
    return in_channels, 1


class SFConv(nn.Module):
    """Banded 1x1 conv: a sum of ``branches`` parallel banded conv-BN branches (one after fusion)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, branches: int = 1) -> None:
        super().__init__()
        if kernel < 1 or branches < 1:
            raise ValueError(f"SF-Conv: kernel ({kernel}) and branches ({branches}) must be >= 1")
        bands, stride = band_geometry(in_channels, out_channels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel = min(kernel, in_channels)  # a wider band would read channels twice
        starts = torch.arange(bands) * stride
        index = (starts[:, None] + torch.arange(self.kernel)[None, :]) % in_channels
        # Not persistent: it is fixed by the geometry, so checkpoints need not carry it.
        self.register_buffer("index", index.flatten(), persistent=False)
        self.conv = BranchConv(bands * self.kernel, out_channels, [(1, 1)] * branches, groups=bands)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.index_select(1, self.index))


def refco_bottleneck(in_channels: int, out_channels: int, reduction: int) -> int:
    """Width between RefCO's two SF-Convs; a clear error when the channel counts do not fit."""
    narrow = min(in_channels, out_channels)
    if reduction < 1 or narrow % reduction:
        raise ValueError(
            f"RefCO {in_channels}->{out_channels}: reduction R={reduction} must be >= 1 and divide "
            f"min(in, out)={narrow}"
        )
    mid = narrow // reduction
    if in_channels % mid or out_channels % mid:
        raise ValueError(
            f"RefCO {in_channels}->{out_channels}: bottleneck {mid} (= {narrow}/R) must divide both widths"
        )
    return mid


def _is_full_range(in_channels: int, mid: int, kernel: int) -> bool:
    # An output reads k2 consecutive bottleneck channels; bottleneck channel m reads inputs
    # [m*s1, m*s1 + k1). Their union is one contiguous run of (k2 - 1)*s1 + k1 inputs when k1 >= s1.
    s1 = in_channels // mid
    k1, k2 = min(kernel, in_channels), min(kernel, mid)
    return k1 >= s1 and (k2 - 1) * s1 + k1 >= in_channels


def full_range_kernel(in_channels: int, out_channels: int, reduction: int = 2) -> int:
    """Smallest band width K for which every RefCO output depends on every input channel."""
    mid = refco_bottleneck(in_channels, out_channels, reduction)
    return next(k for k in range(1, in_channels + 1) if _is_full_range(in_channels, mid, k))


class RefCO(Reparameterizable):
    """Two SF-Convs ``C_in -> min(C_in, C_out)/R -> C_out``, each a sum of parallel banded conv-BNs.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        reduction: R, how many times narrower the bottleneck is than the narrower end.
        kernel: band width K of both SF-Convs; ``None`` = `full_range_kernel`. Smaller values are
            refused because some outputs would not see every input.
        branches: parallel banded conv-BN branches per stage in the training form.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, reduction: int = 2, kernel: int | None = None, branches: int = 2
    ) -> None:
        super().__init__()
        mid = refco_bottleneck(in_channels, out_channels, reduction)
        smallest = full_range_kernel(in_channels, out_channels, reduction)
        kernel = smallest if kernel is None else kernel
        if kernel < smallest:
            raise ValueError(
                f"RefCO {in_channels}->{out_channels} (R={reduction}): kernel {kernel} leaves outputs blind "
                f"to some input channels; the smallest full-range kernel is {smallest}"
            )
        self.in_channels, self.out_channels, self.mid_channels = in_channels, out_channels, mid
        self.reduce = SFConv(in_channels, mid, kernel, branches=branches)
        self.expand = SFConv(mid, out_channels, kernel, branches=branches)

    @property
    def is_reparameterized(self) -> bool:
        return self.reduce.conv.is_reparameterized and self.expand.conv.is_reparameterized

    def reparameterize(self) -> None:
        # Each stage is linear in its branches, so summing its folded banded kernels is exact.
        self.reduce.conv.reparameterize()
        self.expand.conv.reparameterize()

    def forward(self, x: Tensor) -> Tensor:
        return self.expand(self.reduce(x))

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

Implementation: outputs are cut into tiles of consecutive channels (`tile_outputs`); a fixed
channel gather (index buffer) collects each tile's input window, and one grouped 1x1 Conv2d (one
group per tile) applies the bands, so every fused leaf is a plain Conv2d. Inside a tile the kernel
carries zeros at the band's corners: the MACs counted for RefCO include them (they are executed).
A gather plus one grouped conv per band (one group per output) was 7-100x slower than the dense
1x1 on CPU; tiles of up to 64 outputs are what made the operator competitive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dscnn.fusion import Branch, conv_from_branch, fold_bn_module, sum_branches
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


def tile_outputs(in_channels: int, out_channels: int) -> int:
    """Outputs per tile: the largest divisor of ``C_out`` up to 64 (and up to ``C_out / 2``, so there
    are at least two tiles) whose band starts span at most 64 input channels.

    A tile's outputs read one contiguous window of ``span + K`` input channels, computed as one dense
    block of a grouped conv. Bigger tiles mean fewer, larger GEMMs but more zeros at the band's
    corners; tiles of 16-64 outputs were the fastest in CPU prototypes of this benchmark
    (``benchmarks/refco_vs_dense.py``); tiles of 4-8 outputs were up to 2x slower.
    """
    limit = max(1, min(64, 64 * out_channels // in_channels, out_channels // 2))
    return max(d for d in range(1, limit + 1) if out_channels % d == 0)


class SFConv(Reparameterizable):
    """Banded 1x1 conv: a sum of ``branches`` parallel banded conv-BN branches (one conv after fusion).

    Parameters are the bands themselves, ``weight[branch, o, j]`` for input channel
    ``(start(o) + j) % C_in``. Forward: gather each tile's input window once (index buffer), then a
    grouped 1x1 conv, one group per tile, whose kernel holds the band and zeros at the band's corners
    (scattered from the band parameters, so the zeros get no gradient and stay zero).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, branches: int = 1) -> None:
        super().__init__()
        if kernel < 1 or branches < 1:
            raise ValueError(f"SF-Conv: kernel ({kernel}) and branches ({branches}) must be >= 1")
        bands, stride = band_geometry(in_channels, out_channels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel = min(kernel, in_channels)  # a wider band would read channels twice
        starts = torch.arange(out_channels) // (out_channels // bands) * stride
        tile = tile_outputs(in_channels, out_channels)
        self.tiles = out_channels // tile
        tile_starts = starts[::tile]
        span = int((starts[tile - 1 :: tile] - tile_starts).max())
        self.window = min(span + self.kernel, in_channels)
        index = (tile_starts[:, None] + torch.arange(self.window)) % in_channels
        # Column of (o, j) inside its tile's window; modulo only matters when the window is all of C_in.
        column = (starts - tile_starts.repeat_interleave(tile))[:, None] + torch.arange(self.kernel)
        slots = torch.arange(out_channels)[:, None] * self.window + column % in_channels
        # Not persistent: both are fixed by the geometry, so checkpoints need not carry them.
        self.register_buffer("index", index.flatten(), persistent=False)
        self.register_buffer("slots", slots.flatten(), persistent=False)
        bound = self.kernel**-0.5  # nn.Conv2d's default init for a fan-in of K
        self.weight = nn.Parameter(torch.empty(branches, out_channels, self.kernel).uniform_(-bound, bound))
        self.bns = nn.ModuleList(nn.BatchNorm2d(out_channels) for _ in range(branches))
        self.fused: nn.Conv2d | None = None

    @property
    def is_reparameterized(self) -> bool:
        return self.fused is not None

    def tile_kernel(self, band: Tensor) -> Tensor:
        """The grouped-conv kernel ``(C_out, window, 1, 1)`` holding ``band`` ``(C_out, K)``."""
        flat = band.new_zeros(self.out_channels * self.window).scatter(0, self.slots, band.flatten())
        return flat.view(self.out_channels, self.window, 1, 1)

    def band_branches(self) -> list[Branch]:
        """Each branch's band ``(C_out, K, 1, 1)`` with its BN folded, plus bias."""
        return [fold_bn_module(w[..., None, None], None, bn) for w, bn in zip(self.weight, self.bns)]

    def reparameterize(self) -> None:
        if self.fused is not None:
            return
        with torch.no_grad():
            band, bias = sum_branches(self.band_branches(), (1, 1))  # exact: the branches are linear
            template = nn.Conv2d(
                self.tiles * self.window, self.out_channels, 1, groups=self.tiles, device="meta"
            )
            self.fused = conv_from_branch(template, (self.tile_kernel(band.flatten(1)), bias))
        del self.weight, self.bns

    def forward(self, x: Tensor) -> Tensor:
        windows = x.index_select(1, self.index)
        if self.fused is not None:
            return self.fused(windows)
        out = sum(
            bn(F.conv2d(windows, self.tile_kernel(w), groups=self.tiles)) for w, bn in zip(self.weight, self.bns)
        )
        assert isinstance(out, Tensor)
        return out


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
        return self.reduce.is_reparameterized and self.expand.is_reparameterized

    def reparameterize(self) -> None:
        self.reduce.reparameterize()
        self.expand.reparameterize()

    def forward(self, x: Tensor) -> Tensor:
        return self.expand(self.reduce(x))

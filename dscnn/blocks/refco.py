"""RefCO: FalconNet's re-parameterized factorised channel operator (docs/design.md 2.2).

FalconNet (Cai et al., "FalconNet: Factorization for the Light-weight ConvNets", 2023) replaces the
dense 1x1 convs of its blocks with RefCO, two sparse "SF-Convs" that together keep full receptive
range (every output depends on every input channel):

- First SF-Conv: each pixel's ``C_in`` channel values are cut into ``C_in/K`` non-overlapping
  windows of ``K`` channels; each window has its own weights and emits ``K/R`` values. That is a
  grouped 1x1 conv ``C_in -> C_in/R`` with ``C_in/K`` groups; hidden channel ``w*(K/R) + j`` is
  slot ``j`` of window ``w``. Weights: ``C_in*K/R``.
- Channel shuffle ``(w, j) -> (j, w)`` (ShuffleNet's), so slot ``j`` of every window sits together.
- Second SF-Conv: a grouped 1x1 conv ``C_in/R -> C_out`` with ``K/R`` groups; group ``j`` reads
  slot ``j`` of all ``C_in/K`` windows, hence all ``C_in`` inputs. Weights: ``C_in*C_out/K``.

Total ``C_in*K/R + C_in*C_out/K`` weights, smallest at ``K = sqrt(R*C_out)``; with
``C_out = λ*C_in`` that is the paper's ``K = sqrt(λ*R*C)`` and ``2*C*sqrt(λ*C/R)`` weights instead
of the dense ``λ*C²`` (C=64, λ=2, R=2: K=16, 512 + 512 = 1,024 weights against 8,192).

Training form: each stage is a sum of ``branches`` parallel grouped-1x1 conv-BN branches (a
`BranchConv`), so each stage fuses exactly into one grouped 1x1 + bias; the deploy form is
grouped 1x1 -> shuffle -> grouped 1x1.

interpretation:
- ``C_in -> C_out`` generalises the paper's ``C -> λC``: the hidden width is ``C_in/R`` and λ is
  ``C_out/C_in``, so the same operator serves MetaLightBlock's expanding (C -> λC, K = sqrt(λRC))
  and projecting (λC -> C, K = sqrt(RC)) 1x1s.
- Valid K: ``K`` divides ``C_in``, ``R`` divides ``K`` and ``K/R`` divides ``C_out``. When
  ``sqrt(R*C_out)`` is not valid, `refco_kernel` takes the valid K nearest to it on a log scale,
  which is the valid K with the fewest weights; on a tie (e.g. sqrt(128) between 8 and 16, equal
  weights) the smaller K. Powers of two tie whenever ``R*C_out`` is an odd power of two.
- No activation between the two stages (the paper fuses each stage, not the pair; the pair is two
  convs in the deploy form).
- The shuffle is an ``index_select`` with a fixed permutation buffer: one gather of ``C_in/R``
  planes, exported as one ONNX Gather, which pruning's coupling analysis recognises (and skips).
  On a channels_last activation (training on CPU) the same permutation runs as
  ``torch.channel_shuffle`` (groups = windows), which keeps the layout; a torch.fx trace always
  records the index_select.
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.fx
from torch import Tensor

from dscnn.blocks.branch_conv import BranchConv
from dscnn.reparam import Reparameterizable


def valid_kernels(in_channels: int, out_channels: int, reduction: int) -> list[int]:
    """Window sizes K that factorise ``C_in -> C_out`` at reduction R, ascending."""
    if reduction < 1 or in_channels % reduction:
        raise ValueError(
            f"RefCO {in_channels}->{out_channels}: reduction R={reduction} must be >= 1 and divide the "
            f"input width {in_channels}"
        )
    return [
        k for k in range(reduction, in_channels + 1, reduction)
        if in_channels % k == 0 and out_channels % (k // reduction) == 0
    ]


def refco_kernel(in_channels: int, out_channels: int, reduction: int = 2, requested: int = 0) -> int:
    """The K a RefCO uses: the valid K nearest (log scale, ties to the smaller) to ``requested``,
    or to the weight-minimising ``sqrt(R * C_out)`` when ``requested`` is 0.

    Nearest to ``sqrt(R * C_out)`` on a log scale is the same as fewest weights, which is compared
    in exact integers so that ties (equal weights) are found exactly.
    """
    valid = valid_kernels(in_channels, out_channels, reduction)
    if requested <= 0:
        return min(valid, key=lambda k: (refco_weight_count(in_channels, out_channels, reduction, k), k))
    return min(valid, key=lambda k: (Fraction(max(k, requested), min(k, requested)), k))


def refco_weight_count(in_channels: int, out_channels: int, reduction: int, kernel: int) -> int:
    """Deploy-form weights (biases excluded) of a RefCO: ``C_in*K/R + C_in*C_out/K``."""
    return in_channels * kernel // reduction + in_channels * out_channels // kernel


def shuffle_index(windows: int, slots: int) -> Tensor:
    """Permutation taking hidden channels ordered (window, slot) to (slot, window)."""
    return torch.arange(windows * slots).reshape(windows, slots).T.flatten()


class RefCO(Reparameterizable):
    """Grouped 1x1 ``C_in -> C_in/R`` (``C_in/K`` groups) -> shuffle -> grouped 1x1 ``-> C_out`` (``K/R`` groups).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        reduction: R, hidden width ``C_in / R``.
        kernel: window size K; ``None`` (or 0) = `refco_kernel`'s choice. An invalid K is an error.
        branches: parallel conv-BN branches per stage in the training form.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, reduction: int = 2, kernel: int | None = None, branches: int = 2
    ) -> None:
        super().__init__()
        valid = valid_kernels(in_channels, out_channels, reduction)
        kernel = kernel or refco_kernel(in_channels, out_channels, reduction)
        if kernel not in valid:
            raise ValueError(
                f"RefCO {in_channels}->{out_channels} (R={reduction}): K={kernel} must divide {in_channels}, "
                f"be a multiple of R and K/R must divide {out_channels}; valid K: {valid}"
            )
        if branches < 1:
            raise ValueError(f"RefCO: branches must be >= 1, got {branches}")
        self.in_channels, self.out_channels, self.reduction, self.kernel = in_channels, out_channels, reduction, kernel
        windows, slots = in_channels // kernel, kernel // reduction
        hidden = windows * slots
        self.first = BranchConv(in_channels, hidden, [(1, 1)] * branches, groups=windows)
        self.second = BranchConv(hidden, out_channels, [(1, 1)] * branches, groups=slots)
        # Fixed by the geometry: not persistent, so checkpoints need not carry it.
        self.register_buffer("shuffle", shuffle_index(windows, slots), persistent=False)

    @property
    def is_reparameterized(self) -> bool:
        return self.first.is_reparameterized and self.second.is_reparameterized

    def reparameterize(self) -> None:
        self.first.reparameterize()
        self.second.reparameterize()

    def forward(self, x: Tensor) -> Tensor:
        h = self.first(x)
        if not isinstance(h, torch.fx.Proxy) and h.is_contiguous(memory_format=torch.channels_last) \
                and not h.is_contiguous():
            # The same permutation as a native channel shuffle, which keeps channels_last (index_select
            # on dim 1 returns NCHW, and the next grouped conv in mixed formats is several times slower:
            # 48 vs 8 ms at 16->64, 4 groups) and is ~10x faster than a gather on the NHWC view.
            return self.second(torch.channel_shuffle(h, self.in_channels // self.kernel))
        return self.second(h.index_select(1, self.shuffle))

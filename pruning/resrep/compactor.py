"""ResRep's compactors (Ding et al., "ResRep: Lossless CNN Pruning via Decoupling Remembering and
Forgetting", ICCV 2021): a 1x1 conv after a conv, trained to forget the channels to be pruned.

A `Compactor` is a bias-free D->D 1x1 conv initialised to the identity, with a 0/1 mask over its
rows (a buffer: 1 = kept). The conv it follows is wrapped as `CompactedConv`. A depthwise conv in a
group gets no wrapper: its channels are masked through the group's dense producers, and a masked
channel keeps flowing until conversion (`pruning.resrep.constants` folds what is left of it).

Folding is exact: ``conv(W', b')`` then ``Q`` is ``conv(Q W', Q b')`` (`dscnn.fusion.fold_pointwise_after`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dscnn.fusion import fold_pointwise_after


class Compactor(nn.Module):
    """Identity-initialised 1x1 conv D->D without bias, plus a row mask (1 = kept, 0 = to remove)."""

    mask: Tensor

    def __init__(self, channels: int, *, dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        super().__init__()
        eye = torch.eye(channels, dtype=dtype, device=device)
        self.weight = nn.Parameter(eye[:, :, None, None].clone())
        self.register_buffer("mask", torch.ones(channels, dtype=eye.dtype, device=eye.device))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight)

    def row_norms(self) -> Tensor:
        """L2 norm of each row (one per output channel), detached."""
        return self.weight.detach().flatten(1).norm(dim=1)


class CompactedConv(nn.Module):
    """A dense conv followed by its compactor, standing in for the conv during ResRep training."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ValueError(f"a compactor can only follow a dense conv, not one with groups={conv.groups}")
        self.conv = conv
        self.compactor = Compactor(conv.out_channels, dtype=conv.weight.dtype, device=conv.weight.device)

    def forward(self, x: Tensor) -> Tensor:
        return self.compactor(self.conv(x))

    def fold(self) -> nn.Conv2d:
        """Fold the compactor (every row, masked or not) into the conv, in place, and return the conv."""
        conv, q = self.conv, self.compactor.weight.detach()
        # a bias-free conv stays bias-free: Q @ 0 = 0
        bias = conv.bias.detach() if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
        with torch.no_grad():
            kernel, new_bias = fold_pointwise_after((conv.weight.detach(), bias), q)
            conv.weight.copy_(kernel)
            if conv.bias is not None:
                conv.bias.copy_(new_bias)
        return conv


def zero_masked_rows(model: nn.Module) -> nn.Module:
    """Set every compactor's masked rows to zero, in place: the "masked model" pruning must equal."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Compactor):
                module.weight.mul_(module.mask.view(-1, 1, 1, 1))
    return model

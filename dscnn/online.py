"""Online re-parameterization as a named training mode (Hu et al., "Online Convolutional
Re-parameterization", CVPR 2022, "OREPA").

OREPA removes the BN inside each branch of a re-parameterized block, puts a learnable per-channel
linear scale there instead, and adds ONE BN after the branch sum. Every branch is then linear in x,
so the block's kernel ``K = sum_b s_b * pad(W_b) [+ s_id * I]`` is formed from the branch weights at
every step and training runs one conv + one BN per block (the paper: about 2x faster training and
much less memory than the offline form, comparable accuracy). Deploy form: K with the post-BN
folded in (SPEC rule 1): the same single conv + bias the exact form deploys to.

It is a different training method from the paper-form blocks (their per-branch BNs normalise each
branch on its own): `to_online` must be asked for by name (``TrainConfig(train_form="online")``);
nothing switches to it silently.

interpretation:
- Only `BranchConv` blocks (RepVGG, ACB, RepLK, RepASO/RepSO) are converted; RepMiX and RefCO keep
  their exact train form.
- Scales start at ``1 / ||W_b[c]||`` per output channel (identity: 1), so for white input every
  branch starts with the unit output variance its own BN would have given it; OREPA's exact
  initialisation constants are not reproduced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dscnn.blocks.branch_conv import BranchConv
from dscnn.fusion import conv_from_branch, fold_bn_module, identity_kernel, pad_kernel
from dscnn.layers import ConvBN
from dscnn.reparam import Reparameterizable

TRAIN_FORMS = ("exact", "online")


class OnlineBranchConv(Reparameterizable):
    """``BN(conv(x, sum_b s_b * W_b [+ s_id * I]))``: a `BranchConv` trained online (OREPA)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernels: Sequence[Tensor], *, stride: int = 1, groups: int = 1,
        dilation: int = 1, identity: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.groups, self.dilation = stride, groups, dilation
        shapes = [tuple(k.shape[-2:]) for k in kernels] or [(1, 1)]
        self.kernel_size = (max(s[0] for s in shapes), max(s[1] for s in shapes))
        self.weights = nn.ParameterList(nn.Parameter(k.detach().clone()) for k in kernels)
        with torch.no_grad():
            norms = [k.detach().flatten(1).norm(dim=1).clamp_min(1e-6) for k in kernels]
        self.scales = nn.ParameterList(nn.Parameter(1.0 / n) for n in norms)
        self.identity_scale = nn.Parameter(torch.ones(out_channels)) if identity else None
        self.bn = nn.BatchNorm2d(out_channels)
        self.fused: nn.Conv2d | None = None

    @classmethod
    def from_branch_conv(cls, block: BranchConv) -> OnlineBranchConv:
        """The online form of ``block``, starting from its branch kernels (not yet fused)."""
        if block.is_reparameterized:
            raise ValueError("cannot train a fused BranchConv online: convert before reparameterizing")
        kernels = [cast(ConvBN, b).conv.weight for b in block.branches]
        online = cls(
            block.in_channels, block.out_channels, kernels,
            stride=block.stride, groups=block.groups, dilation=block.dilation, identity=block.identity is not None,
        )
        online.kernel_size = block.kernel_size
        return online.to(kernels[0].device if kernels else torch.device("cpu"))

    @property
    def is_reparameterized(self) -> bool:
        return self.fused is not None

    def kernel(self) -> Tensor:
        """The block's kernel formed from the branch weights and scales (differentiable)."""
        parts = [pad_kernel(w * s.view(-1, 1, 1, 1), self.kernel_size) for w, s in zip(self.weights, self.scales)]
        if self.identity_scale is not None:
            ref = self.identity_scale
            eye = identity_kernel(self.out_channels, self.groups, self.kernel_size, dtype=ref.dtype, device=ref.device)
            parts.append(eye * ref.view(-1, 1, 1, 1))
        kernel = sum(parts)
        assert isinstance(kernel, Tensor)
        return kernel

    def _padding(self) -> tuple[int, int]:
        return self.dilation * (self.kernel_size[0] // 2), self.dilation * (self.kernel_size[1] // 2)

    def reparameterize(self) -> None:
        if self.fused is not None:
            return
        with torch.no_grad():
            branch = fold_bn_module(self.kernel(), None, self.bn)
        template = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, stride=self.stride, dilation=self.dilation,
            groups=self.groups, device="meta",
        )
        self.fused = conv_from_branch(template, branch)
        del self.weights, self.scales, self.identity_scale, self.bn

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return self.fused(x)
        y = F.conv2d(x, self.kernel(), None, self.stride, self._padding(), self.dilation, self.groups)
        return self.bn(y)


def to_online(model: nn.Module) -> nn.Module:
    """Replace every unfused `BranchConv` in ``model`` by its `OnlineBranchConv`, in place; returns it.

    The model's state_dict changes shape (per-branch BNs are gone), so a train-form checkpoint of an
    online model loads only into a model converted the same way; its deploy form is a normal one.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, BranchConv):
            setattr(model, name, OnlineBranchConv.from_branch_conv(child))
        else:
            to_online(child)
    return model


def is_online(model: nn.Module) -> bool:
    """True when ``model`` holds at least one unfused `OnlineBranchConv`."""
    return any(isinstance(m, OnlineBranchConv) and not m.is_reparameterized for m in model.modules())

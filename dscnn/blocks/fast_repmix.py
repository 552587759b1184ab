"""Exact fast training path for RepMiX (SPEC section 9, issue 12).

RepMiX's train form is ``y = x + s * (MixDW(x) + BN_pw(a * x) + BN_skip(x) - BN_norm(x))``: every
term of the mixer is a batch-normalised depthwise branch of x, so the mixer is a
`dscnn.blocks.fast_branch.depthwise_bn_sum` (the DW 1x1 conv, the skip BN and the subtracted norm
BN are x-terms folded into the centre tap; none needs a pass over memory). BN is per channel, so
with the split (MixConv) layout the sum splits exactly by channel group: one sum per group, with
that group's kernel and the groups' slices of the shared BNs' parameters. With the parallel layout
it is one sum of r kernel branches. The running statistics end as the per-branch reference leaves
them (each shared BN updated once, from its groups' statistics put side by side).

Measured on DSCNN-T0's stem RepMiX (r=3, 40 ch, 32x32, batch 64, channels_last, 1 thread): the
reference spends half its step in six BN backward passes; see the README's training-throughput table
for the whole model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from dscnn.blocks.batch_norm_stats import in_scope, update_running_stats
from dscnn.blocks.fast_branch import FAST_MAX_KERNEL, BNTerm, depthwise_bn_sum, identity_term, term
from dscnn.layers import ConvBN

if TYPE_CHECKING:
    from dscnn.blocks.repmix import RepMiX


def _groups(module: RepMiX) -> list[list[ConvBN]]:
    return [[cast(ConvBN, g) for g in cast(nn.ModuleList, layer)] for layer in module.mix]


def _shared(module: RepMiX) -> tuple[ConvBN, nn.BatchNorm2d, nn.BatchNorm2d]:
    skip, norm = module.skip, module.norm
    assert isinstance(skip, nn.BatchNorm2d) and isinstance(norm, nn.BatchNorm2d)
    return module.pointwise, skip, norm


def applies_repmix(module: RepMiX, x: Tensor) -> bool:
    """Whether `fast_repmix` computes ``module``'s train-mode forward exactly for input ``x``."""
    if not module.training or module.fused is not None or x.dim() != 4 or x.shape[1] != module.channels:
        return False
    layers = _groups(module)
    split = len(layers) == 1
    parallel = all(len(layer) == 1 for layer in layers)
    pointwise, skip, norm = _shared(module)
    convs = [g.conv for layer in layers for g in layer] + [pointwise.conv]
    return (
        (split or parallel) and module.kernel_size <= FAST_MAX_KERNEL
        and all(c.groups == c.in_channels == c.out_channels and c.stride == (1, 1) and c.dilation == (1, 1)
                for c in convs)
        and in_scope(x, [g.bn for layer in layers for g in layer] + [pointwise.bn, skip, norm], convs)
    )


def _shared_terms(module: RepMiX) -> list[BNTerm]:
    """The DW 1x1 branch, the skip BN and the subtracted norm BN, as x-terms over all channels."""
    pointwise, skip, norm = _shared(module)
    return [term(pointwise), identity_term(skip), identity_term(norm, -1.0)]


def _channels(t: BNTerm, lo: int, hi: int) -> BNTerm:
    """Term ``t`` restricted to channels ``lo:hi`` (BN is per channel, so this is exact)."""
    weight = None if t.weight is None else t.weight[lo:hi]
    return BNTerm(weight, t.gamma[lo:hi], t.beta[lo:hi], t.eps)


def fast_repmix(module: RepMiX, x: Tensor) -> Tensor:
    """Train-mode forward of a `RepMiX` (see `applies_repmix`); updates running statistics."""
    layers = _groups(module)
    pointwise, skip, norm = _shared(module)
    shared_bns = [cast(nn.BatchNorm2d, pointwise.bn), skip, norm]
    if all(len(layer) == 1 for layer in layers):  # parallel layout (or r = 1): one sum
        kernels = [layer[0] for layer in layers]
        mixed, stats = depthwise_bn_sum(x, [term(g) for g in kernels], _shared_terms(module))
        update_running_stats([cast(nn.BatchNorm2d, g.bn) for g in kernels] + shared_bns,
                             stats.means, stats.variances, stats.count)
        return torch.addcmul(x, module.layer_scale, mixed)
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    groups = layers[0]
    sizes = [g.conv.in_channels for g in groups]
    shared = _shared_terms(module)  # once: the norm's negated parameters are sliced, not re-negated per group
    parts, shared_means, shared_vars = [], [[], [], []], [[], [], []]  # type: ignore[var-annotated]
    lo, count = 0, 0
    for group, part in zip(groups, torch.split(x, sizes, dim=1)):
        hi = lo + group.conv.in_channels
        y, stats = depthwise_bn_sum(part.contiguous(memory_format=fmt), [term(group)],
                                    [_channels(t, lo, hi) for t in shared])
        update_running_stats([cast(nn.BatchNorm2d, group.bn)], stats.means[:1], stats.variances[:1], stats.count)
        for i in range(3):
            shared_means[i].append(stats.means[1 + i])
            shared_vars[i].append(stats.variances[1 + i])
        parts.append(y)
        lo, count = hi, stats.count
    update_running_stats(shared_bns, [torch.cat(m) for m in shared_means], [torch.cat(v) for v in shared_vars], count)
    mixed = torch.cat(parts, dim=1).contiguous(memory_format=fmt)
    return torch.addcmul(x, module.layer_scale, mixed)

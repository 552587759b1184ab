"""Physical channel removal through Torch-Pruning, and the check that it changed nothing it should not.

`remove_channels` takes, per group root, the group channels to drop, and lets Torch-Pruning cut
them out of every coupled layer (producers' output rows, depthwise convs, consumers' input
columns, concatenation offsets). It is exact only when the removed channels are zero wherever they
flow, which is what the algorithms arrange (ResRep: masked compactor rows) and what
`assert_same_outputs` verifies on a probe input before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch_pruning as tp
from torch import Tensor, nn

from pruning.groups import ChannelGroup, dependency_graph

#: docs/design.md section 0: relative tolerance of "numerically equal" per dtype.
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def remove_channels(
    model: nn.Module, groups: Iterable[ChannelGroup], removed: Mapping[str, Iterable[int]], example: Tensor
) -> nn.Module:
    """Remove, in place, the listed channels of each group (keyed by root) from ``model``; returns it.

    ``model`` must have the structure the groups were found on (same module names, plain layers).
    Every group keeps at least one channel; an index outside the group is a ValueError.
    """
    graph = dependency_graph(model, example)
    modules = dict(model.named_modules())
    for group in groups:
        channels = sorted({int(c) for c in removed.get(group.root, ())})
        if not channels:
            continue
        if channels[0] < 0 or channels[-1] >= group.size or len(channels) >= group.size:
            raise ValueError(
                f"group {group.root!r} has {group.size} channels: cannot remove {len(channels)} of them "
                f"(indices {channels[0]}..{channels[-1]})"
            )
        root = modules[group.root]
        graph.get_pruning_group(root, tp.prune_conv_out_channels, channels).prune()
    return model


def relative_error(reference: Tensor, other: Tensor) -> float:
    """``max|other - reference| / max|reference|`` (0 for an all-zero reference that is matched)."""
    if reference.shape != other.shape:
        raise ValueError(f"outputs differ in shape: {tuple(reference.shape)} vs {tuple(other.shape)}")
    scale = reference.abs().max().item()
    err = (other - reference).abs().max().item()
    return err / scale if scale > 0 else err


def assert_same_outputs(reference: Tensor, other: Tensor, what: str) -> float:
    """Raise RuntimeError unless ``other`` equals ``reference`` within docs/design.md section 0's tolerance; returns the error."""
    err = relative_error(reference, other)
    tol = TOLERANCE.get(reference.dtype, 1e-5)
    if not err <= tol:
        raise RuntimeError(f"{what}: outputs differ by {err:.3g} (relative), more than the tolerance {tol:g}")
    return err

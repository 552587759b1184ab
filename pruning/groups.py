"""Coupling groups of a deploy graph: channels that must be pruned together share one group.

Torch-Pruning's `DependencyGraph` traces the model and, rooted at each conv's output channels,
collects every layer whose channels are tied to them: the convs whose outputs are summed by a
residual add, the depthwise conv that follows (its input and output channels are one), the input
channels of the consumers, through concatenations. We keep only groups whose every member we can
prune exactly, and describe them by module *names*, so a group found on one copy of a model
applies to another (the compactor model, a deep copy pruned for a check).

A group is prunable when, once a channel is zeroed at every conv that produces it, it is zero
wherever it flows, so removing it changes nothing else. That holds through:

- dense convs (``groups == 1``) and depthwise convs (in = out = groups) -- the producers;
- the input side of convs and linears -- the consumers;
- adds, ReLU-like activations (f(0) = 0), pooling, concatenation and flattening.

It does not hold, and the group is skipped with a reason, through: non-depthwise grouped convs,
splits and slices (the module keeps the split sizes as attributes), index gathers (RefCO),
normalisation layers, sigmoid/softmax gates, standalone parameters, or the model output (the
classifier's logits). The input image has no producer, so it is never a group.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

OUT, IN = "out", "in"
#: grad_fn names (prefix, lower case) of element-wise ops that map a zero channel to zero.
ZERO_PRESERVING_OPS = (
    "addbackward", "subbackward", "mulbackward", "relubackward", "relu6backward", "hardtanhbackward",
    "leakyrelubackward", "gelubackward", "silubackward", "hardswishbackward", "meanbackward",
    "adaptiveavgpool2dbackward", "avgpool2dbackward", "maxpool2dwithindicesbackward", "maxpool2dbackward",
    "clonebackward", "tbackward",  # tbackward: the transposed weight of a linear layer, not a feature map
)
_ALLOWED_OPS = {tp.ops.OPTYPE.CONCAT, tp.ops.OPTYPE.RESHAPE}


@dataclass(frozen=True)
class Member:
    """One conv or linear layer tied to a group, and which of its channels each group channel is."""

    module: str  # module name in the model
    side: str  # "out": the layer produces the channels; "in": it reads them
    channels: tuple[tuple[int, ...], ...]  # per group channel: this layer's channel indices (usually one)
    depthwise: bool = False  # a depthwise conv: its input and output channels are removed together


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are removed together (one mask for all of them)."""

    root: str  # the conv whose output channels number the group's channels
    size: int  # number of channels
    members: tuple[Member, ...]

    @property
    def producers(self) -> tuple[Member, ...]:
        """Layers whose output channels these are (dense convs get compactors; depthwise, a mask)."""
        return tuple(m for m in self.members if m.side == OUT)

    @property
    def dense_producers(self) -> tuple[Member, ...]:
        return tuple(m for m in self.producers if not m.depthwise)


@dataclass(frozen=True)
class GroupScan:
    """What `find_groups` found: the prunable groups and, per skipped root, why it was skipped."""

    groups: tuple[ChannelGroup, ...]
    skipped: dict[str, str]


def dependency_graph(model: nn.Module, example: Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` (traced with ``example``, in eval mode)."""
    was_training = model.training
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    model.train(was_training)
    return graph


def find_groups(model: nn.Module, example: Tensor) -> GroupScan:
    """Every coupling group of ``model`` rooted at a Conv2d, split into prunable and skipped.

    Args:
        model: a deploy-form (plain) model; BN left unfolded makes its groups unprunable.
        example: an input batch for tracing, e.g. ``torch.zeros(1, 3, 32, 32)``.
    """
    graph = dependency_graph(model, example)
    names = {m: n for n, m in model.named_modules()}
    groups: list[ChannelGroup] = []
    skipped: dict[str, str] = {}
    for group in graph.get_all_groups(root_module_types=(nn.Conv2d,)):
        root = names[group[0].dep.target.module]
        reason = _unprunable_reason(graph, group)
        if reason is None:
            built = _channel_group(graph, group, names)
            reason = None if built.dense_producers else "no dense conv produces these channels"
        if reason is None:
            groups.append(built)
        else:
            skipped[root] = reason
    return GroupScan(tuple(groups), skipped)


def _unprunable_reason(graph: tp.DependencyGraph, group: Any) -> str | None:
    for item in group:
        module, kind = item.dep.target.module, item.dep.target.type
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 and not _is_depthwise(module):
                return f"grouped conv ({module.groups} groups) is not depthwise"
        elif isinstance(module, nn.Linear):
            if graph.is_out_channel_pruning_fn(item.dep.handler):
                return "a linear layer produces these channels"
        elif kind == tp.ops.OPTYPE.ELEMENTWISE:
            op = str(getattr(module, "_grad_fn", "")).lower()
            if not op.startswith(ZERO_PRESERVING_OPS):
                return f"op {op or type(module).__name__} may not map a zero channel to zero"
        elif kind not in _ALLOWED_OPS:
            return f"passes through {kind.name.lower()} ({type(module).__name__})"
    return None


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1


def _channel_group(graph: tp.DependencyGraph, group: Any, names: dict[nn.Module, str]) -> ChannelGroup:
    root_module = group[0].dep.target.module
    size = root_module.out_channels
    index: dict[tuple[str, str], dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    depthwise: dict[str, bool] = {}
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue  # ops carry no weights: only the layers around them are cut
        name = names[module]
        depthwise[name] = isinstance(module, nn.Conv2d) and _is_depthwise(module)
        side = OUT if depthwise[name] or graph.is_out_channel_pruning_fn(item.dep.handler) else IN
        for idx, root_idx in zip(item.idxs, item.root_idxs):
            index[(name, side)][int(root_idx)].add(int(idx))
    members = tuple(
        Member(name, side, tuple(tuple(sorted(per_root.get(r, ()))) for r in range(size)), depthwise[name])
        for (name, side), per_root in index.items()
    )
    return ChannelGroup(names[root_module], size, members)

"""Deploy MACs of the widths a mask implies, without building the pruned model (docs/design.md section 0 counting).

A conv costs ``out * in/groups * kh*kw * H_out*W_out`` MACs (fvcore's count), a linear layer
``out * in`` per row. `CostModel` records every layer's geometry once (one forward pass at batch 1)
and, per group channel, which layer channels it removes; removing a channel then updates only the
layers of its group. What fvcore counts beyond convs and linears (pooling, normalisation) is held
at its unpruned value, so the estimate never undercounts: pruning only shrinks those terms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dscnn.complexity import count_macs
from pruning.groups import IN, OUT, ChannelGroup


@dataclass
class _Layer:
    out: int  # output channels (features)
    inp: int  # input channels (features)
    groups: int  # conv groups (1 for linear)
    depthwise: bool
    per_pair: int  # MACs per (output, input-per-group) pair: kernel area x output positions

    def macs(self, removed_out: int, removed_in: int) -> int:
        out = self.out - removed_out
        if self.depthwise:
            return out * self.per_pair  # one input per output, and groups shrink with them
        return out * ((self.inp - removed_in) // self.groups) * self.per_pair


class CostModel:
    """Deploy MACs of ``model`` as a function of the channels removed from each group."""

    def __init__(self, model: nn.Module, groups: Iterable[ChannelGroup], example: Tensor) -> None:
        self.layers = _layer_table(model, example)
        self.groups = {g.root: g for g in groups}
        self.full_layer_macs = sum(layer.macs(0, 0) for layer in self.layers.values())
        self.total_macs = count_macs(model, example.shape[-1], in_channels=example.shape[1])
        self.other_macs = self.total_macs - self.full_layer_macs  # pooling etc.: held constant

    def state(self) -> CostState:
        return CostState(self)

    def macs(self, removed: Mapping[str, Iterable[int]]) -> int:
        """MACs after removing, per group root, the given channels."""
        state = self.state()
        for root, channels in removed.items():
            for c in channels:
                state.remove(root, int(c))
        return state.macs

    def min_macs(self) -> int:
        """MACs with every group cut to one channel: the lowest target reachable."""
        state = self.state()
        for group in self.groups.values():
            for c in range(group.size):
                if state.can_remove(group.root, c):
                    state.remove(group.root, c)
        return state.macs


class CostState:
    """Removed-channel counts per layer and the resulting MACs, updated one channel at a time."""

    def __init__(self, model: CostModel) -> None:
        self.model = model
        self.removed: dict[tuple[str, str], int] = {}
        self.gone: dict[str, set[int]] = {root: set() for root in model.groups}
        self.macs = model.total_macs

    def _counts(self, name: str) -> tuple[int, int]:
        return self.removed.get((name, OUT), 0), self.removed.get((name, IN), 0)

    def can_remove(self, root: str, channel: int) -> bool:
        """False if ``channel`` is gone already or removing it would leave some layer without channels."""
        if channel in self.gone[root]:
            return False
        for member in self.model.groups[root].members:
            layer = self.model.layers[member.module]
            width = layer.out if member.side == OUT else layer.inp
            if self.removed.get((member.module, member.side), 0) + len(member.channels[channel]) >= width:
                return False
        return True

    def remove(self, root: str, channel: int) -> None:
        touched = {m.module for m in self.model.groups[root].members}
        before = sum(self.model.layers[n].macs(*self._counts(n)) for n in touched)
        for member in self.model.groups[root].members:
            key = (member.module, member.side)
            self.removed[key] = self.removed.get(key, 0) + len(member.channels[channel])
        after = sum(self.model.layers[n].macs(*self._counts(n)) for n in touched)
        self.gone[root].add(channel)
        self.macs += after - before


def _layer_table(model: nn.Module, example: Tensor) -> dict[str, _Layer]:
    """Geometry of every Conv2d and Linear, with output sizes from one forward pass of ``example[:1]``."""
    table: dict[str, _Layer] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(_recorder(name, table)))
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(example[:1])
        model.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    return table


def _recorder(name: str, table: dict[str, _Layer]) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            area = module.kernel_size[0] * module.kernel_size[1] * output.shape[-2] * output.shape[-1]
            depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
            layer = _Layer(module.out_channels, module.in_channels, module.groups, depthwise, area)
        else:
            assert isinstance(module, nn.Linear)
            rows = output.numel() // module.out_features  # tokens per image (1 for a classifier)
            layer = _Layer(module.out_features, module.in_features, 1, False, rows)
        if name in table:  # a layer called twice costs twice
            layer.per_pair += table[name].per_pair
        table[name] = layer

    return hook

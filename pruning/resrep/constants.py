"""Masked channels that are constant, not zero: folding them into their consumers' biases.

A masked channel of a ResRep group has its compactor rows zeroed at conversion, so its dense
producers emit zero. Where the group has no depthwise conv, zero is what reaches the consumers
(every op in a group maps zero to zero, `pruning.groups`). A depthwise conv in the group maps the
zero input to its bias, so past it the channel is the constant ``act(b_dw)``: the channel is
input-independent, but not zero. Removing it must then hand that constant to the consumers:
``b_cons += W_cons[:, c] * k`` with the column zeroed, which leaves the function unchanged and
the channel contributing nothing, so that the removal is exact (`pruning.surgery`).

interpretation (the paper has no depthwise case; this is what keeps ResRep gradual on it): the
constant is *measured* at each consumer's input on a two-image random probe, so any chain of
element-wise ops between the depthwise conv and the consumer is handled. It folds exactly into a
linear layer (per input feature) and into a conv without zero padding (a 1x1, or a kxk strided
downsample with ``padding=0``). Where it does not -- the channel varies over the positions (a
second depthwise conv with zero padding sees a constant map and pads it), or the consumer pads a
non-zero constant -- the channel is made zero instead by zeroing the biases of the group's
depthwise convs on it: the old hard-pruning behaviour, for those channels only, counted and warned
about by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pruning.groups import IN, ChannelGroup

#: Relative spread below which a channel counts as constant over batch and positions.
CONSTANT_TOLERANCE = 1e-6


@dataclass
class ConstantPlan:
    """Per group root: masked channels whose constant folds into consumers, and those made zero."""

    folded: dict[str, list[int]] = field(default_factory=dict)
    zeroed: dict[str, list[int]] = field(default_factory=dict)

    @property
    def folded_count(self) -> int:
        return sum(len(v) for v in self.folded.values())

    @property
    def zeroed_count(self) -> int:
        return sum(len(v) for v in self.zeroed.values())


def _consumer_inputs(model: nn.Module, names: set[str], probe: Tensor) -> dict[str, Tensor]:
    inputs: dict[str, Tensor] = {}
    hooks = []
    for name in names:
        module = model.get_submodule(name)

        def hook(_m: nn.Module, args: tuple[Tensor, ...], _out: Tensor, name: str = name) -> None:
            inputs.setdefault(name, args[0].detach().clone())

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in hooks:
            h.remove()
    return inputs


def _constant(values: Tensor) -> float | None:
    """The value of ``values`` if they are all equal (within `CONSTANT_TOLERANCE`), else None."""
    low, high = float(values.min()), float(values.max())
    scale = max(1.0, abs(low), abs(high))
    return (low + high) / 2 if high - low <= CONSTANT_TOLERANCE * scale else None


def _foldable(module: nn.Module, value: float) -> bool:
    if value == 0.0 or isinstance(module, nn.Linear):
        return True
    assert isinstance(module, nn.Conv2d)
    padded = any(p != 0 for p in module.padding) if isinstance(module.padding, tuple) else module.padding != "valid"
    return module.groups == 1 and not padded


def plan_constants(model: nn.Module, groups: tuple[ChannelGroup, ...], masked: Mapping[str, Tensor],
                   probe: Tensor) -> tuple[ConstantPlan, dict[str, dict[int, dict[str, list[float]]]]]:
    """Which masked channels fold and which must be zeroed, and the constants seen by each consumer.

    ``model`` is plain (compactors folded, masked rows zero). Returns the plan and, per group root
    and masked channel, per consumer module the constant at each of its input indices.
    """
    wanted = {g.root: masked[g.root].nonzero().flatten().tolist() for g in groups if any(m.depthwise for m in g.members)}
    wanted = {root: chans for root, chans in wanted.items() if chans}
    by_root = {g.root: g for g in groups}
    names = {m.module for root in wanted for m in by_root[root].members if m.side == IN}
    inputs = _consumer_inputs(model, names, probe) if names else {}
    plan = ConstantPlan()
    constants: dict[str, dict[int, dict[str, list[float]]]] = {}
    for root, channels in wanted.items():
        for channel in channels:
            seen: dict[str, list[float]] = {}
            ok = True
            for member in by_root[root].members:
                if member.side != IN or not member.channels[channel]:
                    continue
                module = model.get_submodule(member.module)
                x = inputs[member.module]
                values = []
                for idx in member.channels[channel]:
                    value = _constant(x[:, idx])
                    if value is None or not _foldable(module, value):
                        ok = False
                        break
                    values.append(value)
                if not ok:
                    break
                seen[member.module] = values
            if ok:
                plan.folded.setdefault(root, []).append(channel)
                constants.setdefault(root, {})[channel] = seen
            else:
                plan.zeroed.setdefault(root, []).append(channel)
    return plan, constants


def zero_depthwise_biases(model: nn.Module, groups: tuple[ChannelGroup, ...], zeroed: Mapping[str, list[int]]) -> None:
    """Make the listed channels zero everywhere: zero their bias in every depthwise conv of the group."""
    by_root = {g.root: g for g in groups}
    with torch.no_grad():
        for root, channels in zeroed.items():
            for member in by_root[root].members:
                conv = model.get_submodule(member.module)
                if member.depthwise and isinstance(conv, nn.Conv2d) and conv.bias is not None:
                    for channel in channels:
                        conv.bias[list(member.channels[channel])] = 0.0


def fold_constants(model: nn.Module, groups: tuple[ChannelGroup, ...],
                   constants: Mapping[str, Mapping[int, Mapping[str, list[float]]]]) -> None:
    """``b += W[:, idx] * k`` and ``W[:, idx] = 0`` in every consumer: the function is unchanged, the channel unused."""
    by_root = {g.root: g for g in groups}
    with torch.no_grad():
        for root, per_channel in constants.items():
            members = {m.module: m for m in by_root[root].members if m.side == IN}
            for channel, seen in per_channel.items():
                for name, values in seen.items():
                    module = model.get_submodule(name)
                    assert isinstance(module, (nn.Conv2d, nn.Linear))
                    weight = module.weight
                    if module.bias is None:
                        module.bias = nn.Parameter(weight.new_zeros(weight.shape[0]))
                    for idx, value in zip(members[name].channels[channel], values):
                        column = weight[:, idx]
                        module.bias.add_(column.reshape(column.shape[0], -1).sum(dim=1) * value)
                        weight[:, idx] = 0.0

"""Channel-pruned deploy models described by their config.

Pruning removes channels from the fused (deploy) graph, so a pruned model's widths are no longer
those its config's fields give. `ArchConfig.pruned_layers` records them: the (module name, output
channels, input channels) of every Conv2d / Linear whose shape differs from the unpruned deploy
model of the same config. The config then describes the pruned model (its `arch_hash` differs from
the unpruned one's), and `dscnn.build_model` rebuilds it: train form, fused, then those layers
resized (depthwise convs stay depthwise: groups follow their channels).
"""

from __future__ import annotations

from torch import nn

from dscnn.config import ArchConfig, PrunedLayer
from dscnn.reparam import reparameterize_model

__all__ = ["apply_pruned_layers", "pruned_config"]


def pruned_config(model: nn.Module, config: ArchConfig | None = None) -> ArchConfig:
    """The config of a channel-pruned deploy ``model`` (its own ``model.config`` by default), with its layers."""
    from dscnn._registry import build_model  # the registry builds pruned configs through this module

    config = config if config is not None else getattr(model, "config", None)
    if not isinstance(config, ArchConfig):
        raise ValueError("only registry models (with an ArchConfig in .config) have a pruned config")
    base = config.replace(pruned_layers=())
    reference = dict(reparameterize_model(build_model(base)).named_modules())
    layers: list[PrunedLayer] = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        ref = reference.get(name)
        if ref is None or type(ref) is not type(module):
            raise ValueError(f"{name}: a {type(module).__name__} that the deploy form of {base.family} does not have")
        shape = _channels(module)
        if shape != _channels(ref):
            layers.append((name, *shape))
    return config.replace(pruned_layers=tuple(layers))


def apply_pruned_layers(model: nn.Module, layers: tuple[PrunedLayer, ...]) -> nn.Module:
    """Resize the layers of a deploy ``model`` to ``layers`` (fresh, uninitialised weights); in place."""
    modules = dict(model.named_modules())
    for name, out_channels, in_channels in layers:
        module = modules.get(name)
        if isinstance(module, nn.Conv2d):
            _resize_conv(module, name, out_channels, in_channels)
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = out_channels, in_channels
        else:
            raise ValueError(f"pruned layer {name!r} is not a Conv2d or Linear of this architecture")
        _fresh_parameters(module)
    return model


def _channels(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Conv2d):
        return module.out_channels, module.in_channels
    assert isinstance(module, nn.Linear)
    return module.out_features, module.in_features


def _resize_conv(conv: nn.Conv2d, name: str, out_channels: int, in_channels: int) -> None:
    if conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels:  # depthwise stays depthwise
        if out_channels != in_channels:
            raise ValueError(f"pruned layer {name!r}: a depthwise conv needs out == in, got {out_channels}, {in_channels}")
        conv.groups = out_channels
    elif out_channels % conv.groups or in_channels % conv.groups:
        raise ValueError(f"pruned layer {name!r}: {out_channels}/{in_channels} channels do not divide into "
                         f"{conv.groups} groups")
    conv.out_channels, conv.in_channels = out_channels, in_channels


def _fresh_parameters(module: nn.Conv2d | nn.Linear) -> None:
    """Uninitialised parameters of the new shape (a checkpoint's state_dict fills them)."""
    like = module.weight
    if isinstance(module, nn.Conv2d):
        shape = (module.out_channels, module.in_channels // module.groups, *module.kernel_size)
    else:
        shape = (module.out_features, module.in_features)
    module.weight = nn.Parameter(like.new_empty(shape))
    if module.bias is not None:
        module.bias = nn.Parameter(like.new_empty(shape[0]))

"""Model registry: named entrypoints (``dscnn_t0``) and config families (config -> model)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from dscnn.config import ArchConfig

EntryPoint = Callable[..., nn.Module]
F = TypeVar("F", bound=EntryPoint)

_ENTRYPOINTS: dict[str, EntryPoint] = {}
_FAMILIES: dict[str, tuple[type[ArchConfig], Callable[[Any], nn.Module]]] = {}


def register_model(fn: F) -> F:
    """Decorator: register an entrypoint under its function name; duplicates are refused."""
    name = fn.__name__
    if name in _ENTRYPOINTS:
        raise ValueError(f"model {name!r} is already registered")
    _ENTRYPOINTS[name] = fn
    return fn


def register_family(config_cls: type[ArchConfig], builder: Callable[[Any], nn.Module]) -> None:
    """Register how to build a model from a config of ``config_cls`` (keyed by its ``family``)."""
    family = config_cls.family
    if not family or family in _FAMILIES:
        raise ValueError(f"config family {family!r} is empty or already registered")
    _FAMILIES[family] = (config_cls, builder)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered model names, optionally filtered by a glob ``pattern`` (``dscnn_*``)."""
    return sorted(n for n in _ENTRYPOINTS if pattern is None or fnmatch.fnmatch(n, pattern))


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build model ``name`` in train form; ``overrides`` replace fields of its default config."""
    try:
        entrypoint = _ENTRYPOINTS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}") from None
    return entrypoint(**overrides)


def config_from_dict(data: dict[str, Any]) -> ArchConfig:
    """Rebuild a config from ``ArchConfig.to_json()`` output (must carry ``family``)."""
    family = data.get("family")
    if family not in _FAMILIES:
        raise ValueError(f"unknown model family {family!r}; valid: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[family][0].from_dict(data)


def build_model(config: ArchConfig) -> nn.Module:
    """Build the train-form model described by ``config``; a pruned config (``pruned_layers``) gives
    its pruned deploy form instead (fresh weights: pruning exists only on the fused graph)."""
    try:
        _, builder = _FAMILIES[config.family]
    except KeyError:
        raise ValueError(f"no model family {config.family!r} registered") from None
    if not config.pruned_layers:
        return builder(config)
    from dscnn.pruned import apply_pruned_layers
    from dscnn.reparam import reparameterize_model

    model = reparameterize_model(builder(config.replace(pruned_layers=())))
    apply_pruned_layers(model, config.pruned_layers)
    model.config = config  # type: ignore[assignment]
    return model

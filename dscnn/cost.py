"""What a model costs to deploy: params (both forms), deploy MACs and measured latency.

`measure_deploy_cost` is the one function search, pruning and benchmarks call: it fuses a copy
(`dscnn.deploy_copy`), counts, and times the deploy form through the on-disk cache so that the
same deploy graph is never timed twice. FLOPs follow docs/design.md section 0: fvcore multiply-accumulates
of the deploy form at batch 1; "FLOPS" = MACs per image x images per second.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from dscnn.complexity import count_macs, count_params, deploy_copy
from dscnn.latency import LatencyResult, LatencySettings, measure_latency_ms
from dscnn.measure_cache import MeasureCache, architecture_key


@dataclass(frozen=True)
class DeployCost:
    """Counts and timings of one model; latencies are None when not measured."""

    arch_key: str  # `architecture_key` of the deploy form
    params_train: int  # parameters of the model as given (train form)
    params_deploy: int  # parameters after fusion
    macs: int  # fvcore MACs of the deploy form, batch 1, at the settings' resolution
    latency: LatencyResult | None  # deploy form
    train_latency: LatencyResult | None = None  # train form, when asked for (Table 3's speedup)

    @property
    def latency_ms(self) -> float:
        if self.latency is None:
            raise ValueError("latency was not measured (measure_deploy_cost(..., time_latency=False))")
        return self.latency.median_ms

    @property
    def macs_per_s(self) -> float | None:
        """Achieved MACs per second: MACs per image x images per second of the deploy form."""
        return None if self.latency is None else self.macs * self.latency.throughput_ips

    @property
    def speedup(self) -> float | None:
        """Train-form latency / deploy-form latency."""
        if self.latency is None or self.train_latency is None:
            return None
        return self.train_latency.median_ms / self.latency.median_ms

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "macs_per_s": self.macs_per_s, "speedup": self.speedup}


def measure_deploy_cost(
    model: nn.Module,
    settings: LatencySettings,
    *,
    cache: MeasureCache | None = None,
    time_latency: bool = True,
    time_train_form: bool = False,
    to_deploy: Callable[[nn.Module], nn.Module] = deploy_copy,
) -> DeployCost:
    """Count and time ``model``'s deploy form; ``model`` itself is left untouched.

    Args:
        model: the train-form model.
        settings: timing protocol; its resolution is also the MAC-counting resolution.
        cache: where timings are looked up and stored; None times every call.
        time_latency: False counts only (params, MACs): cheap feasibility checks.
        time_train_form: also time the unfused model (for the train/deploy speedup).
        to_deploy: builds the deploy form from a model without changing it.
    """
    deploy = to_deploy(model)
    arch_key = architecture_key(deploy)
    return DeployCost(
        arch_key=arch_key,
        params_train=count_params(model),
        params_deploy=count_params(deploy),
        macs=count_macs(deploy, settings.resolution, in_channels=settings.in_channels),
        latency=cached_latency(deploy, settings, cache, arch_key) if time_latency else None,
        train_latency=cached_latency(model, settings, cache) if time_latency and time_train_form else None,
    )


def cached_latency(
    model: nn.Module, settings: LatencySettings, cache: MeasureCache | None, arch_key: str | None = None
) -> LatencyResult:
    """`measure_latency_ms`, answered from ``cache`` when this graph was timed before.

    Noisy results (repeats disagreeing by > 20%) are returned with a warning but never stored, so
    a later call on a quieter machine measures again.
    """
    if cache is None:
        return measure_latency_ms(model, settings)
    arch_key = arch_key or architecture_key(model)
    hit = cache.get(arch_key, settings)
    if hit is not None:
        return LatencyResult.from_dict(hit)
    result = measure_latency_ms(model, settings)
    if not result.noisy:
        cache.put(arch_key, settings, result.to_dict())
    return result

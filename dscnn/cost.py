"""What a model costs to deploy: params (both forms), deploy MACs and measured latency.

`measure_deploy_cost` is the one function search, pruning and benchmarks call: it fuses a copy
(`dscnn.deploy_copy`), counts, and times the deploy form through the on-disk cache so that the
same deploy graph is never timed twice. FLOPs follow docs/design.md section 0: fvcore multiply-accumulates
of the deploy form at batch 1; "FLOPS" = MACs per image x images per second.

What a search records per trial (besides ``latency_ms``): ``DeployCost.runtime`` (the runtime the
latency was timed in, ``LatencyResult.runtime_version`` for its version), ``DeployCost.load`` (other
processes' share of the machine while timing) and ``DeployCost.busy`` (True = timed under load:
not cached, to be re-measured; `python -m dscnn.bench --recheck`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from dscnn.complexity import count_macs, count_params, deploy_copy
from dscnn.config import ArchConfig
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
    def runtime(self) -> str | None:
        """The runtime the deploy form was timed in (`dscnn.runtimes`); None when not measured."""
        return None if self.latency is None else self.latency.runtime

    @property
    def load(self) -> float | None:
        """Other processes' share of the machine while the deploy form was timed (`dscnn.machine_load`)."""
        return None if self.latency is None else self.latency.load

    @property
    def busy(self) -> bool:
        """True when any latency here was timed on a busy machine (and so was not cached)."""
        return any(r is not None and r.busy for r in (self.latency, self.train_latency))

    @property
    def speedup(self) -> float | None:
        """Train-form latency / deploy-form latency."""
        if self.latency is None or self.train_latency is None:
            return None
        return self.train_latency.median_ms / self.latency.median_ms

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "macs_per_s": self.macs_per_s, "speedup": self.speedup,
                "runtime": self.runtime, "load": self.load, "busy": self.busy}


def measure_deploy_cost(
    model: nn.Module,
    settings: LatencySettings,
    *,
    cache: MeasureCache | None = None,
    time_latency: bool = True,
    time_train_form: bool = False,
    to_deploy: Callable[[nn.Module], nn.Module] = deploy_copy,
    source: dict[str, Any] | None = None,
) -> DeployCost:
    """Count and time ``model``'s deploy form; ``model`` itself is left untouched.

    Args:
        model: the train-form model.
        settings: timing protocol; its resolution is also the MAC-counting resolution.
        cache: where timings are looked up and stored; None times every call.
        time_latency: False counts only (params, MACs): cheap feasibility checks.
        time_train_form: also time the unfused model (for the train/deploy speedup).
        to_deploy: builds the deploy form from a model without changing it.
        source: how to rebuild the deploy form, stored with cached timings for ``--recheck``; None =
            ``{"config": ...}`` from ``model.config`` when the model has one.
    """
    deploy = to_deploy(model)
    arch_key = architecture_key(deploy)
    config = getattr(deploy, "config", None)
    if source is None and isinstance(config, ArchConfig):
        source = {"config": json.loads(config.to_json())}
    return DeployCost(
        arch_key=arch_key,
        params_train=count_params(model),
        params_deploy=count_params(deploy),
        macs=count_macs(deploy, settings.resolution, in_channels=settings.in_channels),
        latency=cached_latency(deploy, settings, cache, arch_key, source=source) if time_latency else None,
        train_latency=cached_latency(model, settings, cache) if time_latency and time_train_form else None,
    )


def cached_latency(
    model: nn.Module, settings: LatencySettings, cache: MeasureCache | None, arch_key: str | None = None,
    source: dict[str, Any] | None = None,
) -> LatencyResult:
    """`measure_latency_ms`, answered from ``cache`` when this graph was timed before.

    Noisy results (repeats disagreeing by > 20%) and busy ones (timed while other processes loaded
    the machine, `dscnn.machine_load`) are returned with a warning but never stored, so a later call
    on a quieter machine measures again.
    """
    if cache is None:
        return measure_latency_ms(model, settings)
    arch_key = arch_key or architecture_key(model)
    hit = cache.get(arch_key, settings)
    if hit is not None:
        return LatencyResult.from_dict(hit)
    result = measure_latency_ms(model, settings)
    if result.trusted:
        cache.put(arch_key, settings, result.to_dict(), source=source)
    return result

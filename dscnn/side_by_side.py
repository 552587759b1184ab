"""Several models timed in one interleaved run, so that their latencies compare one machine state.

Models timed minutes apart compare two machine states as much as two models. Here every repeat
times each model once (its own warm-up, then the timed runs: one `measure_latency_ms` call with
``repeats=1``), the order rotating from repeat to repeat so that a steady drift favours none, and
each model's median over the repeats is its latency, flagged noisy when its repeats disagree by
more than `dscnn.latency.NOISE_TOLERANCE`. ``guard`` is held around the whole run (a search
passes its machine-wide device lock, `searchspace.device_lock.DeviceLock.measuring`).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext

from torch import nn

from dscnn.latency import NOISE_TOLERANCE, LatencyResult, LatencySettings, measure_latency_ms

__all__ = ["measure_side_by_side"]


def measure_side_by_side(
    models: Mapping[str, nn.Module], settings: LatencySettings, *, guard: AbstractContextManager[object] | None = None,
) -> dict[str, LatencyResult]:
    """Each model's latency under ``settings``, its ``settings.repeats`` repeats interleaved with the others'."""
    if not models:
        return {}
    names = list(models)
    single = settings.replace(repeats=1)
    runs: dict[str, list[LatencyResult]] = {name: [] for name in names}
    with guard or nullcontext():
        for repeat in range(settings.repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                runs[name].append(measure_latency_ms(models[name], single))
    return {name: _summary(runs[name], settings) for name in names}


def _summary(runs: list[LatencyResult], settings: LatencySettings) -> LatencyResult:
    medians = [r.median_ms for r in runs]
    median = statistics.median(medians)
    loads = [r.load for r in runs if r.load is not None]
    assert settings.runs is not None
    return dataclasses.replace(
        runs[0], median_ms=median, min_ms=min(medians), max_ms=max(medians), repeat_medians_ms=tuple(medians),
        throughput_ips=settings.batch * 1000.0 / median, runs_timed=settings.runs * settings.repeats,
        noisy=max(medians) - min(medians) > NOISE_TOLERANCE * median, busy=any(r.busy for r in runs),
        load=max(loads) if loads else None,
    )

"""A deterministic stand-in for every timing behind a latency target (table, snapping, calibration).

The pruning CLI tests check decisions (a plan is made, stored, reused, refused), not the machine: a real
timing on this shared 2-core machine can differ by 2x between the table and the whole-model check, and
a calibration then rightly refuses the target, failing a test that is not about timing.
"""

from __future__ import annotations

import pytest
from torch import nn

from dscnn.latency import LatencyResult, LatencySettings

BASE_MS = 0.01  # the call overhead every forward pays
MS_PER_WEIGHT = 1e-5


def weights_ms(model: nn.Module) -> float:
    """Latency that grows with the weights: monotone in every width, additive over layers."""
    return BASE_MS + MS_PER_WEIGHT * sum(p.numel() for p in model.parameters())


def fake_latency(monkeypatch: pytest.MonkeyPatch, busy: bool = False) -> list[str]:
    """Replace `pruning.latency_table`'s timer by `weights_ms`; returns the runtimes it was asked for."""
    import pruning.latency_table

    runtimes: list[str] = []

    def measure(model: nn.Module, settings: LatencySettings) -> LatencyResult:
        runtimes.append(settings.runtime)
        ms = weights_ms(model)
        return LatencyResult(ms, ms, ms, (ms,), settings.batch * 1000 / ms, None, 1, False,
                             runtime=settings.runtime, busy=busy)

    monkeypatch.setattr(pruning.latency_table, "measure_latency_ms", measure)
    return runtimes

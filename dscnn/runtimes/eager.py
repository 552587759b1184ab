"""``eager``: the deploy-form module called from Python, as `dscnn.latency` always timed it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from dscnn.runtimes.base import Prepared, RuntimeInfo, as_cpu_float, torch_model_and_input

if TYPE_CHECKING:
    from dscnn.latency import LatencySettings


class EagerRuntime:
    name = "eager"

    def check(self, settings: LatencySettings) -> None:
        return None  # runs wherever torch runs; the device itself is checked by dscnn.latency.require_device

    def info(self, settings: LatencySettings) -> RuntimeInfo:
        return RuntimeInfo(self.name, f"torch {torch.__version__}", {})

    def prepare(self, model: torch.nn.Module, settings: LatencySettings) -> Prepared:
        module, x = torch_model_and_input(model, settings)
        return Prepared(run=lambda: module(x), output=lambda: as_cpu_float(module(x)), inputs=x,
                        timer="cuda_events" if settings.device == "cuda" else "perf_counter")

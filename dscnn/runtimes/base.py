"""What every runtime provides to the timing loop of `dscnn.latency` (docs/design.md section 11).

A runtime turns a deploy-form module and `LatencySettings` into a `Prepared` model: a zero-argument
``run`` that executes one forward pass on a fixed input, and how to time it. The timing loop itself
(warm-up, timed runs, repeats, medians) is shared, so every runtime is measured by one protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

if TYPE_CHECKING:
    from dscnn.latency import LatencySettings

Timer = Literal["cuda_events", "perf_counter"]


class RuntimeUnavailable(ValueError):
    """The runtime asked for cannot run here (one line; CLIs exit 2). Never silently replaced by another."""


@dataclass
class Prepared:
    """A model ready to be timed: ``run()`` is one forward pass on the fixed input ``inputs``."""

    run: Callable[[], Any]  # one forward pass; its return value is ignored by the timing loop
    output: Callable[[], torch.Tensor]  # one forward pass, its output as a float32 CPU tensor (for checks)
    inputs: torch.Tensor  # the input every run uses (on the measured device, in the measured dtype)
    timer: Timer  # cuda_events: bracket each run on the current CUDA stream; perf_counter: wall clock
    close: Callable[[], None] = field(default=lambda: None)  # release sessions / graphs


@dataclass(frozen=True)
class RuntimeInfo:
    """Recorded with every measurement and in the cache key."""

    name: str  # eager, compile, cudagraph, onnxruntime
    version: str  # e.g. "torch 2.14.1+cu130" or "onnxruntime 1.32.0"
    settings: dict[str, Any]  # runtime-specific choices (compile mode, execution provider, ...)


class Runtime(Protocol):
    name: str

    def check(self, settings: LatencySettings) -> None:
        """Raise `RuntimeUnavailable` (one line) when this runtime cannot run ``settings`` on this machine."""

    def info(self, settings: LatencySettings) -> RuntimeInfo:
        """Version and settings this runtime runs ``settings`` with (cheap; no model needed)."""

    def prepare(self, model: torch.nn.Module, settings: LatencySettings) -> Prepared:
        """Build the runnable form of ``model`` (a copy; the caller's module is never changed)."""


def torch_model_and_input(model: torch.nn.Module, settings: LatencySettings) -> tuple[torch.nn.Module, torch.Tensor]:
    """A copy of ``model`` and a random input on the settings' device, dtype and memory format (eval mode)."""
    import copy

    device = torch.device(settings.device)
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    copied = copy.deepcopy(model).eval().to(device=device, dtype=settings.dtype).to(memory_format=memory_format)
    shape = (settings.batch, settings.in_channels, settings.resolution, settings.resolution)
    x = torch.randn(shape, device=device, dtype=settings.dtype).contiguous(memory_format=memory_format)
    return copied, x


def as_cpu_float(value: Any) -> torch.Tensor:
    """A model output (tensor, numpy array, or a tuple/list whose first item is one) as a float32 CPU tensor."""
    if isinstance(value, (tuple, list)):
        value = value[0]
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    return tensor.detach().to("cpu", torch.float32).clone()

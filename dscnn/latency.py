"""Latency and throughput of one forward pass, under the measurement protocol of docs/design.md section 4.

CPU: a fixed thread count (default 1), >= 10 warm-up and >= 100 timed runs per repeat, each run
timed with ``perf_counter``. GPU: ``cudnn.benchmark`` on, >= 50 warm-up and >= 200 timed runs per
repeat, each run bracketed by CUDA events and synchronised so that consecutive runs never overlap
(the latency of an isolated request). Every repeat reports the median of its runs; the result is
the median over repeats, with their spread. Always ``eval()`` and ``torch.inference_mode()``.

interpretation: fp16/bf16 mean the model and input are cast to that dtype (``model.to(dtype)``),
not autocast: that is what a deployed half-precision graph runs. Peak memory is the CUDA caching
allocator's ``max_memory_allocated``; the CPU has no per-model counter, so it is None there.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import dataclasses
import statistics
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEVICES = ("cpu", "cuda")
#: Protocol minimums of docs/design.md section 4, used when warmup/runs are left unset: (warmup, runs).
PROTOCOL_RUNS = {"cpu": (10, 100), "cuda": (50, 200)}
#: Repeats whose medians differ by more than this fraction of the median are flagged as noisy.
NOISE_TOLERANCE = 0.2


class NoisyMeasurementWarning(UserWarning):
    """Repeats disagree by more than `NOISE_TOLERANCE`: the machine was busy; do not trust the number."""


@dataclass(frozen=True)
class LatencySettings:
    """How to time a model. Unset ``warmup``/``runs`` resolve to the protocol minimum for the device."""

    device: str = "cpu"  # "cpu" or "cuda" (cuda = the current CUDA device)
    batch: int = 1  # images per forward pass
    resolution: int = 224  # input height = width
    threads: int = 1  # torch intra-op threads during the measurement (CPU protocol: fixed, default 1)
    precision: str = "fp32"  # fp32, or fp16 / bf16 (GPU only)
    channels_last: bool = False  # NHWC memory format for model and input
    warmup: int | None = None  # untimed runs before timing; None = 10 on CPU, 50 on GPU
    runs: int | None = None  # timed runs per repeat; None = 100 on CPU, 200 on GPU
    repeats: int = 3  # independent repeats; the reported latency is their median
    in_channels: int = 3  # input channels

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.device == "cpu" and self.precision != "fp32":
            raise ValueError(f"precision {self.precision!r} is GPU-only; use fp32 on cpu")
        default_warmup, default_runs = PROTOCOL_RUNS[self.device]
        # frozen dataclass: resolve the defaults once so that keys and reports show real counts
        object.__setattr__(self, "warmup", default_warmup if self.warmup is None else self.warmup)
        object.__setattr__(self, "runs", default_runs if self.runs is None else self.runs)
        for name, low in (("batch", 1), ("resolution", 1), ("threads", 1), ("runs", 1), ("repeats", 1),
                          ("in_channels", 1), ("warmup", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> LatencySettings:
        return dataclasses.replace(self, **overrides)


@dataclass(frozen=True)
class LatencyResult:
    """Timings in milliseconds of one forward pass of ``settings.batch`` images."""

    median_ms: float  # median over repeats of each repeat's median run
    min_ms: float  # fastest repeat median
    max_ms: float  # slowest repeat median
    repeat_medians_ms: tuple[float, ...]  # one median per repeat
    throughput_ips: float  # images per second = batch / median
    peak_memory_mb: float | None  # CUDA max_memory_allocated during timing; None on CPU
    runs_timed: int  # timed forward passes in total (repeats x runs)
    noisy: bool  # repeats disagree by more than NOISE_TOLERANCE of the median

    @property
    def spread(self) -> float:
        """(max - min) / median over repeats."""
        return (self.max_ms - self.min_ms) / self.median_ms

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyResult:
        return cls(**{**data, "repeat_medians_ms": tuple(data["repeat_medians_ms"])})


def require_device(device: str) -> None:
    """Fail clearly, before any work, when ``device`` cannot be used on this machine."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available (torch.cuda.is_available() is False)")


@functools.cache
def pin_malloc() -> bool:
    """Keep freed blocks of up to 32 MB on glibc's heap; False where libc is not glibc.

    Without this, glibc returns large activation buffers to the OS after every forward pass and
    page-faults them back in on the next one, so the same graph timed in two processes can differ
    by 2-4x depending on heap history. Applied once per process, before any CPU timing.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter codes
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 256 << 20))


def measure_latency_ms(model: nn.Module, settings: LatencySettings) -> LatencyResult:
    """Time ``model`` (a copy of it: the caller's module is not moved or cast) under ``settings``.

    Warns with `NoisyMeasurementWarning` when the repeats disagree by more than 20%.
    """
    require_device(settings.device)
    device = torch.device(settings.device)
    if device.type == "cpu":
        pin_malloc()
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    model = copy.deepcopy(model).eval().to(device=device, dtype=settings.dtype)
    model = model.to(memory_format=memory_format)
    shape = (settings.batch, settings.in_channels, settings.resolution, settings.resolution)
    x = torch.randn(shape, device=device, dtype=settings.dtype).contiguous(memory_format=memory_format)
    with _protocol_state(settings), torch.inference_mode():
        for _ in range(settings.warmup or 0):  # resolved in __post_init__; never None here
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        time_run = _cuda_run_ms if device.type == "cuda" else _cpu_run_ms
        assert settings.runs is not None
        medians = [statistics.median(time_run(model, x) for _ in range(settings.runs)) for _ in range(settings.repeats)]
        peak_mb = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return _summarise(medians, settings, peak_mb)


def _summarise(medians: list[float], settings: LatencySettings, peak_mb: float | None) -> LatencyResult:
    median = statistics.median(medians)
    noisy = (max(medians) - min(medians)) > NOISE_TOLERANCE * median
    if noisy:
        warnings.warn(
            f"latency repeats disagree by more than {NOISE_TOLERANCE:.0%} "
            f"(repeat medians {', '.join(f'{m:.3f}' for m in medians)} ms): the machine is noisy",
            NoisyMeasurementWarning, stacklevel=3,
        )
    assert settings.runs is not None
    return LatencyResult(
        median_ms=median, min_ms=min(medians), max_ms=max(medians), repeat_medians_ms=tuple(medians),
        throughput_ips=settings.batch * 1000.0 / median, peak_memory_mb=peak_mb,
        runs_timed=settings.runs * settings.repeats, noisy=noisy,
    )


def _cpu_run_ms(model: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return (time.perf_counter() - start) * 1000.0


def _cuda_run_ms(model: nn.Module, x: torch.Tensor) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    model(x)
    end.record()
    end.synchronize()  # waits for this run only: runs never overlap, as for an isolated request
    return float(start.elapsed_time(end))


@contextmanager
def _protocol_state(settings: LatencySettings) -> Iterator[None]:
    """Set the thread count and cudnn.benchmark for the measurement; restore them afterwards."""
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    torch.set_num_threads(settings.threads)
    torch.backends.cudnn.benchmark = True  # let cudnn pick its fastest kernels (used on GPU only)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark

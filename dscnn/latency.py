"""Latency and throughput of one forward pass, under the measurement protocol of docs/design.md section 4.

CPU: a fixed thread count (default 1), >= 10 warm-up and >= 100 timed runs per repeat, each run
timed with ``perf_counter``. GPU: ``cudnn.benchmark`` on, >= 50 warm-up and >= 200 timed runs per
repeat, each run bracketed by CUDA events and synchronised so that consecutive runs never overlap
(the latency of an isolated request). Every repeat reports the median of its runs; the result is
the median over repeats, with their spread. Always ``eval()`` and ``torch.inference_mode()``.

Runtimes (docs/design.md section 11): ``settings.runtime`` picks how the model runs (`dscnn.runtimes`:
eager, compile, cudagraph, onnxruntime); the timing loop above is the same for all of them. Every
result records the runtime, its version and settings, and the machine's load during timing
(`dscnn.machine_load`): a result timed on a busy machine is flagged ``busy`` and warned about, and
`dscnn.cost.cached_latency` never caches it.

interpretation: fp16/bf16 mean the model and input are cast to that dtype (``model.to(dtype)``),
not autocast: that is what a deployed half-precision graph runs. Peak memory is the CUDA caching
allocator's ``max_memory_allocated``; the CPU has no per-model counter, so it is None there.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dscnn import machine_load
from dscnn.allocator import pin_malloc
from dscnn.machine_load import LoadProbe, LoadReading
from dscnn.runtimes import RuntimeInfo, RuntimeUnavailable, check_runtime, get_runtime, validate_runtime_name

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEVICES = ("cpu", "cuda")
#: Protocol minimums of docs/design.md section 4, used when warmup/runs are left unset: (warmup, runs).
PROTOCOL_RUNS = {"cpu": (10, 100), "cuda": (50, 200)}
#: Repeats whose medians differ by more than this fraction of the median are flagged as noisy.
NOISE_TOLERANCE = 0.2


class NoisyMeasurementWarning(UserWarning):
    """Repeats disagree by more than `NOISE_TOLERANCE`: the machine was busy; do not trust the number."""


class BusyMachineWarning(UserWarning):
    """Other processes loaded the machine while timing (`dscnn.machine_load`): the number is not cached."""


__all__ = ["DEVICES", "NOISE_TOLERANCE", "PRECISIONS", "PROTOCOL_RUNS", "BusyMachineWarning", "LatencyResult",
           "LatencySettings", "NoisyMeasurementWarning", "RuntimeUnavailable", "measure_latency_ms", "pin_malloc",
           "require_device"]


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
    runtime: str = "eager"  # eager, compile, cudagraph (CUDA only) or onnxruntime (fp32 NCHW); dscnn.runtimes

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.device == "cpu" and self.precision != "fp32":
            raise ValueError(f"precision {self.precision!r} is GPU-only; use fp32 on cpu")
        validate_runtime_name(self.runtime)
        if self.runtime == "cudagraph" and self.device != "cuda":
            raise RuntimeUnavailable(f"runtime 'cudagraph' needs device cuda (CUDA graphs are NVIDIA-GPU only), "
                                     f"got {self.device!r}")
        if self.runtime == "onnxruntime" and (self.precision != "fp32" or self.channels_last):
            raise ValueError("runtime 'onnxruntime' times the exported fp32 NCHW graph; "
                             f"got precision {self.precision!r}{', channels_last' if self.channels_last else ''}")
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
    runtime: str = "eager"  # dscnn.runtimes name the model ran in
    runtime_version: str = ""  # e.g. "torch 2.14.1+cu130", "onnxruntime 1.32.0"; "" = not recorded
    runtime_settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # compile mode, provider, ...
    load: float | None = None  # other processes' CPU use over the timing window, 0..1 (dscnn.machine_load)
    cpu_share: float | None = None  # the timing thread's on-CPU share of the window
    busy: bool = False  # load over machine_load.BUSY_LOAD, or (CPU) cpu_share under MIN_CPU_SHARE: not cached

    @property
    def spread(self) -> float:
        """(max - min) / median over repeats."""
        return (self.max_ms - self.min_ms) / self.median_ms

    @property
    def trusted(self) -> bool:
        """Neither noisy nor busy: fit to be cached and compared."""
        return not (self.noisy or self.busy)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyResult:
        return cls(**{**data, "repeat_medians_ms": tuple(data["repeat_medians_ms"])})


def require_device(device: str) -> None:
    """Fail clearly, before any work, when ``device`` cannot be used on this machine."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available (torch.cuda.is_available() is False)")


def measure_latency_ms(model: nn.Module, settings: LatencySettings, *, load_probe: LoadProbe | None = None) -> LatencyResult:
    """Time ``model`` (a copy of it: the caller's module is not moved or cast) under ``settings``.

    ``settings.runtime`` picks the runtime (`dscnn.runtimes`); one that cannot run here raises
    `RuntimeUnavailable`. Warns with `NoisyMeasurementWarning` when the repeats disagree by more
    than 20%, and with `BusyMachineWarning` when ``load_probe`` (default: `dscnn.machine_load`)
    finds the machine busy during the timed runs.
    """
    require_device(settings.device)
    info = check_runtime(settings)
    if settings.device == "cpu":
        pin_malloc()
    probe = load_probe or machine_load.default_probe
    assert settings.runs is not None  # resolved in __post_init__
    with _protocol_state(settings), torch.inference_mode():
        prepared = get_runtime(settings.runtime).prepare(model, settings)
        try:
            for _ in range(settings.warmup or 0):
                prepared.run()
            cuda = settings.device == "cuda"
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            time_run = _cuda_run_ms if prepared.timer == "cuda_events" else _cpu_run_ms
            window = probe(settings.threads)
            medians = [statistics.median(time_run(prepared.run) for _ in range(settings.runs))
                       for _ in range(settings.repeats)]
            reading = window.stop()
            peak_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        finally:
            prepared.close()
    return _summarise(medians, settings, peak_mb, runtime=info, load=reading)


def _summarise(medians: list[float], settings: LatencySettings, peak_mb: float | None, *,
               runtime: RuntimeInfo | None = None, load: LoadReading | None = None) -> LatencyResult:
    """The result of one measurement; without ``runtime``, the settings' runtime name with no version."""
    median = statistics.median(medians)
    noisy = (max(medians) - min(medians)) > NOISE_TOLERANCE * median
    if noisy:
        warnings.warn(
            f"latency repeats disagree by more than {NOISE_TOLERANCE:.0%} "
            f"(repeat medians {', '.join(f'{m:.3f}' for m in medians)} ms): the machine is noisy",
            NoisyMeasurementWarning, stacklevel=3,
        )
    busy = load is not None and machine_load.is_busy(load, settings.device)
    if busy and load is not None:
        warnings.warn(f"latency {median:.3f} ms measured on a busy machine ({machine_load.describe(load)}): "
                      "not cached; measure again when the machine is quiet", BusyMachineWarning, stacklevel=3)
    assert settings.runs is not None
    return LatencyResult(
        median_ms=median, min_ms=min(medians), max_ms=max(medians), repeat_medians_ms=tuple(medians),
        throughput_ips=settings.batch * 1000.0 / median, peak_memory_mb=peak_mb,
        runs_timed=settings.runs * settings.repeats, noisy=noisy,
        runtime=runtime.name if runtime else settings.runtime, runtime_version=runtime.version if runtime else "",
        runtime_settings=dict(runtime.settings) if runtime else {},
        load=None if load is None else load.load, cpu_share=None if load is None else load.cpu_share, busy=busy,
    )


def _cpu_run_ms(run: Callable[[], object]) -> float:
    """Wall-clock ms of one run (CPU runtimes, and runtimes that synchronise their own stream)."""
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1000.0


def _cuda_run_ms(run: Callable[[], object]) -> float:
    """CUDA-event ms of one run on the current stream, synchronised (an isolated request)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
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

"""dscnn.latency: protocol defaults, counts of warm-up/timed runs, settings applied and restored, load readings."""

from __future__ import annotations

import itertools
import math
import time
import warnings

import pytest
import torch
from torch import Tensor, nn

from dscnn import LatencySettings, NoisyMeasurementWarning, machine_load, measure_latency_ms
from dscnn import latency as latency_mod
from dscnn.latency import BusyMachineWarning, LatencyResult
from dscnn.machine_load import LoadReading
from tests.dscnn.cuda_marks import needs_cuda


class FixedProbe:
    """A load probe that reads what the test says (`measure_latency_ms(load_probe=...)`)."""

    def __init__(self, load: float | None, cpu_share: float | None = 1.0) -> None:
        self.reading = LoadReading(load, cpu_share, 1.0)

    def __call__(self, threads: int) -> FixedProbe:
        return self

    def stop(self) -> LoadReading:
        return self.reading


QUIET = FixedProbe(0.0)


class Recorder(nn.Module):
    """A tiny conv that logs every call (input shape, threads in force, NHWC) to ``log``.

    ``log`` is a class attribute so that the copy `measure_latency_ms` times writes to it too.
    """

    log: list[tuple[tuple[int, ...], int, bool]] = []

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        Recorder.log.append((tuple(x.shape), torch.get_num_threads(), nhwc))
        return self.conv(x)


def test_defaults_follow_the_protocol_per_device() -> None:
    cpu = LatencySettings()
    assert (cpu.device, cpu.batch, cpu.threads, cpu.warmup, cpu.runs, cpu.repeats) == ("cpu", 1, 1, 10, 100, 3)
    assert cpu.runtime == "eager"
    gpu = LatencySettings(device="cuda", batch=32)  # constructing settings needs no GPU
    assert (gpu.warmup, gpu.runs) == (50, 200)
    assert LatencySettings(warmup=0, runs=7).runs == 7


@pytest.mark.parametrize("bad, word", [
    ({"batch": 0}, "batch"), ({"repeats": 0}, "repeats"), ({"runs": 0}, "runs"), ({"warmup": -1}, "warmup"),
    ({"threads": 0}, "threads"), ({"resolution": 2.5}, "resolution"), ({"device": "tpu"}, "device"),
    ({"precision": "fp8"}, "precision"), ({"precision": "fp16"}, "GPU-only"),
    ({"runtime": "tensorrt"}, "unknown runtime 'tensorrt'; valid runtimes: eager, compile, cudagraph, onnxruntime"),
    ({"runtime": "cudagraph"}, "needs device cuda"), ({"runtime": "onnxruntime", "channels_last": True}, "fp32 NCHW"),
    ({"runtime": "onnxruntime", "device": "cuda", "precision": "bf16"}, "fp32 NCHW"),
])
def test_bad_settings_are_clear_errors(bad: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        LatencySettings(**bad)


def test_counts_runs_and_applies_settings() -> None:
    model = Recorder().train()
    Recorder.log.clear()
    settings = LatencySettings(batch=2, resolution=8, threads=2, warmup=3, runs=4, repeats=2, channels_last=True)
    before = torch.get_num_threads()
    result = measure_latency_ms(model, settings)
    assert len(Recorder.log) == 3 + 4 * 2, "warm-up + runs x repeats forward passes, no more"
    assert set(Recorder.log) == {((2, 3, 8, 8), 2, True)}
    assert torch.get_num_threads() == before, "thread count must be restored"
    assert model.training and not next(model.parameters()).is_contiguous(memory_format=torch.channels_last)
    assert result.runs_timed == 8 and len(result.repeat_medians_ms) == 2
    for v in (result.median_ms, result.min_ms, result.max_ms, result.throughput_ips):
        assert math.isfinite(v) and v > 0
    assert result.min_ms <= result.median_ms <= result.max_ms
    assert result.throughput_ips == pytest.approx(2 * 1000 / result.median_ms)
    assert result.peak_memory_mb is None  # CPU: no per-model allocator counter


def test_every_call_measures_again() -> None:
    """Same model, same settings, twice: two measurements (a cached result would hide drift, a busy
    machine and in-place edits of the model; review, session 5)."""
    model = Recorder()
    settings = LatencySettings(batch=1, resolution=8, threads=1, warmup=1, runs=2, repeats=1)
    Recorder.log.clear()
    measure_latency_ms(model, settings, load_probe=QUIET)
    measure_latency_ms(model, settings, load_probe=QUIET)
    assert len(Recorder.log) == 2 * (1 + 2)


def test_median_of_repeat_medians_and_noise_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    # runs 1..3 of repeat r take (r+1)*[1, 2, 9] ms: repeat medians 2, 4, 6 -> median 4, spread 100%
    times = itertools.chain.from_iterable(((r + 1) * 1.0, (r + 1) * 2.0, (r + 1) * 9.0) for r in range(3))
    monkeypatch.setattr(latency_mod, "_cpu_run_ms", lambda run: next(times))
    with pytest.warns(NoisyMeasurementWarning, match="noisy"):
        result = measure_latency_ms(nn.Identity(), LatencySettings(resolution=4, warmup=0, runs=3, repeats=3),
                                    load_probe=QUIET)
    assert result.repeat_medians_ms == (2.0, 4.0, 6.0)
    assert (result.median_ms, result.min_ms, result.max_ms, result.noisy) == (4.0, 2.0, 6.0, True)
    assert result.spread == pytest.approx(1.0)


def test_agreeing_repeats_do_not_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    times = iter([10.0, 11.0, 10.5, 10.9])  # within 20%
    monkeypatch.setattr(latency_mod, "_cpu_run_ms", lambda run: next(times))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = measure_latency_ms(nn.Identity(), LatencySettings(resolution=4, warmup=0, runs=1, repeats=4),
                                    load_probe=QUIET)
    assert not result.noisy and not result.busy and result.trusted and result.median_ms == pytest.approx(10.7)
    assert (result.runtime, result.runtime_version, result.load) == ("eager", f"torch {torch.__version__}", 0.0)


@pytest.mark.parametrize("load, share, device, busy", [
    (0.0, 1.0, "cpu", False), (0.2, 0.9, "cpu", False), (0.3, 1.0, "cpu", True), (0.0, 0.5, "cpu", True),
    (0.0, 0.5, "cuda", False),  # a thread waiting on the GPU may sleep: its share is not judged there
    (None, None, "cpu", False),  # no reading (window too short): only the repeats' agreement judges
])
def test_busy_rule(load: float | None, share: float | None, device: str, busy: bool) -> None:
    assert machine_load.is_busy(LoadReading(load, share, 1.0), device) is busy


def test_busy_machine_is_flagged_and_warned() -> None:
    with pytest.warns(BusyMachineWarning, match="other processes used 90% of the machine"):
        result = measure_latency_ms(nn.Identity(), LatencySettings(resolution=4, warmup=0, runs=2, repeats=1),
                                    load_probe=FixedProbe(0.9))
    assert result.busy and not result.trusted and result.load == 0.9
    assert LatencyResult.from_dict(result.to_dict()) == result


def test_real_probe_reads_this_machine() -> None:
    window = machine_load.default_probe(1)
    end = time.perf_counter() + 0.1
    while time.perf_counter() < end:  # keep the timing thread on its CPU for the window
        pass
    reading = window.stop()
    assert reading.window_s >= 0.1 and reading.cpu_share is not None and 0 <= reading.cpu_share <= 1
    assert reading.load is None or 0 <= reading.load <= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no CUDA GPU"):
        measure_latency_ms(nn.Identity(), LatencySettings(device="cuda", runs=1, warmup=0))


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@needs_cuda
def test_cuda_latency_and_memory(precision: str) -> None:
    settings = LatencySettings(device="cuda", batch=4, resolution=16, precision=precision, warmup=2, runs=5,
                               repeats=3, channels_last=True)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    result = measure_latency_ms(model, settings)
    assert result.median_ms > 0 and math.isfinite(result.median_ms)
    assert result.peak_memory_mb is not None and result.peak_memory_mb > 0
    assert next(model.parameters()).device.type == "cpu", "the caller's model must stay where it was"

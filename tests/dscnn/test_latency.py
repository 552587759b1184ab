"""dscnn.latency: protocol defaults, counts of warm-up/timed runs, settings applied and restored."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from torch import Tensor, nn

from dscnn import LatencySettings, NoisyMeasurementWarning, measure_latency_ms
from dscnn import latency as latency_mod

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


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
    gpu = LatencySettings(device="cuda", batch=32)  # constructing settings needs no GPU
    assert (gpu.warmup, gpu.runs) == (50, 200)
    assert LatencySettings(warmup=0, runs=7).runs == 7


@pytest.mark.parametrize("bad, word", [
    ({"batch": 0}, "batch"), ({"repeats": 0}, "repeats"), ({"runs": 0}, "runs"), ({"warmup": -1}, "warmup"),
    ({"threads": 0}, "threads"), ({"resolution": 2.5}, "resolution"), ({"device": "tpu"}, "device"),
    ({"precision": "fp8"}, "precision"), ({"precision": "fp16"}, "GPU-only"),
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


def test_median_of_repeat_medians_and_noise_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    # runs 1..3 of repeat r take (r+1)*[1, 2, 9] ms: repeat medians 2, 4, 6 -> median 4, spread 100%
    times = itertools.chain.from_iterable(((r + 1) * 1.0, (r + 1) * 2.0, (r + 1) * 9.0) for r in range(3))
    monkeypatch.setattr(latency_mod, "_cpu_run_ms", lambda model, x: next(times))
    with pytest.warns(NoisyMeasurementWarning, match="noisy"):
        result = measure_latency_ms(nn.Identity(), LatencySettings(resolution=4, warmup=0, runs=3, repeats=3))
    assert result.repeat_medians_ms == (2.0, 4.0, 6.0)
    assert (result.median_ms, result.min_ms, result.max_ms, result.noisy) == (4.0, 2.0, 6.0, True)
    assert result.spread == pytest.approx(1.0)


def test_agreeing_repeats_do_not_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    times = iter([10.0, 11.0, 10.5, 10.9])  # within 20%
    monkeypatch.setattr(latency_mod, "_cpu_run_ms", lambda model, x: next(times))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoisyMeasurementWarning)
        result = measure_latency_ms(nn.Identity(), LatencySettings(resolution=4, warmup=0, runs=1, repeats=4))
    assert not result.noisy and result.median_ms == pytest.approx(10.7)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no CUDA GPU"):
        measure_latency_ms(nn.Identity(), LatencySettings(device="cuda", runs=1, warmup=0))


@cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_latency_and_memory(precision: str) -> None:
    settings = LatencySettings(device="cuda", batch=4, resolution=16, precision=precision, warmup=2, runs=5,
                               repeats=3, channels_last=True)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    result = measure_latency_ms(model, settings)
    assert result.median_ms > 0 and math.isfinite(result.median_ms)
    assert result.peak_memory_mb is not None and result.peak_memory_mb > 0
    assert next(model.parameters()).device.type == "cpu", "the caller's model must stay where it was"

"""dscnn.runtimes: every runtime available here times a tiny model and computes what eager computes.

CPU here: eager, compile (TorchInductor C++), onnxruntime (CPU provider). CUDA-marked tests (cudagraph,
compile with CUDA graphs, onnxruntime's CUDA provider) run where a GPU is and skip elsewhere.
"""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch
from torch import nn

from dscnn.latency import LatencySettings, measure_latency_ms
from dscnn.runtimes import RUNTIMES, RuntimeUnavailable, available_runtimes, check_runtime, get_runtime
from tests.dscnn.cuda_marks import needs_cuda

FAST = LatencySettings(resolution=16, warmup=1, runs=3, repeats=1)


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def agrees_with_eager(runtime: str, settings: LatencySettings, rel: float = 1e-5) -> None:
    """The runtime's output on its input equals the eager module's on the same input."""
    model = tiny()
    prepared = get_runtime(runtime).prepare(model, settings.replace(runtime=runtime))
    try:
        got = prepared.output()
        with torch.inference_mode():
            expected = model.to(prepared.inputs.device, prepared.inputs.dtype)(prepared.inputs).float().cpu()
    finally:
        prepared.close()
    assert got.shape == expected.shape == (settings.batch, 5)
    torch.testing.assert_close(got, expected, rtol=0, atol=rel * expected.abs().max().item())
    assert next(model.parameters()).requires_grad, "the caller's model is not changed"


def measures(runtime: str, settings: LatencySettings) -> None:
    result = measure_latency_ms(tiny(), settings.replace(runtime=runtime))
    assert result.runtime == runtime and result.runtime_version and result.median_ms > 0
    assert result.runs_timed == settings.runs * settings.repeats  # type: ignore[operator]


@pytest.mark.parametrize("runtime", ["eager", "onnxruntime", "compile"])
def test_cpu_runtimes_agree_with_eager_and_measure(runtime: str) -> None:
    settings = FAST.replace(batch=2)
    agrees_with_eager(runtime, settings)
    measures(runtime, settings)


def test_runtime_records_its_version_and_settings() -> None:
    onnx = check_runtime(FAST.replace(runtime="onnxruntime"))
    assert onnx.version == f"onnxruntime {ort.__version__}" and onnx.settings["provider"] == "CPUExecutionProvider"
    compiled = check_runtime(FAST.replace(runtime="compile"))
    assert compiled.settings["mode"] == "default" and compiled.version == f"torch {torch.__version__}"
    assert get_runtime("compile").info(LatencySettings(device="cuda", runtime="compile")).settings["mode"] == "reduce-overhead"


def test_unknown_and_unavailable_runtimes_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'; valid runtimes: eager, compile, cudagraph, onnxruntime"):
        get_runtime("tensorrt")
    with pytest.raises(RuntimeUnavailable, match="needs device cuda"):
        LatencySettings(runtime="cudagraph")
    with pytest.raises(RuntimeUnavailable, match="needs device cuda"):
        get_runtime("cudagraph").check(FAST)  # also when reached without LatencySettings' check


def test_missing_onnxruntime_provider_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(RuntimeUnavailable, match="CUDAExecutionProvider .*onnxruntime-gpu"):
        get_runtime("onnxruntime").check(LatencySettings(device="cuda", runtime="onnxruntime"))


def test_available_runtimes_on_cpu() -> None:
    usable, missing = available_runtimes(FAST)
    assert usable[0] == "eager" and "onnxruntime" in usable and "cudagraph" in missing
    assert set(usable) | set(missing) == set(RUNTIMES)


@needs_cuda
@pytest.mark.parametrize("runtime", ["eager", "compile", "cudagraph"])
def test_cuda_runtimes_agree_with_eager_and_measure(runtime: str) -> None:
    settings = LatencySettings(device="cuda", resolution=16, batch=2, warmup=2, runs=5, repeats=2)
    agrees_with_eager(runtime, settings, rel=1e-3)  # TF32 convs (cudnn's default) round to ~1e-3
    measures(runtime, settings)


@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cudagraph_half_precision(precision: str) -> None:
    measures("cudagraph", LatencySettings(device="cuda", resolution=16, precision=precision, warmup=2, runs=5))


@needs_cuda
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu")
def test_onnxruntime_cuda_agrees_with_eager() -> None:
    settings = LatencySettings(device="cuda", resolution=16, batch=2, warmup=2, runs=5, repeats=2)
    agrees_with_eager("onnxruntime", settings, rel=1e-3)
    measures("onnxruntime", settings)

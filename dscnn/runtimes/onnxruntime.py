"""``onnxruntime``: the deploy form exported to ONNX (`dscnn.export.export_onnx`) and timed as an InferenceSession.

CPU: ``CPUExecutionProvider`` with the protocol's fixed thread count (``intra_op_num_threads``),
sequential execution and every graph optimisation on, as `python -m dscnn.export` times it. GPU:
``CUDAExecutionProvider`` (package onnxruntime-gpu) with input and output bound to device memory
(IO binding), so no host copy is timed; the session must really run on CUDA, otherwise it is an
error rather than a silent fallback to the CPU. fp32 NCHW only (`LatencySettings` refuses others).

Each run is timed on the wall clock: ``run_with_iobinding`` synchronises its CUDA stream before it
returns, and onnxruntime's stream is not torch's, so CUDA events on torch's stream would not bracket it.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dscnn.runtimes.base import Prepared, RuntimeInfo, RuntimeUnavailable, as_cpu_float

if TYPE_CHECKING:
    from dscnn.latency import LatencySettings

INPUT_NAME, OUTPUT_NAME = "input", "logits"  # the names dscnn.export.export_onnx gives


class OnnxRuntime:
    name = "onnxruntime"

    @staticmethod
    def provider(settings: LatencySettings) -> str:
        return "CUDAExecutionProvider" if settings.device == "cuda" else "CPUExecutionProvider"

    def check(self, settings: LatencySettings) -> None:
        if importlib.util.find_spec("onnxruntime") is None:
            raise RuntimeUnavailable("runtime 'onnxruntime' needs the onnxruntime package (pip install onnxruntime)")
        import onnxruntime as ort

        wanted, available = self.provider(settings), ort.get_available_providers()
        if wanted not in available:
            hint = " (pip install onnxruntime-gpu)" if settings.device == "cuda" else ""
            raise RuntimeUnavailable(f"runtime 'onnxruntime' on {settings.device} needs {wanted}{hint}; "
                                     f"onnxruntime {ort.__version__} has {', '.join(available)}")

    def info(self, settings: LatencySettings) -> RuntimeInfo:
        self.check(settings)  # the version needs the package: a missing one is RuntimeUnavailable, not ImportError
        import onnxruntime as ort

        return RuntimeInfo(self.name, f"onnxruntime {ort.__version__}",
                           {"provider": self.provider(settings), "graph_optimization": "ORT_ENABLE_ALL",
                            "execution_mode": "ORT_SEQUENTIAL", "opset": _opset()})

    def prepare(self, model: torch.nn.Module, settings: LatencySettings) -> Prepared:
        self.check(settings)
        from dscnn.export.files import export_onnx

        with tempfile.TemporaryDirectory(prefix="repnas-ort-") as tmp:
            path = export_onnx(model, Path(tmp) / "model.onnx", resolution=settings.resolution, fuse=False,
                               in_channels=settings.in_channels, opset=_opset())
            session = _session(path, settings)  # the model is read into memory: the file may go
        shape = (settings.batch, settings.in_channels, settings.resolution, settings.resolution)
        x = torch.randn(shape, dtype=torch.float32)
        if settings.device == "cpu":
            feed = {INPUT_NAME: x.numpy()}
            return Prepared(run=lambda: session.run(None, feed), output=lambda: as_cpu_float(session.run(None, feed)),
                            inputs=x, timer="perf_counter")
        return _cuda_prepared(session, x)


def _opset() -> int:
    from dscnn.export.files import DEFAULT_OPSET

    return DEFAULT_OPSET


def _session(path: Path, settings: LatencySettings) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads  # the protocol fixes the thread count
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    if settings.device == "cpu":
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    device_id = torch.cuda.current_device()
    cuda_options = {"device_id": device_id, "cudnn_conv_algo_search": "EXHAUSTIVE"}  # cudnn.benchmark's analogue
    session = ort.InferenceSession(str(path), options, providers=[("CUDAExecutionProvider", cuda_options)])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeUnavailable(f"runtime 'onnxruntime': the CUDA provider did not load (session runs on "
                                 f"{', '.join(session.get_providers())}); check the CUDA/cuDNN libraries onnxruntime-gpu needs")
    return session


def _cuda_prepared(session: Any, x_cpu: torch.Tensor) -> Prepared:
    device_id = torch.cuda.current_device()
    x = x_cpu.to(f"cuda:{device_id}").contiguous()
    torch.cuda.synchronize()  # the input is written on torch's stream; onnxruntime reads it on its own
    binding = session.io_binding()
    binding.bind_input(INPUT_NAME, "cuda", device_id, np.float32, tuple(x.shape), x.data_ptr())
    binding.bind_output(OUTPUT_NAME, "cuda", device_id)

    def run() -> None:
        session.run_with_iobinding(binding)

    def output() -> torch.Tensor:
        run()
        return as_cpu_float(binding.copy_outputs_to_cpu())

    return Prepared(run=run, output=output, inputs=x, timer="perf_counter")

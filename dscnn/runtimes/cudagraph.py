"""``cudagraph``: the deploy form captured once as a CUDA graph and replayed (CUDA only).

Capture follows PyTorch's recipe (torch.cuda.graphs): a few warm-up passes on a side stream (so
that cudnn.benchmark picks its kernels and lazy initialisation happens outside the capture), then
one capture with `torch.cuda.graph`; every timed run is one `CUDAGraph.replay()` on the static input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from dscnn.runtimes.base import Prepared, RuntimeInfo, RuntimeUnavailable, torch_model_and_input

if TYPE_CHECKING:
    from dscnn.latency import LatencySettings

CAPTURE_WARMUP = 3  # side-stream passes before capture (PyTorch's documented recipe uses 3)


class CudaGraphRuntime:
    name = "cudagraph"

    def check(self, settings: LatencySettings) -> None:
        if settings.device != "cuda":
            raise RuntimeUnavailable(f"runtime 'cudagraph' needs device cuda (CUDA graphs are NVIDIA-GPU only), "
                                     f"got {settings.device!r}")
        if not torch.cuda.is_available():
            raise RuntimeUnavailable("runtime 'cudagraph' needs a CUDA GPU; torch.cuda.is_available() is False")

    def info(self, settings: LatencySettings) -> RuntimeInfo:
        return RuntimeInfo(self.name, f"torch {torch.__version__} cuda {torch.version.cuda}",
                           {"capture_warmup": CAPTURE_WARMUP})

    def prepare(self, model: torch.nn.Module, settings: LatencySettings) -> Prepared:
        self.check(settings)
        module, x = torch_model_and_input(model, settings)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(CAPTURE_WARMUP):
                module(x)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = module(x)

        def output() -> torch.Tensor:
            graph.replay()
            torch.cuda.synchronize()
            return static_out.detach().to("cpu", torch.float32).clone()

        return Prepared(run=graph.replay, output=output, inputs=x, timer="cuda_events", close=graph.reset)

"""``compile``: ``torch.compile`` (TorchInductor) of the deploy form.

On the GPU with ``mode="reduce-overhead"``, which replays the compiled graph as CUDA graphs and so
removes the per-kernel launch cost that dominates batch-1 latency (docs/design.md section 11); on
the CPU with the default mode (inductor's C++/OpenMP kernels; needs a C++ compiler).

interpretation: dynamo's caches are reset before each model (`torch._dynamo.reset`), because
instances of one class share compiled code guarded on the instance, and past the recompile limit
dynamo silently falls back to eager: a search compiles hundreds of instances of a few classes.
Compilation happens in `prepare` (one untimed call), before the protocol's warm-up runs.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

import torch

from dscnn.runtimes.base import Prepared, RuntimeInfo, RuntimeUnavailable, as_cpu_float, torch_model_and_input

if TYPE_CHECKING:
    from dscnn.latency import LatencySettings


class CompileRuntime:
    name = "compile"

    @staticmethod
    def mode(settings: LatencySettings) -> str:
        return "reduce-overhead" if settings.device == "cuda" else "default"

    def check(self, settings: LatencySettings) -> None:
        if settings.device == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            raise RuntimeUnavailable("runtime 'compile' on cpu needs a C++ compiler (g++/clang++) for TorchInductor; none found")
        if settings.device == "cuda":
            try:
                import triton  # noqa: F401  (inductor's GPU code generator)
            except ImportError:
                raise RuntimeUnavailable("runtime 'compile' on cuda needs triton (pip install triton)") from None

    def info(self, settings: LatencySettings) -> RuntimeInfo:
        return RuntimeInfo(self.name, f"torch {torch.__version__}",
                           {"backend": "inductor", "mode": self.mode(settings), "dynamic": False})

    def prepare(self, model: torch.nn.Module, settings: LatencySettings) -> Prepared:
        module, x = torch_model_and_input(model, settings)
        torch._dynamo.reset()
        mode = self.mode(settings)
        compiled: Any = torch.compile(module, mode=None if mode == "default" else mode, dynamic=False)
        cuda_graphs = settings.device == "cuda"

        def run() -> Any:
            if cuda_graphs:  # a new step for cudagraph trees: the previous run's outputs may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            return compiled(x)

        run()  # compile now, not inside the first timed repeat
        return Prepared(run=run, output=lambda: as_cpu_float(run()), inputs=x,
                        timer="cuda_events" if cuda_graphs else "perf_counter", close=torch._dynamo.reset)

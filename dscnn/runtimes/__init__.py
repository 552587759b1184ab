"""Deployment runtimes a latency is measured in (docs/design.md section 11): one name, one setting.

``LatencySettings.runtime`` names one of `RUNTIMES`; `get_runtime` returns its implementation. A
runtime that cannot run here raises `RuntimeUnavailable` (a `ValueError`, one line; the CLIs exit
2): nothing ever falls back silently to another runtime.

- ``eager`` (`dscnn.runtimes.eager`): the module called from Python (the default).
- ``compile`` (`dscnn.runtimes.compile`): ``torch.compile``; ``mode="reduce-overhead"`` on GPU.
- ``cudagraph`` (`dscnn.runtimes.cudagraph`): captured once, replayed; CUDA only.
- ``onnxruntime`` (`dscnn.runtimes.onnxruntime`): exported to ONNX, timed as an InferenceSession.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dscnn.runtimes.base import Prepared, Runtime, RuntimeInfo, RuntimeUnavailable

if TYPE_CHECKING:
    from dscnn.latency import LatencySettings

__all__ = ["RUNTIMES", "Prepared", "Runtime", "RuntimeInfo", "RuntimeUnavailable", "available_runtimes",
           "check_runtime", "get_runtime", "validate_runtime_name"]

RUNTIMES = ("eager", "compile", "cudagraph", "onnxruntime")


def validate_runtime_name(name: object) -> str:
    """``name`` if it is a known runtime, else a one-line ValueError listing the valid ones."""
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; valid runtimes: {', '.join(RUNTIMES)}")
    return str(name)


def get_runtime(name: str) -> Runtime:
    """The implementation of runtime ``name`` (imported on first use: onnxruntime is a heavy import)."""
    validate_runtime_name(name)
    if name == "eager":
        from dscnn.runtimes.eager import EagerRuntime

        return EagerRuntime()
    if name == "compile":
        from dscnn.runtimes.compile import CompileRuntime

        return CompileRuntime()
    if name == "cudagraph":
        from dscnn.runtimes.cudagraph import CudaGraphRuntime

        return CudaGraphRuntime()
    from dscnn.runtimes.onnxruntime import OnnxRuntime

    return OnnxRuntime()


def check_runtime(settings: LatencySettings) -> RuntimeInfo:
    """Raise `RuntimeUnavailable` when ``settings.runtime`` cannot run here; else its version and settings."""
    runtime = get_runtime(settings.runtime)
    runtime.check(settings)
    return runtime.info(settings)


def available_runtimes(settings: LatencySettings) -> tuple[list[str], dict[str, str]]:
    """The runtimes that can time ``settings`` here (in `RUNTIMES` order) and why each other one cannot."""
    usable: list[str] = []
    missing: dict[str, str] = {}
    for name in RUNTIMES:
        try:
            check_runtime(settings.replace(runtime=name))
        except ValueError as exc:  # RuntimeUnavailable, or settings this runtime refuses (LatencySettings)
            missing[name] = str(exc)
        else:
            usable.append(name)
    return usable, missing

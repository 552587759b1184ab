"""The machine a measurement ran on, recorded beside every latency report and in every cache key."""

from __future__ import annotations

import functools
import os
import platform
from typing import Any

import torch


@functools.cache
def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware_id(device: str) -> str:
    """What the timings depend on beyond the settings: the processor and the torch build."""
    name = torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else cpu_model()
    return f"{name}|torch {torch.__version__}"


def environment(device: str, threads: int) -> dict[str, Any]:
    """A JSON-ready record of the software and hardware behind a measurement."""
    env: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": _cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": threads,
        "device": device,
    }
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if device == "cuda" and torch.cuda.is_available():
        env.update(
            gpu_name=torch.cuda.get_device_name(),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
            cudnn_benchmark=True,  # the protocol turns it on while timing (dscnn.latency)
        )
    return env


def _cpu_count() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

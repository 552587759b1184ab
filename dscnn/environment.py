"""The machine a measurement ran on, recorded beside every latency report and in every cache key;
and the code it ran (`git_revision`), recorded beside benchmark rows."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path
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
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    env.update(machine_state())
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


def machine_state() -> dict[str, Any]:
    """How busy the machine is right now: ``uptime``'s line and the 1/5/15-minute load averages per core."""
    state: dict[str, Any] = {}
    try:
        state["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        cores = os.cpu_count() or 1
        state["load_average"] = list(os.getloadavg())
        state["load_average_per_core"] = [round(v / cores, 3) for v in os.getloadavg()]
    except OSError:
        pass
    return state


def git_revision(path: str | Path | None = None) -> dict[str, Any] | None:
    """``{"commit": 40-hex HEAD, "dirty": tracked files differ from it}`` of the git checkout holding
    ``path`` (default: this package's checkout); None outside a checkout or without git, never raises.
    Untracked files do not count as dirty: results and caches written beside the code would mark every run."""
    folder = Path(path) if path is not None else Path(__file__).resolve().parent
    if not folder.is_dir():
        return None

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    try:
        # --no-optional-locks: status would otherwise refresh the index under .git/index.lock, and a
        # benchmark recording its revision must not make a concurrent `git commit` in the checkout fail
        dirty = bool(git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no"))
        return {"commit": git("rev-parse", "HEAD"), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_count() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

"""Which memory format trains faster on this device: decided by a small measured probe (SPEC 9).

``channels_last`` (NHWC) makes oneDNN's depthwise convolutions and batch norms several times faster
on CPU (measured here: a DW 3x3 forward ~6x, a whole dscnn_t0 train step ~2x), but whether it wins
depends on the device, the library build and the precision, so it is measured, not assumed: one
training step of a small MetaLight-like stack (1x1 conv-BN-ReLU, DW 3x3 conv-BN-ReLU, 1x1 conv-BN)
in both formats, alternated, best of a few runs each, once per (device, threads) per process. Results agree
to rounding in both formats (the same maths; the two layouts' kernels may sum in another order, so a long
training run can drift apart by seed-noise sizes: a study that resumes pins the choice, `studies.stage2`).
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


@dataclass(frozen=True)
class FormatChoice:
    """The chosen format and the probe's evidence (ms per step; 0 when not measured)."""

    name: str  # "channels_last" or "contiguous"
    probe_ms_channels_last: float = 0.0
    probe_ms_contiguous: float = 0.0

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.name == "channels_last" else torch.contiguous_format

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


def _probe_net(channels: int) -> nn.Sequential:
    hidden = 2 * channels
    return nn.Sequential(
        nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
        nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
        nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels),
    )


def _step_ms(net: nn.Module, x: torch.Tensor) -> float:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    t0 = time.perf_counter()
    net(x).square().mean().backward()
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return (time.perf_counter() - t0) * 1e3


#: Timed steps per format, alternated (ABBA...) so that load from other processes hits both alike.
PROBE_REPEATS = 6


@functools.cache
def _measured(device: str, threads: int) -> FormatChoice:
    torch.manual_seed(0)
    dev = torch.device(device)
    batch, channels, size = (32, 32, 16) if dev.type == "cpu" else (128, 64, 32)
    base = _probe_net(channels).to(dev).train()
    x = torch.randn(batch, channels, size, size, device=dev)
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    nets = {name: copy.deepcopy(base).to(memory_format=fmt) for name, fmt in formats.items()}
    inputs = {name: x.contiguous(memory_format=fmt) for name, fmt in formats.items()}
    times: dict[str, float] = {name: float("inf") for name in formats}
    for name in formats:  # warm-up
        _step_ms(nets[name], inputs[name])
    for i in range(PROBE_REPEATS):
        order = list(formats) if i % 2 == 0 else list(reversed(formats))
        for name in order:
            times[name] = min(times[name], _step_ms(nets[name], inputs[name]))
    best = min(times, key=times.__getitem__)
    return FormatChoice(best, times["channels_last"], times["contiguous"])


def choose_memory_format(device: torch.device | str, requested: str = "auto") -> FormatChoice:
    """The training memory format for ``device``: ``requested`` unless "auto", then the probe's pick.

    The probe runs once per device and thread count per process (about 0.2 s on a CPU).
    """
    if requested not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory format {requested!r}; valid: {', '.join(MEMORY_FORMATS)}")
    if requested != "auto":
        return FormatChoice(requested)
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        return _measured(str(dev), torch.get_num_threads())

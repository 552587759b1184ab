"""How busy the machine was while a latency was timed, so that a number timed under load is never cached.

Repeats that agree do not prove a quiet machine: on a uniformly busy one every repeat is slow by
the same amount (issue 15: baselines cached at 9.07 and 9.23 ms that time at 5.9 and 3.9 ms on a
quiet machine). Two readings are taken over the timing window (warm-up excluded):

- ``load``: CPU time used by *other* processes during the window, as a fraction of the whole
  machine (0 = the other cores were idle, 1 = every core busy with other work). Linux
  ``/proc/stat`` busy time minus this process's own CPU time; where ``/proc/stat`` does not exist,
  the 1-minute load average minus this measurement's threads, over the core count (coarser: it lags
  by a minute and cannot tell this process's earlier work from others').
- ``cpu_share``: the share of the window in which the timing thread itself was on a CPU
  (``time.thread_time`` over wall time). Below 1 means the scheduler gave its core to someone else.
  Recorded on every device, judged on the CPU only (a thread waiting on a GPU may sleep).

interpretation of the thresholds (`BUSY_LOAD`, `MIN_CPU_SHARE`): a measurement is *busy* when
other processes used more than a quarter of the machine, i.e. half a core of sustained other work
on the 2-core development machines, where a measurement with 1 thread leaves exactly one core for
everything else and shares caches, memory bandwidth and (on SMT siblings) execution units with
it; or when the timing thread was off its CPU more than 15% of the window, which is time that went
into the measured milliseconds. Short windows are read coarsely (clock ticks are 10 ms): under
`MIN_WINDOW_S` the load is not judged (None), only the repeats' agreement is.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Protocol

#: Other processes' share of the machine above which a measurement counts as busy.
BUSY_LOAD = 0.25
#: The timing thread's on-CPU share below which a CPU measurement counts as busy.
MIN_CPU_SHARE = 0.85
#: Timing windows shorter than this are too short for tick-based CPU accounting: load not judged.
MIN_WINDOW_S = 0.05


@dataclass(frozen=True)
class LoadReading:
    """The machine's state over one timing window."""

    load: float | None  # other processes' CPU use / whole machine, 0..1; None = unknown
    cpu_share: float | None  # timing thread's on-CPU time / wall time; None = unknown
    window_s: float  # wall time of the window


class LoadWindow(Protocol):
    def stop(self) -> LoadReading: ...


class LoadProbe(Protocol):
    """Starts a window at the first timed run; ``stop()`` on the window reads it. Injectable for tests."""

    def __call__(self, threads: int) -> LoadWindow: ...


def is_busy(reading: LoadReading, device: str) -> bool:
    """Whether a measurement taken during ``reading`` must not be trusted (see the module docstring)."""
    if reading.load is not None and reading.load > BUSY_LOAD:
        return True
    return device == "cpu" and reading.cpu_share is not None and reading.cpu_share < MIN_CPU_SHARE


def describe(reading: LoadReading) -> str:
    parts = []
    if reading.load is not None:
        parts.append(f"other processes used {reading.load:.0%} of the machine (limit {BUSY_LOAD:.0%})")
    if reading.cpu_share is not None:
        parts.append(f"the timing thread ran {reading.cpu_share:.0%} of the time (limit {MIN_CPU_SHARE:.0%})")
    return "; ".join(parts) or "no load reading"


class _ProcStatWindow:
    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.wall = time.perf_counter()
        self.thread_cpu = time.thread_time()
        self.own = _own_cpu_s()
        self.busy = _machine_busy_s()

    def stop(self) -> LoadReading:
        wall = time.perf_counter() - self.wall
        share = (time.thread_time() - self.thread_cpu) / wall if wall > 0 else None
        if wall < MIN_WINDOW_S:
            return LoadReading(None, _clip(share), wall)
        busy = _machine_busy_s()
        if busy is not None and self.busy is not None:
            others = (busy - self.busy) - (_own_cpu_s() - self.own)
            load: float | None = others / (wall * _machine_cores())
        else:
            load = _loadavg_estimate(self.threads)
        return LoadReading(_clip(load), _clip(share), wall)


def default_probe(threads: int) -> LoadWindow:
    """The real probe: /proc/stat (or the load average) and the timing thread's CPU clock."""
    return _ProcStatWindow(threads)


def _clip(value: float | None) -> float | None:
    return None if value is None else min(1.0, max(0.0, value))


def _machine_cores() -> int:
    return os.cpu_count() or 1  # /proc/stat's total covers every online CPU, not only our affinity


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _machine_busy_s() -> float | None:
    """CPU seconds spent busy by all CPUs since boot (user+nice+system+irq+softirq+steal), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 8:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    steal = int(fields[8]) if len(fields) > 8 else 0
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _loadavg_estimate(threads: int) -> float | None:
    try:
        one_minute = os.getloadavg()[0]
    except OSError:
        return None
    return max(0.0, one_minute - threads) / _machine_cores()

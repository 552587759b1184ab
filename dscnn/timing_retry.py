"""Timing again while a timing cannot be trusted: the one retry loop behind every "wait out a busy spell".

Interference on a shared machine comes and goes within minutes (the 2-core VMs this project was
built on ran 1.1-1.8x slower for a while with no load visible from inside), so a timing that is
busy, noisy or slowed as a whole is taken again after a pause, outside any device lock, so other
workers can time meanwhile. The callers differ only in what "good" means and in what they keep when
no attempt was good: the pruning harness the fastest (`pruning.latency_table.harness`), a budget
reference the fastest that was not busy or an error (`searchspace.budget_of`), a side-by-side run the
least slowed (`studies.timing_drift.least_slowed`). So this returns every attempt and they pick.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["retry_until"]

T = TypeVar("T")


def retry_until(take: Callable[[], T], good: Callable[[T], bool], attempts: int, pause_s: float,
                retrying: Callable[[T, int], None] | None = None) -> list[T]:
    """``take()`` until a result is ``good`` or ``attempts`` were taken, ``pause_s`` apart.

    ``retrying(last, attempt)`` is told before each pause (``attempt`` numbers the one about to be
    taken, from 2). Returns every result in order; the last is the first good one when any was.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    results = [take()]
    while not good(results[-1]) and len(results) < attempts:
        if retrying is not None:
            retrying(results[-1], len(results) + 1)
        time.sleep(pause_s)
        results.append(take())
    return results

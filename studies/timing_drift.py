"""Is a side-by-side timing run slower as a whole than the same models were in stage 1?

Stage 2 decides which baselines fit the budget from one interleaved timing of every candidate
(`studies.stage2`). Interleaving makes the *ratios* between models robust, but not the absolute
milliseconds the budget is written in. On the shared 2-core VM these sessions ran on, the whole
machine moved between speeds with no load visible from inside it (no other process, timing thread
on its CPU 99.9% of the window, no steal time reported): in the Tiny-ImageNet equal-latency study
one side-by-side run timed the candidates 1.10-1.75x their stage-1 numbers (median 1.61x), so every
baseline fell over a budget it had met, and a 1-thread ResNet-20 timed 2.1-3.4 ms in runs 20 s apart.

Interference only ever adds time, so a run in which *every* model is slower than stage 1 measured it
(the median ratio over `SLOWED` above 1) says the machine was slowed, not that the models changed;
a run faster than stage 1 is the better measurement and is kept. The model-specific part of the
drift (one model faster, another slower: -8% to +18% in the CIFAR-10 CPU study) is what the side-by-
side run is for, and the median ignores it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from typing import TypeVar

from dscnn.timing_retry import retry_until

__all__ = ["SLOWED", "TIMING_ATTEMPTS", "TIMING_PAUSE_S", "least_slowed", "slowdown", "slowed"]

#: A side-by-side run whose median ratio to stage 1 is above this was slowed as a whole.
SLOWED = 1.15
#: Timings at most while they are slowed as a whole ...
TIMING_ATTEMPTS = 4
#: ... this many seconds apart (the slow spells of the shared VM came and went within minutes).
TIMING_PAUSE_S = 30.0

T = TypeVar("T")


def slowdown(side_by_side_ms: Mapping[str, float], stage1_ms: Mapping[str, float | None]) -> float | None:
    """Median over the models timed in both of side-by-side ms / stage-1 ms; None when none was."""
    ratios = [side_by_side_ms[k] / v for k, v in stage1_ms.items() if v and k in side_by_side_ms]
    return statistics.median(ratios) if ratios else None


def slowed(factor: float | None, limit: float = SLOWED) -> bool:
    """Was the run slowed as a whole (`slowdown` above ``limit``)? Unknown counts as no."""
    return factor is not None and factor > limit


def least_slowed(measure: Callable[[], T], factor_of: Callable[[T], float | None],
                 retrying: Callable[[float, int], None]) -> tuple[T, float | None, list[float | None]]:
    """``measure()`` taken again while its ``factor_of`` is `slowed`, up to `TIMING_ATTEMPTS` times
    `TIMING_PAUSE_S` apart (``retrying(factor, attempt)`` is told before each pause, attempt counting
    from 2). Returns the least slowed result, its factor, and every attempt's factor."""
    def take() -> tuple[T, float | None]:
        result = measure()
        return result, factor_of(result)

    attempts = retry_until(take, lambda attempt: not slowed(attempt[1]), TIMING_ATTEMPTS, TIMING_PAUSE_S,
                           lambda last, attempt: retrying(last[1] or 0.0, attempt))
    result, factor = min(attempts, key=lambda attempt: attempt[1] or 0.0)  # the first of the least slowed
    return result, factor, [f for _, f in attempts]

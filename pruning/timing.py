"""Did pruning make the model faster? Both models timed in one interleaved run under the device lock.

Timing the unpruned model at the start of a run and the pruned one at its end, minutes apart,
compares two machine states as much as two models (the same pruned model read 20.4 -> 14.9 ms
and 3.44 -> 3.36 ms that way). Here the two are timed in alternation, repeat by repeat (ABBA
order, so a steady drift favours neither), each repeat being one `dscnn.latency.measure_latency_ms`
run (its own warm-up, then the timed runs) under the docs/design.md section 4 protocol, while the
machine-wide device lock (`searchspace.device_lock.DeviceLock.measuring`) keeps searches and
trainings that honour it off the device; the interleaving is `dscnn.side_by_side`'s, which stage 2
of a study uses for its candidates too. Each model's repeats give its median and its noise flag
(repeats more than `dscnn.latency.NOISE_TOLERANCE` apart, or a repeat timed on a machine that
`dscnn.latency` found busy), as everywhere else.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from dscnn.latency import NOISE_TOLERANCE, LatencyResult, LatencySettings, NoisyMeasurementWarning
from dscnn.side_by_side import measure_side_by_side

if TYPE_CHECKING:
    from searchspace.device_lock import DeviceLock


@dataclass(frozen=True)
class LatencyComparison:
    """The same protocol on two models, interleaved."""

    before: LatencyResult
    after: LatencyResult

    @property
    def change(self) -> float:
        """Relative change of the median latency, after / before - 1 (negative: faster)."""
        return self.after.median_ms / self.before.median_ms - 1.0

    @property
    def noisy(self) -> bool:
        return self.before.noisy or self.after.noisy


def compare_latency(before: nn.Module, after: nn.Module, settings: LatencySettings,
                    lock: DeviceLock | None = None) -> LatencyComparison:
    """Time ``before`` and ``after`` alternately, ``settings.repeats`` times each, holding ``lock``."""
    if lock is None:
        from searchspace.device_lock import DeviceLock  # here: importing searchspace loads all of it (optuna)

        lock = DeviceLock()
    results = measure_side_by_side({"before": before, "after": after}, settings, guard=lock.measuring())
    return LatencyComparison(*(_flagged(results[name], name) for name in ("before", "after")))


def _flagged(result: LatencyResult, label: str) -> LatencyResult:
    """``noisy`` also when a repeat found the machine busy; a warning when the repeats disagree."""
    if result.noisy:
        warnings.warn(
            f"latency of the {'unpruned' if label == 'before' else 'pruned'} model: repeats disagree by more than "
            f"{NOISE_TOLERANCE:.0%} ({', '.join(f'{m:.3f}' for m in result.repeat_medians_ms)} ms): the machine is noisy",
            NoisyMeasurementWarning, stacklevel=3,
        )
    return dataclasses.replace(result, noisy=result.noisy or result.busy)

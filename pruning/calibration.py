"""The latency budget the pruners plan with, corrected by measuring their plan whole before any training.

The latency table (`pruning.latency_table`) predicts a pruned model's latency from layers timed
alone. In the CIFAR-10 CPU study (studies/cifar10_cpu_two_stage) its predictions at the widths the
methods chose were 10-31% below what the pruned models then measured, so methods that planned to the
table's number missed the target after all their training (ResRep 1.79 and C-SGD 2.34 ms for a
1.61 ms target). Here, before training, the uniform widths that the table says meet the budget are cut
out of the unpruned model (`narrowed_to`: latency depends on the shapes, not on the weights), that copy
is timed whole with the run's harness, and the budget is scaled by ``target / measured``; again, up to
`ROUNDS` times, until the plan measures at most `TOLERANCE` below the target. The budget handed to the
algorithm is the largest one whose plan measured at or under the target. The algorithms then select
their widths under it, in predicted ms, as before (ResRep's global ranking, C-SGD's and magnitude's
uniform ratio), and the final pruned model is still measured against the target itself.

interpretation: the correction found at uniform widths is also applied to ResRep's non-uniform widths.
The table's error is mostly what standalone layer timings leave out of the graph (per-layer call
overhead, cache state between layers), which both share; the final measurement still decides.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn

from pruning.algorithm import PruningError
from pruning.groups import ChannelGroup
from pruning.latency_table import LatencyCost, LatencyTable, Measure, narrowed_to
from pruning.widths import uniform_widths

__all__ = ["ROUNDS", "TOLERANCE", "Calibration", "CalibrationRound", "calibrate_budget"]

#: Whole-model measurements of the plan at most (each one is a few hundred runs of the model).
ROUNDS = 4
#: A plan measured within this fraction below the target is close enough: stop measuring.
TOLERANCE = 0.03


@dataclass(frozen=True)
class CalibrationRound:
    budget_ms: float  # predicted-ms budget the uniform widths were planned for
    keep_ratio: float  # the uniform keep ratio the table gives for it
    predicted_ms: float  # the table's prediction at those widths
    measured_ms: float  # the unpruned model cut to those widths, timed whole


@dataclass(frozen=True)
class Calibration:
    target_ms: float  # what the pruned model must measure
    budget_ms: float  # the predicted-ms budget the algorithm plans with
    rounds: tuple[CalibrationRound, ...]
    verified: bool  # a plan at ``budget_ms`` measured at or under the target

    @property
    def factor(self) -> float:
        """measured / predicted of the round whose budget was chosen (else the last): how far the table
        was off at the plan's scale."""
        chosen = next((r for r in self.rounds if r.budget_ms == self.budget_ms), self.rounds[-1])
        return chosen.measured_ms / chosen.predicted_ms if chosen.predicted_ms > 0 else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"target_ms": self.target_ms, "budget_ms": self.budget_ms, "verified": self.verified,
                "factor": self.factor, "rounds": [asdict(r) for r in self.rounds]}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Calibration:
        return cls(float(doc["target_ms"]), float(doc["budget_ms"]),
                   tuple(CalibrationRound(**r) for r in doc["rounds"]), bool(doc["verified"]))


def calibrate_budget(model: nn.Module, groups: Iterable[ChannelGroup], example: Tensor, table: LatencyTable,
                     target_ms: float, measure: Measure, rounds: int = ROUNDS,
                     tolerance: float = TOLERANCE) -> Calibration:
    """The budget (predicted ms) whose uniform plan measures at, or just under, ``target_ms``.

    ``measure`` times a model whole (the run's harness; the caller holds the device lock).

    Raises:
        PruningError: when the correction asks for less than one channel per prunable layer is
            predicted to reach: the target is out of reach as measured.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    groups = tuple(groups)
    cost = LatencyCost(table, groups)
    budget = target_ms
    done: list[CalibrationRound] = []
    for _ in range(rounds):
        try:
            ratio, widths = uniform_widths(groups, cost, budget)
        except PruningError:
            if not done:  # the target itself is below one channel per layer, as predicted
                raise
            last = done[-1]
            raise PruningError(
                f"latency target {target_ms:.4g} ms is out of reach as measured: the model cut to the widths the "
                f"latency table predicts at {last.predicted_ms:.4g} ms measures {last.measured_ms:.4g} ms, and "
                f"correcting for that asks for {budget:.4g} ms predicted, below one channel per prunable layer"
            ) from None
        measured = measure(narrowed_to(model, groups, widths, example))
        done.append(CalibrationRound(budget, ratio, table.predict(widths), measured))
        if target_ms * (1 - tolerance) <= measured <= target_ms:
            break
        budget *= target_ms / measured
    fitting = [r for r in done if r.measured_ms <= target_ms]
    if fitting:
        return Calibration(target_ms, max(r.budget_ms for r in fitting), tuple(done), verified=True)
    return Calibration(target_ms, budget, tuple(done), verified=False)  # the last correction, not measured

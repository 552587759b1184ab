"""The epoch pruner may stop a trial between epochs, never after its last one (that saves nothing and
would throw a finished proxy training away: stage 2 only carries trained trials)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from searchspace.objective import ObjectiveSettings, SearchObjective, TrialCost


class PruneFrom(optuna.pruners.BasePruner):
    """Says "prune" at every step from ``step`` on."""

    def __init__(self, step: int) -> None:
        self.step = step

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return (trial.last_step or 0) >= self.step


def _run(tmp_path: Path, pruner: optuna.pruners.BasePruner, epochs: int) -> tuple[optuna.trial.FrozenTrial, list[int]]:
    settings = ObjectiveSettings(space="dscnn", num_classes=10, resolution=32, budget_ms=10.0, budget_macs=None,
                                 pareto=False, epochs=epochs, checkpoint_dir=tmp_path)
    cost = TrialCost(latency_ms=1.0, latency_spread_ms=0.0, macs=1, params_train=1, params_deploy=1, device="cpu")
    seen: list[int] = []

    def train(model: torch.nn.Module, on_epoch: Callable[[int, float], None], seed: int | None = None) -> float:
        for epoch in range(epochs):
            seen.append(epoch)
            on_epoch(epoch, 0.1 * (epoch + 1))
        return 0.1 * epochs

    study = optuna.create_study(direction="maximize", pruner=pruner)
    study.optimize(SearchObjective(settings, lambda model: cost, train), n_trials=1)
    return study.trials[0], seen


def test_a_trial_is_pruned_between_epochs(tmp_path: Path) -> None:
    trial, seen = _run(tmp_path, PruneFrom(0), epochs=3)
    assert trial.state == TrialState.PRUNED and seen == [0]


def test_a_trial_that_trained_every_epoch_is_kept(tmp_path: Path) -> None:
    trial, seen = _run(tmp_path, PruneFrom(1), epochs=2)  # the pruner would stop it after its last epoch
    assert trial.state == TrialState.COMPLETE and seen == [0, 1]
    assert trial.value == 0.2 and trial.user_attrs["accuracy"] == 0.2

"""A sampled architecture that an earlier trial already took is not trained again (TPE repeats itself early)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from searchspace.baselines import get_baseline
from searchspace.objective import ObjectiveSettings, SearchObjective, TrialCost

COST = TrialCost(latency_ms=1.0, latency_spread_ms=0.0, macs=1, params_train=1, params_deploy=1, device="cpu")


def _study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pareto: bool,
           arch_of: Callable[[int], str]) -> tuple[optuna.Study, list[int]]:
    """Four trials whose architecture is ``arch_of(trial number)`` (a baseline label); the trials trained."""
    settings = ObjectiveSettings(space="dscnn", num_classes=10, resolution=32, budget_ms=10.0, budget_macs=None,
                                 pareto=pareto, epochs=1, checkpoint_dir=tmp_path)
    monkeypatch.setattr(SearchObjective, "config_for", lambda self, trial: get_baseline(arch_of(trial.number)).config(
        num_classes=10, resolution=32))
    trained: list[int] = []

    def train(model: torch.nn.Module, on_epoch: Callable[[int, float], None], seed: int | None = None) -> float:
        trained.append(seed or 0)
        return 0.25 + 0.01 * len(trained)

    directions = ["maximize", "minimize"] if pareto else ["maximize"]
    study = optuna.create_study(directions=directions)
    study.optimize(SearchObjective(settings, lambda model: COST, train), n_trials=4)
    return study, trained


def test_a_repeated_architecture_is_pruned_as_a_duplicate_without_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study, trained = _study(tmp_path, monkeypatch, False, lambda n: "resnet20" if n != 2 else "fasternet_t0_w0.5")
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE, TrialState.PRUNED]
    assert len(trained) == 2
    assert [t.user_attrs.get("duplicate_of") for t in study.trials] == [None, 0, None, 0]
    assert study.best_trial.number == 2 and study.trials[0].value == pytest.approx(0.26)


def test_a_pareto_duplicate_scores_what_its_original_did(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study, trained = _study(tmp_path, monkeypatch, True, lambda n: "resnet20")
    assert len(trained) == 1 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert all(t.values == study.trials[0].values for t in study.trials)
    assert all("accuracy" not in t.user_attrs for t in study.trials[1:])  # reports count the original only


@pytest.mark.parametrize("pareto", [False, True])
def test_two_trials_measuring_one_architecture_at_once_train_it_once(tmp_path: Path, pareto: bool) -> None:
    settings = ObjectiveSettings(space="dscnn", num_classes=10, resolution=32, budget_ms=10.0, budget_macs=None,
                                 pareto=pareto, epochs=1, checkpoint_dir=tmp_path)
    objective = SearchObjective(settings, lambda model: COST, lambda *a, **k: 0.5)
    arch = get_baseline("resnet20").config(num_classes=10, resolution=32)
    objective.config_for = lambda trial: arch  # type: ignore[method-assign]
    study = optuna.create_study(directions=["maximize", "minimize"] if pareto else ["maximize"])
    first, second = study.ask(), study.ask()
    first.set_user_attr("arch", arch.to_json())  # what cost_step records before measuring (two workers: both)
    later = objective.cost_step(second)  # measured first: the earlier trial, still running, is the original
    earlier = objective.cost_step(first)  # the later trial, running too, is not
    assert later.duplicate_of == first.number and earlier.duplicate_of is None and earlier.feasible
    with pytest.raises(optuna.TrialPruned, match=f"duplicate of trial {first.number}"):
        objective.reject(later)  # no values to copy yet: pruned, never a zero-accuracy point on a Pareto front


def test_an_architecture_whose_original_failed_is_trained_by_its_next_sample(tmp_path: Path) -> None:
    """Trial 1 is pruned as a duplicate of trial 0 while 0 trains; 0 then fails: trial 2 must train it."""
    settings = ObjectiveSettings(space="dscnn", num_classes=10, resolution=32, budget_ms=10.0, budget_macs=None,
                                 pareto=False, epochs=1, checkpoint_dir=tmp_path)
    objective = SearchObjective(settings, lambda model: COST, lambda *a, **k: 0.5)
    arch = get_baseline("resnet20").config(num_classes=10, resolution=32)
    objective.config_for = lambda trial: arch  # type: ignore[method-assign]
    study = optuna.create_study()
    original, duplicate = study.ask(), study.ask()
    assert objective.cost_step(original).feasible
    assert objective.cost_step(duplicate).duplicate_of == original.number
    study.tell(duplicate, state=TrialState.PRUNED)
    study.tell(original, state=TrialState.FAIL)
    again = study.ask()
    step = objective.cost_step(again)
    assert step.duplicate_of is None and step.feasible

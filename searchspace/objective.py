"""The trial objective: cost first (measured deploy latency, MACs), training only when feasible.

Single-objective studies maximise validation accuracy with the budget as a hard constraint
(`Trial.set_constraint`); an infeasible trial is pruned before any training, which TPE still
learns from. Pareto studies (accuracy up, latency down) cannot prune per epoch in Optuna 5, and
NSGA-II / GP ignore pruned trials, so an infeasible trial is completed with a penalty instead
(accuracy 0, its measured latency, ``feasible = False``): it is never COMPLETE with a real score.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

import dscnn
from dscnn.config import ArchConfig
from searchspace.baselines import get_baseline
from searchspace.progress import SearchProgress
from searchspace.space import sample
from searchspace.storage import mark_worker, worker_id

BASELINE_ATTR = "baseline"
INFEASIBLE_ACCURACY = 0.0  # the penalty a Pareto study completes an over-budget trial with


@dataclass(frozen=True)
class TrialCost:
    """What the cost-first step records for one architecture (deploy form)."""

    latency_ms: float
    latency_spread_ms: float
    macs: int
    params_train: int
    params_deploy: int
    device: str
    runtime: str = "eager"  # dscnn.runtimes name the deploy form was timed in
    runtime_version: str = ""
    load: float | None = None  # other processes' CPU share while timing (dscnn.machine_load)
    busy: bool = False  # timed on a busy machine: the number is suspect (never cached)
    noisy: bool = False  # its repeats disagreed (dscnn.latency.LatencyResult.noisy): never cached either


@dataclass(frozen=True)
class ObjectiveSettings:
    space: str  # name in searchspace.space.SPACES
    num_classes: int
    resolution: int
    budget_ms: float | None  # hard latency budget on the deploy form; None = unconstrained
    budget_macs: float | None  # hard deploy-MACs budget; None = unconstrained
    pareto: bool  # multi-objective (accuracy, latency) instead of constrained accuracy
    epochs: int
    checkpoint_dir: Path  # one checkpoint per trained trial: trial_NNNN.pt
    seed: int = 0  # study seed: trial t's weights and training use trial_seed(seed, t)
    study_name: str = ""  # recorded in every trial checkpoint, checked when best.* is written
    # --budget-of: the baseline whose timing is the budget, and that timing (its own trial records it)
    budget_reference: str | None = None
    reference_cost: TrialCost | None = None


@dataclass(frozen=True)
class CostStep:
    """The cost-first step of one trial: what to train, what it costs, whether it may be trained."""

    config: ArchConfig
    model: nn.Module  # train form, untrained
    cost: TrialCost
    feasible: bool
    duplicate_of: int | None = None  # an earlier (or running) trial of the same architecture: not trained again
    duplicate_values: tuple[float, ...] | None = None  # that trial's objective values, when it is complete


MeasureCost = Callable[[nn.Module], TrialCost]
#: ``train_model(model, on_epoch, seed) -> final validation accuracy``
TrainModel = Callable[[nn.Module, Callable[[int, float], None], int], float]
INTERRUPTED = "interrupted (Ctrl-C)"  # fail_reason of a trial stopped by the user; re-run on resume


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The seed of one trial's weights and training: a function of (study seed, trial number) only."""
    return (study_seed * 1_000_003 + trial_number) % 2**31


class SearchObjective:
    """Callable for `study.optimize`; dependencies are injected so tests can stub them."""

    def __init__(
        self, settings: ObjectiveSettings, measure_cost: MeasureCost, train_model: TrainModel,
        progress: SearchProgress | None = None,
    ) -> None:
        self.settings = settings
        self.measure_cost = measure_cost
        self.train_model = train_model
        self.progress = progress or SearchProgress(enabled=False)
        self.trained_trials = 0  # how many trials reached training in this process

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        mark_worker(trial)
        try:
            step = self.cost_step(trial)
            if not step.feasible:
                return self.reject(step)
            self.trained_trials += 1
            trial.set_user_attr("trained_by", worker_id())
            accuracy = self._train(trial, step.model)
            self._save(trial, step.model, step.config, accuracy, step.cost)
        except KeyboardInterrupt:
            trial.storage.set_trial_system_attr(trial._trial_id, "fail_reason", INTERRUPTED)
            raise
        return (accuracy, step.cost.latency_ms) if self.settings.pareto else accuracy

    def cost_step(self, trial: optuna.Trial) -> CostStep:
        """Cost first: the architecture, its deploy form's measured cost and the constraints, recorded on ``trial``.

        Backends that train elsewhere (Ray Tune) call this in the process that owns the study, then
        launch training only when ``feasible``.
        """
        config = self.config_for(trial)
        trial.set_user_attr("family", config.family)
        trial.set_user_attr("arch", config.to_json())
        trial.set_user_attr("epochs", self.settings.epochs)
        self.progress.phase(trial.number, "measure")
        seed = trial_seed(self.settings.seed, trial.number)
        trial.set_user_attr("seed", seed)
        torch.manual_seed(seed)  # the initial weights: reproducible from (study seed, trial number)
        model = dscnn.build_model(config)
        s = self.settings
        if s.reference_cost is not None and trial.user_attrs.get(BASELINE_ATTR) == s.budget_reference:
            cost = s.reference_cost  # the timing that is the budget: this model is at it by definition
        else:
            with torch.random.fork_rng(devices=[]):  # timing (random inputs) must not shift the training RNG
                cost = self.measure_cost(model)
        trial.set_user_attr("measured_by", worker_id())
        feasible = self._record_cost(trial, cost)
        # a baseline is enqueued by name, on purpose (even twice); only what the sampler proposes is checked
        original = None if trial.user_attrs.get(BASELINE_ATTR) else _same_architecture(trial, config)
        if original is not None:
            trial.set_user_attr("duplicate_of", original.number)
            values = tuple(original.values) if original.state == TrialState.COMPLETE else None
            return CostStep(config, model, cost, False, duplicate_of=original.number, duplicate_values=values)
        return CostStep(config, model, cost, feasible)

    def reject(self, step: CostStep) -> tuple[float, float]:
        """The end of a trial that is not trained, over budget or a duplicate: the Pareto penalty values (a
        duplicate of a finished trial: that trial's values), else `optuna.TrialPruned` (raised; always for a
        duplicate of a trial still running)."""
        cost = step.cost
        if step.duplicate_of is not None:
            # NSGA-II ignores pruned trials: the duplicate of a finished trial scores what it did; of one still
            # training, it is pruned (a penalty would put a false zero-accuracy point on the front for good)
            if self.settings.pareto and step.duplicate_values is not None and len(step.duplicate_values) == 2:
                return step.duplicate_values[0], step.duplicate_values[1]
            raise optuna.TrialPruned(f"duplicate of trial {step.duplicate_of}: the same architecture is not "
                                     "trained twice")
        if self.settings.pareto:
            return INFEASIBLE_ACCURACY, cost.latency_ms
        raise optuna.TrialPruned(f"over budget: {cost.latency_ms:.3f} ms, {cost.macs / 1e6:.1f} MMACs")

    def checkpoint_path(self, trial_number: int) -> Path:
        return self.settings.checkpoint_dir / f"trial_{trial_number:04d}.pt"

    def config_for(self, trial: optuna.Trial) -> ArchConfig:
        """The baseline's config for an enqueued baseline trial, else a sample from the space."""
        s = self.settings
        label = trial.user_attrs.get(BASELINE_ATTR)
        if label:
            return get_baseline(label).config(num_classes=s.num_classes, resolution=s.resolution)
        return sample(trial, s.space, num_classes=s.num_classes, resolution=s.resolution)

    def _record_cost(self, trial: optuna.Trial, cost: TrialCost) -> bool:
        attrs: dict[str, Any] = {
            "latency_ms": cost.latency_ms, "latency_spread_ms": cost.latency_spread_ms, "macs": cost.macs,
            "params_train": cost.params_train, "params_deploy": cost.params_deploy,
            "device": cost.device, "runtime": cost.runtime, "runtime_version": cost.runtime_version,
            "latency_load": cost.load, "latency_busy": cost.busy, "latency_noisy": cost.noisy,
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        violations = []
        if self.settings.budget_ms is not None:
            violations.append(("latency_ms", cost.latency_ms - self.settings.budget_ms))
        if self.settings.budget_macs is not None:
            # in GMACs so both constraints have comparable magnitudes for TPE's infeasibility score
            violations.append(("gmacs", (cost.macs - self.settings.budget_macs) / 1e9))
        for key, value in violations:
            trial.set_constraint(key, value)
        feasible = all(v <= 0 for _, v in violations)
        trial.set_user_attr("feasible", feasible)
        return feasible

    def _train(self, trial: optuna.Trial, model: nn.Module) -> float:
        def on_epoch(epoch: int, accuracy: float) -> None:
            self.progress.phase(trial.number, f"train epoch {epoch + 1}/{self.settings.epochs}", accuracy)
            if math.isnan(accuracy):
                raise ValueError("validation accuracy is NaN")
            if self.settings.pareto:
                return  # Optuna 5 cannot report/prune per step in multi-objective studies
            trial.report(accuracy, epoch)
            # after the last epoch stopping saves nothing and would throw the finished result away
            if epoch + 1 < self.settings.epochs and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} at accuracy {accuracy:.4f}")

        try:
            accuracy = self.train_model(model, on_epoch, trial_seed(self.settings.seed, trial.number))
        except (optuna.TrialPruned, KeyboardInterrupt):
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:500])
            raise
        self.progress.phase(trial.number, "evaluate", accuracy)
        trial.set_user_attr("accuracy", accuracy)
        return accuracy

    def _save(self, trial: optuna.Trial, model: nn.Module, config: ArchConfig, accuracy: float, cost: TrialCost) -> None:
        path = self.checkpoint_path(trial.number)
        metrics = {"accuracy": accuracy, "latency_ms": cost.latency_ms, "macs": cost.macs, "trial": trial.number,
                   "study": self.settings.study_name, "arch_hash": config.arch_hash()}
        dscnn.save_checkpoint(path, model.cpu(), metrics=metrics)
        # relative to the output folder, so the study resumes from any working directory
        trial.set_user_attr("checkpoint", path.relative_to(self.settings.checkpoint_dir.parent).as_posix())



#: Trials an architecture counts as already taken by: finished, stopped, or training in another worker.
_TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def _same_architecture(trial: optuna.Trial, config: ArchConfig) -> FrozenTrial | None:
    """The earliest earlier trial of ``trial``'s study with the same architecture, or None.

    Only earlier trials count: two workers measuring one architecture at once would otherwise each
    take the other for the original, and neither would train it.

    TPE with few completed trials samples every parameter at its one good observation and proposed
    one architecture three times in a row in a Tiny-ImageNet study (trials 9-11): each retraining
    costs a full proxy training and tells the sampler nothing new. A pruned duplicate also marks the
    point as explored for TPE, which moves it on.

    Only originals count, never another duplicate: if the original of a duplicate later fails, the
    next sample of that architecture finds no original and trains it (counting the pruned
    duplicate would leave the architecture untrained for good).
    """
    arch = config.to_json()
    for other in trial.study.get_trials(deepcopy=False, states=_TAKEN):
        if (other.number < trial.number and other.user_attrs.get("arch") == arch
                and other.user_attrs.get("duplicate_of") is None):
            return other
    return None

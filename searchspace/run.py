"""Run a latency-budgeted search: the study, its storage, the trials, and the outputs under ``out``.

`run_search(SearchConfig)` is the library entry point; ``search.py`` only parses flags into a
`SearchConfig`. ``trials`` is the study's total: running the same command again resumes (finishes
the remaining trials, never restarts or duplicates finished ones), and several processes on one
storage share the total. `prepare_search`, `build_objective` and `write_outputs` are shared with
the Ray Tune backend (`searchspace.ray_backend`).
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState
from rich.console import Console

import dscnn
from dscnn.cost import measure_deploy_cost
from dscnn.data import ImageDataset, load_dataset
from dscnn.measure_cache import MeasureCache
from dscnn.train import TrainingDiverged, resolve_device, train_and_evaluate
from searchspace import report
from searchspace.config import SearchConfig
from searchspace.device_lock import DeviceLock
from searchspace.objective import BASELINE_ATTR, ObjectiveSettings, SearchObjective, TrialCost
from searchspace.progress import SearchProgress
from searchspace.quota import BoundedStudy, StudyFull, ask_lock_path
from searchspace.space import get_space
from searchspace.storage import fail_orphaned_trials, open_storage

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class SearchResult:
    study_name: str
    out_dir: Path
    finished_trials: int
    trained_trials: int  # trials of this run that reached training
    best: report.TrialRow | None
    pareto: list[report.TrialRow]


def run_search(config: SearchConfig, *, console: Console | None = None, show_progress: bool = True) -> SearchResult:
    """Run (or resume) the study described by ``config`` and write its outputs.

    Any number of processes may run this on one study (same ``storage`` and ``study_name``): they
    share its ``trials`` total exactly (`searchspace.quota`), and each writes the outputs when it
    stops; the last one to stop sees the whole study. With ``config.ray`` set the trials train on
    Ray Tune (`searchspace.ray_backend.run_ray_search`).
    """
    console = console or Console()
    if config.ray is not None:
        from searchspace.ray_backend import run_ray_search  # imports Ray: only when asked for

        return run_ray_search(config, console=console, show_progress=show_progress)
    study, _, objective = prepare_search(config, console)
    if study.remaining() == 0:
        console.log(f"study {config.study_name!r} already has {config.trials} trials; raise --trials to add more")
    else:
        with SearchProgress(config.trials, enabled=show_progress, console=console) as progress:
            objective.progress = progress
            progress.trial_finished(_finished(study, config.trials), _best_value(study))
            try:
                study.optimize(
                    objective, n_trials=None, timeout=config.timeout_s,
                    catch=(TrainingDiverged, torch.cuda.OutOfMemoryError),
                    callbacks=[lambda s, _t: progress.trial_finished(_finished(s, config.trials), _best_value(s))],
                )
            except StudyFull:
                pass  # every trial of the total is taken (by this or another worker)
    return write_outputs(config, study, objective.trained_trials, console)


def prepare_search(config: SearchConfig, console: Console) -> tuple[BoundedStudy, ImageDataset, SearchObjective]:
    """What every backend does first: outputs folder, data, the study (orphans failed, baselines enqueued)."""
    get_space(config.space)  # fail fast on an unknown space, before loading data
    out = config.out_dir
    (out / "trials").mkdir(parents=True, exist_ok=True)
    (out / "search_config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str))
    data = load_dataset(config.data)
    study = open_study(config)
    with study.locked():  # two workers starting together must not both enqueue the baselines
        orphans = fail_orphaned_trials(study)
        if not study.trials:
            for label in config.baselines[: config.trials]:
                study.enqueue_trial({}, user_attrs={BASELINE_ATTR: label}, skip_if_exists=False)
    if orphans:
        console.log(f"marked trials {orphans} FAIL: their worker is gone")
    return study, data, build_objective(config, data)


def open_study(config: SearchConfig) -> BoundedStudy:
    """Create or load the study, bounded to ``config.trials`` trials in total."""
    sampler: optuna.samplers.BaseSampler
    if config.pareto:
        sampler = optuna.samplers.NSGAIISampler(seed=config.seed)
        directions = ["maximize", "minimize"]
        pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    else:
        sampler = optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=max(5, len(config.baselines)))
        directions = ["maximize"]
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    study = optuna.create_study(
        study_name=config.study_name, storage=open_storage(config.storage), sampler=sampler,
        pruner=pruner, directions=directions, load_if_exists=True,  # type: ignore[arg-type]  # str literals
    )
    if [d.name.lower() for d in study.directions] != directions:
        raise ValueError(
            f"study {config.study_name!r} in {config.storage!r} was created "
            f"{'without' if config.pareto else 'with'} --pareto; use another --study-name"
        )
    return BoundedStudy(study, config.trials, ask_lock_path(config.storage))


def build_objective(config: SearchConfig, data: ImageDataset) -> SearchObjective:
    """The trial objective, timing under the device lock and training in a shared slot of it."""
    settings = ObjectiveSettings(
        space=config.space, num_classes=data.num_classes, resolution=config.data.resolution or data.resolution,
        budget_ms=config.budget_ms, budget_macs=config.budget_macs, pareto=config.pareto,
        epochs=config.train.epochs, checkpoint_dir=config.out_dir / "trials",
    )
    cache = MeasureCache(config.cache_path)
    latency = config.latency.replace(resolution=settings.resolution)
    lock = DeviceLock(config.device_lock)

    def measure(model: torch.nn.Module) -> TrialCost:
        with lock.measuring():  # never while a training runs on this machine (searchspace.device_lock)
            cost = measure_deploy_cost(model, latency, cache=cache)
        assert cost.latency is not None
        return TrialCost(
            latency_ms=cost.latency.median_ms, latency_spread_ms=cost.latency.max_ms - cost.latency.min_ms, macs=cost.macs,
            params_train=cost.params_train, params_deploy=cost.params_deploy, device=latency.device,
        )

    @functools.cache
    def data_on_device() -> ImageDataset:
        # once per process, not per trial: on a GPU the copy and its channel statistics are not free
        return data.to(resolve_device(config.train.device))

    def train(model: torch.nn.Module, on_epoch: Callable[[int, float], None]) -> float:
        with lock.training() as slot:
            def between_epochs(epoch: int, accuracy: float) -> None:
                with slot.paused():  # a waiting measurement runs here
                    on_epoch(epoch, accuracy)

            result = train_and_evaluate(model, data_on_device(), config.train, on_epoch=between_epochs)
        return float(result.final_accuracy)

    return SearchObjective(settings, measure, train)


def _finished(study: optuna.Study, total: int) -> int:
    return min(total, len(study.get_trials(deepcopy=False, states=FINISHED)))


def _best_value(study: optuna.Study) -> float | None:
    rows = report.trained(report.trial_rows(study))
    return max((r.accuracy for r in rows if r.accuracy is not None), default=None)


def write_outputs(config: SearchConfig, study: optuna.Study, trained_trials: int, console: Console) -> SearchResult:
    out = config.out_dir
    rows = report.trial_rows(study)
    front = report.pareto_front(rows)
    best = report.best_row(rows)
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    title = f"{config.study_name}: accuracy vs {config.latency.device} latency"
    if report.trained(rows):
        report.plot_pareto(rows, out / "pareto.png", out / "pareto.html", config.budget_ms, title)
        report.print_table(front, console)
    if best is not None and best.checkpoint and not Path(best.checkpoint).is_file():
        # a worker on another machine trained it (PostgreSQL storage without a shared --out)
        budget = {"budget_ms": config.budget_ms, "budget_macs": config.budget_macs}
        report.write_best_json(out / "best.json", best, budget)
        console.log(f"best: {best.label}; its checkpoint {best.checkpoint} is not on this machine: best.json only")
    elif best is not None and best.checkpoint:
        budget = {"budget_ms": config.budget_ms, "budget_macs": config.budget_macs}
        report.write_best_json(out / "best.json", best, budget)
        shutil.copyfile(best.checkpoint, out / "best.pt")
        model, _ = dscnn.load_checkpoint(best.checkpoint)
        dscnn.save_checkpoint(out / "best_deploy.pt", dscnn.reparameterize_model(model), metrics={"accuracy": best.accuracy})
        console.log(f"best: {best.label} accuracy {best.accuracy:.4f} at {best.latency_ms:.3f} ms -> {out / 'best.pt'}")
    else:
        console.log("no feasible trial finished training: no best.json / best.pt written")
    return SearchResult(config.study_name, out, finished, trained_trials, best, front)

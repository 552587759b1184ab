"""Run a latency-budgeted search: the study, its storage, the trials, and the outputs under ``out``.

`run_search(SearchConfig)` is the library entry point; ``search.py`` only parses flags into a
`SearchConfig`. ``trials`` is the study's total: running the same command again resumes (finishes
the remaining trials, never restarts or duplicates finished ones), and several processes on one
storage share the total. `prepare_search`, `build_objective` and `write_outputs` are shared with
the Ray Tune backend (`searchspace.ray_backend`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState
from rich.console import Console

import dscnn
from dscnn.checkpoint import write_text_atomic
from dscnn.cost import measure_deploy_cost
from dscnn.data import ImageDataset, load_dataset
from dscnn.measure_cache import MeasureCache
from dscnn.runtimes import check_runtime
from dscnn.train import TrainingDiverged, resolve_device, train_and_evaluate
from searchspace import report
from searchspace.budget_of import BUDGET_OF_ATTR, DRIFT_FACTOR, reference_cost, resolve_budget
from searchspace.comparison import print_comparison
from searchspace.config import SearchConfig
from searchspace.device_lock import DeviceLock
from searchspace.identity import (
    DEFINITION_ATTR,
    SearchError,
    check_definition,
    check_paths,
    claim_output_folder,
    definition,
)
from searchspace.objective import BASELINE_ATTR, ObjectiveSettings, SearchObjective, TrialCost
from searchspace.progress import SearchProgress
from searchspace.quota import BoundedStudy, StudyFull, ask_lock_path, requeue_lost_trials
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
    budget_ms: float | None = None  # the latency budget trials were judged by (a --budget-of one resolved)


class SearchInterrupted(Exception):
    """The user stopped the search (Ctrl-C); the outputs of what finished were written first."""

    def __init__(self, result: SearchResult) -> None:
        super().__init__(f"interrupted: {result.finished_trials} trials finished, outputs in {result.out_dir}/")
        self.result = result


def run_search(config: SearchConfig, *, console: Console | None = None, show_progress: bool = True) -> SearchResult:
    """Run (or resume) the study described by ``config`` and write its outputs.

    Any number of processes may run this on one study (same ``storage`` and ``study_name``): they
    share its ``trials`` total exactly (`searchspace.quota`), and each writes the outputs when it
    stops; the last one to stop sees the whole study. With ``config.ray`` set the trials train on
    Ray Tune (`searchspace.ray_backend.run_ray_search`). Ctrl-C writes the outputs of the finished
    trials, marks the running one interrupted (it is re-run when the study resumes) and raises
    `SearchInterrupted`.
    """
    console = console or Console()
    if config.ray is not None:
        from searchspace.ray_backend import run_ray_search  # imports Ray: only when asked for

        return run_ray_search(config, console=console, show_progress=show_progress)
    study, _, objective, config = prepare_search(config, console)
    interrupted = False
    if study.remaining() == 0:
        console.log(f"study {config.study_name!r} already has {config.trials} trials; raise --trials to add more")
    else:
        with SearchProgress(study.remaining(), enabled=show_progress, console=console) as progress:
            objective.progress = progress
            done_before = _finished_count(study)
            try:
                with _quiet_interrupt_tracebacks():
                    study.optimize(
                        objective, n_trials=None, timeout=config.timeout_s,
                        catch=(TrainingDiverged, torch.cuda.OutOfMemoryError),
                        callbacks=[lambda s, _t: progress.trial_finished(_finished_count(s) - done_before,
                                                                         _best_value(s))],
                    )
            except StudyFull:
                pass  # every trial of the total is taken (by this or another worker)
            except KeyboardInterrupt:
                interrupted = True
    result = write_outputs(config, study, objective.trained_trials, console)
    if interrupted:
        raise SearchInterrupted(result)
    return result


@contextlib.contextmanager
def _quiet_interrupt_tracebacks() -> Iterator[None]:
    """Optuna logs a failed trial with its traceback; for Ctrl-C one line is enough."""

    def one_line(record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            record.exc_info, record.exc_text = None, None
        return True

    logger = logging.getLogger("optuna")
    logger.addFilter(one_line)
    try:
        yield
    finally:
        logger.removeFilter(one_line)


def prepare_search(config: SearchConfig, console: Console) -> tuple[BoundedStudy, ImageDataset, SearchObjective, SearchConfig]:
    """What every backend does first, checking every input before it writes anything: paths, data,
    the study's definition and the output folder's owner; then the outputs folder and the study
    (orphans failed, interrupted or lost trials re-queued, baselines enqueued, a --budget-of budget
    timed or read back). Returns the config the search runs with (``budget_ms`` resolved)."""
    check_paths(config)
    check_runtime(config.latency)  # an unavailable runtime fails now, in one line, not in trial 0
    if config.data.name == "embedded" and config.data.data_dir:
        console.log(f"[yellow]warning:[/yellow] --data-dir {config.data.data_dir!r} is ignored: the embedded data set "
                    "ships inside the package (give --dataset to read a data set from a folder)")
    data = load_dataset(config.data)
    resolution = config.data.resolution or data.resolution
    study = open_study(config)
    with study.locked():  # two workers starting together must not both enqueue the baselines
        is_new = not study.trials
        wanted = definition(config, data.num_classes, resolution)
        if DEFINITION_ATTR in study.user_attrs:
            check_definition(study, wanted, config)  # a mismatch is refused before anything is timed or stored
        if config.budget_of:  # timed afresh (the budget is today's speed, not the cache's), before anything is written
            # on a resume resolve_budget itself says when the speed moved: no second warning from the cache
            measure = make_measure(config, resolution, console, fresh=True,
                                   warn_drift=BUDGET_OF_ATTR not in study.user_attrs)
            config = resolve_budget(config, study, measure, data.num_classes, resolution, say=console.log)
        check_definition(study, wanted, config)
        claim_output_folder(config, is_new)
        orphans = fail_orphaned_trials(study)
        requeued = requeue_lost_trials(study)
        joined = join_study(study, config)
        if is_new:
            study.set_user_attr(VAL_IMAGES_ATTR, int(data.split("val")[1].numel()))  # the verdict's noise level
            # the budget's reference first: the line it draws is known before any trial is judged by it
            first = sorted(config.baselines, key=lambda label: label != config.budget_of)
            for label in first[: config.trials]:
                study.enqueue_trial({}, user_attrs={BASELINE_ATTR: label}, skip_if_exists=False)
    (config.out_dir / "trials").mkdir(parents=True, exist_ok=True)
    recorded = dataclasses.replace(config, latency=config.latency.replace(resolution=resolution))
    write_text_atomic(config.out_dir / "search_config.json", json.dumps(recorded.to_dict(), indent=2, default=str))
    if joined:
        console.log(f"{joined} worker(s) or earlier runs opened this study before: sampler seed "
                    f"{worker_sampler_seed(config.seed, joined)} (not the study's {config.seed}, whose proposals "
                    "those made)")
    if orphans:
        console.log(f"marked trials {orphans} FAIL: their worker is gone")
    if requeued:
        console.log(f"re-running interrupted or lost trials {requeued} with their parameters")
    if len(config.baselines) >= config.trials and is_new:
        console.log(f"[yellow]note:[/yellow] --trials {config.trials} leaves no room beyond the "
                    f"{len(config.baselines)} hand-designed baselines: nothing will be searched")
    return study, data, build_objective(config, data, console, reference_cost(study)), config


def make_sampler(config: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    """The study's sampler (NSGA-II for --pareto, else TPE), seeded with ``seed``."""
    if config.pareto:
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(5, len(config.baselines)))


def worker_sampler_seed(study_seed: int, joined_before: int) -> int:
    """The sampler seed of the worker that joins a study after ``joined_before`` others: the study's
    seed for the first (a one-worker study is reproducible from it), a different one for every later
    worker, resumed ones included (the same seed would re-propose what the first one proposed, and
    those trials would only be pruned as duplicates)."""
    return study_seed if joined_before == 0 else (study_seed * 1_000_003 + 7_919 * joined_before) % 2**31


def join_study(study: BoundedStudy, config: SearchConfig) -> int:
    """Count this process among the study's workers (under the study's lock) and seed its sampler
    accordingly; return how many workers joined before it."""
    joined = int(study._storage.get_study_system_attrs(study._study_id).get(WORKERS_JOINED_ATTR, 0))
    study._storage.set_study_system_attr(study._study_id, WORKERS_JOINED_ATTR, joined + 1)
    if joined:
        study.sampler = make_sampler(config, worker_sampler_seed(config.seed, joined))
    return joined


def open_study(config: SearchConfig) -> BoundedStudy:
    """Create or load the study, bounded to ``config.trials`` trials in total."""
    sampler = make_sampler(config, config.seed)
    if config.pareto:
        directions = ["maximize", "minimize"]
        pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    else:
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
    url = config.storage if "://" in config.storage else None
    return BoundedStudy(study, config.trials, ask_lock_path(config.storage), database_url=url)


def _say_once(console: Console | None) -> Callable[[str], None] | None:
    """Tell the user about a wait on the device lock, once per holder set (not at every epoch)."""
    if console is None:
        return None
    said: set[str] = set()

    def say(message: str) -> None:
        if message not in said:
            said.add(message)
            console.log(f"[yellow]{message}[/yellow]")

    return say


def make_measure(config: SearchConfig, resolution: int, console: Console | None = None, *,
                 fresh: bool = False, warn_drift: bool = True,
                 lock: DeviceLock | None = None) -> Callable[[torch.nn.Module], TrialCost]:
    """A model's deploy cost as trials record it, timed under the device lock, through the latency cache.
    ``fresh``: timed now whatever the cache holds (the cache is left as it is), with a warning when the
    cache holds a timing of the same graph more than `DRIFT_FACTOR` away: the machine runs at another
    speed than when the cache was filled, so cached timings of other models are not comparable
    (``warn_drift=False``: no such warning, for a caller that judges the drift itself).
    ``lock``: the device lock to time under (default: a new one on ``config.device_lock``)."""
    cache = MeasureCache(config.latency_cache)
    latency = config.latency.replace(resolution=resolution)
    lock = lock or DeviceLock(config.device_lock, device=config.latency.device, on_wait=_say_once(console))

    def measure(model: torch.nn.Module) -> TrialCost:
        with lock.measuring():  # never while a training runs on this machine (searchspace.device_lock)
            cost = measure_deploy_cost(model, latency, cache=None if fresh else cache)
        assert cost.latency is not None
        hit = cache.get(cost.arch_key, latency) if fresh else None
        if hit is not None and console is not None and warn_drift:
            ratio = cost.latency.median_ms / float(hit["median_ms"])
            if not 1 / DRIFT_FACTOR <= ratio <= DRIFT_FACTOR:
                console.log(f"[yellow]warning:[/yellow] this graph times {cost.latency.median_ms:.3f} ms now and "
                            f"{float(hit['median_ms']):.3f} ms in the latency cache ({cache.path}): "
                            f"the machine runs {ratio:.2f}x as slow as when the cache was filled, so cached timings "
                            "of other models are from another speed; give --cache a new file for this study")
        return TrialCost(
            latency_ms=cost.latency.median_ms, latency_spread_ms=cost.latency.max_ms - cost.latency.min_ms, macs=cost.macs,
            params_train=cost.params_train, params_deploy=cost.params_deploy, device=latency.device,
            runtime=cost.latency.runtime, runtime_version=cost.latency.runtime_version, load=cost.latency.load,
            busy=cost.latency.busy, noisy=cost.latency.noisy,
        )

    return measure


def build_objective(config: SearchConfig, data: ImageDataset, console: Console | None = None,
                    reference: tuple[str, TrialCost] | None = None) -> SearchObjective:
    """The trial objective, timing under the device lock and training in a shared slot of it.
    ``reference``: the --budget-of baseline and the timing that is the budget (`searchspace.budget_of`)."""
    settings = ObjectiveSettings(
        space=config.space, num_classes=data.num_classes, resolution=config.data.resolution or data.resolution,
        budget_ms=config.budget_ms, budget_macs=config.budget_macs, pareto=config.pareto,
        epochs=config.train.epochs, checkpoint_dir=config.out_dir / "trials", seed=config.seed,
        study_name=config.study_name, budget_reference=reference[0] if reference else None,
        reference_cost=reference[1] if reference else None,
    )
    lock = DeviceLock(config.device_lock, device=config.latency.device, on_wait=_say_once(console))
    measure = make_measure(config, settings.resolution, console, lock=lock)  # one lock: one "waiting" message

    @functools.cache
    def data_on_device() -> ImageDataset:
        # once per process, not per trial: on a GPU the copy and its channel statistics are not free
        return data.to(resolve_device(config.train.device))

    def train(model: torch.nn.Module, on_epoch: Callable[[int, float], None], seed: int | None = None) -> float:
        with lock.training() as slot:
            def between_epochs(epoch: int, accuracy: float) -> None:
                with slot.paused():  # a waiting measurement runs here
                    on_epoch(epoch, accuracy)

            # data order and augmentation of this trial
            recipe = config.train if seed is None else dataclasses.replace(config.train, seed=seed)
            result = train_and_evaluate(model, data_on_device(), recipe, on_epoch=between_epochs)
        return float(result.final_accuracy)

    return SearchObjective(settings, measure, train)


def _finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _best_value(study: optuna.Study) -> float | None:
    rows = report.trained(report.trial_rows(study))
    return max((r.accuracy for r in rows if r.accuracy is not None), default=None)


WORKERS_JOINED_ATTR = "workers_joined"  # study system attribute: worker processes that have opened the study
VAL_IMAGES_ATTR = "val_images"  # study user attribute: size of the validation split trials are scored on
CHANCE_MARGIN = 0.05  # a best accuracy within this of chance (1 / classes) is reported as noise


def write_outputs(config: SearchConfig, study: optuna.Study, trained_trials: int, console: Console) -> SearchResult:
    """The Pareto plot and table, ``best.json`` / ``best.pt`` / ``best_deploy.pt``, and a summary line."""
    out = config.out_dir
    rows = report.trial_rows(study)
    front = report.pareto_front(rows)
    best = report.best_row(rows)
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    title = f"{config.study_name}: accuracy vs {config.latency.device} latency"
    if any(r.latency_ms is not None for r in rows):
        report.plot_pareto(rows, out / "pareto.png", out / "pareto.html", config.budget_ms, title,
                           budget_macs=config.budget_macs)
    if report.trained(rows):
        report.print_table(front, console)
        print_comparison(rows, console, num_classes=int(study.user_attrs.get("definition", {}).get("num_classes", 0))
                         or None, val_images=study.user_attrs.get(VAL_IMAGES_ATTR))
    budget = {"budget_ms": config.budget_ms, "budget_macs": config.budget_macs,
              **({"budget_of": config.budget_of} if config.budget_of else {})}
    busy = [t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("latency_busy")]
    if busy:
        console.log(f"[yellow]warning:[/yellow] trials {busy} were timed on a busy machine: their latencies are "
                    "suspect (recheck: python -m dscnn.bench --recheck --study ...)")
    if best is None:
        for name in ("best.json", "best.pt", "best_deploy.pt"):  # never leave an earlier winner as this one
            (out / name).unlink(missing_ok=True)
        console.log(report.why_no_best(rows, config.budget_ms, config.budget_macs, config.budget_of))
        return SearchResult(config.study_name, out, finished, trained_trials, best, front, config.budget_ms)
    classes = int(study.user_attrs.get("definition", {}).get("num_classes", 0)) or None
    warning = _chance_warning(best.accuracy, classes)
    checkpoint = resolve_checkpoint(out, best.checkpoint)
    if checkpoint is None or not checkpoint.is_file():
        # a worker on another machine trained it (PostgreSQL storage without a shared --out)
        report.write_best_json(out / "best.json", best, budget, warning)
        console.log(f"best: {best.label}; its checkpoint {best.checkpoint} is not on this machine: best.json only")
    else:
        model, info = dscnn.load_checkpoint(checkpoint)
        _check_identity(best, info.config.arch_hash(), info.metrics, config.study_name, checkpoint)
        report.write_best_json(out / "best.json", best, budget, warning)
        tmp = out / ".best.pt.tmp"
        shutil.copyfile(checkpoint, tmp)
        os.replace(tmp, out / "best.pt")
        dscnn.save_checkpoint(out / "best_deploy.pt", dscnn.reparameterize_model(model), metrics={"accuracy": best.accuracy})
        console.log(f"best: {best.label} accuracy {best.accuracy:.4f} at {best.latency_ms:.3f} ms -> {out / 'best.pt'}")
    if warning:
        console.log(f"[yellow]warning:[/yellow] {warning}")
    return SearchResult(config.study_name, out, finished, trained_trials, best, front, config.budget_ms)


def resolve_checkpoint(out: Path, recorded: str | None) -> Path | None:
    """A trial's checkpoint: recorded relative to the output folder (or absolute, or by older runs
    relative to where they started)."""
    if not recorded:
        return None
    path = Path(recorded)
    if path.is_absolute() or (out / path).is_file():
        return path if path.is_absolute() else out / path
    return path


def _check_identity(best: report.TrialRow, arch_hash: str, metrics: dict[str, object], study: str, path: Path) -> None:
    expected = dscnn.config_from_dict(json.loads(best.arch)).arch_hash() if best.arch else None
    trial, owner = metrics.get("trial"), metrics.get("study")
    if arch_hash != expected or (trial is not None and trial != best.number) or (owner not in (None, study)):
        raise SearchError(
            f"{path} holds trial {trial} of study {owner!r} (architecture {arch_hash}), not {best.label} of "
            f"{study!r} ({expected}): the output folder is shared with another study; give each its own --out"
        )


def _chance_warning(accuracy: float | None, classes: int | None) -> str | None:
    if accuracy is None or not classes:
        return None
    chance = 1.0 / classes
    if accuracy < chance + CHANCE_MARGIN:
        return (f"the best accuracy {accuracy:.3f} is within {CHANCE_MARGIN:.0%} of chance ({chance:.3f} for {classes} "
                "classes): the ranking is noise; train longer (--epochs) or on more data (--train-per-class)")
    return None



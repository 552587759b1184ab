"""Stage 2 of a two-stage search: the final comparison that a study's report leads with.

Stage 1 (the search) ranks many architectures with a short proxy training, on a validation split
held out of the training split. Stage 2 takes the ``top_k`` searched trials by that validation
accuracy AND every hand-designed baseline that fit the budget, retrains each from scratch with one
longer recipe for every seed, and evaluates on the data set's held-out **test** split, which is
never used to choose anything (selection reads only stage-1 values). All candidates' deploy forms
are then timed side by side in one interleaved run (`dscnn.side_by_side`), so "at equal measured
latency" compares one machine state.

Every (candidate, seed) result is written as it finishes (``<out>/runs/<label>-s<seed>.json`` plus
its checkpoint), so a killed stage 2 resumes where it stopped; ``stage2.json`` and the table are
built only from those stored results.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from rich.console import Console

import dscnn
from dscnn.checkpoint import write_text_atomic
from dscnn.data import ImageDataset, load_dataset
from dscnn.environment import git_revision
from dscnn.json_record import as_stored
from dscnn.memory_format import choose_memory_format
from dscnn.side_by_side import measure_side_by_side
from dscnn.train import TrainConfig, TrainingDiverged, evaluate_accuracy, resolve_device, train_and_evaluate
from searchspace import SearchConfig, open_storage
from searchspace.budget_of import reference_cost
from searchspace.device_lock import DeviceLock, TrainingSlot
from searchspace.report import TrialRow, trained, trial_rows
from studies import timing_drift
from studies.plan import StudyError
from studies.reused_runs import find_run, reuse_run
from studies.stage2_table import markdown, summary_row, verdict
from studies.timing_drift import least_slowed, slowdown, slowed

#: A baseline stage 1 timed up to this factor over the budget still enters the side-by-side timing.
NEAR_BUDGET = 1.1

__all__ = ["NEAR_BUDGET", "Candidate", "Stage2Config", "excluded_baselines",
           "restore_run", "run_record", "run_stage2", "select_candidates"]


@dataclass(frozen=True)
class Stage2Config:
    """The final comparison's recipe (the [stage2] table of a study file)."""

    top_k: int = 3  # searched trials carried over, by stage-1 validation accuracy
    seeds: tuple[int, ...] = (0, 1)  # every candidate is trained once per seed
    epochs: int = 30  # the longer recipe (the search's batch size, optimizer, LR and augmentation)
    lr: float | None = None  # None = the search's peak LR
    batch_size: int | None = None  # None = the search's
    # other studies' stage-2 runs folders: a run stored there under the same key (architecture, seed, recipe,
    # data) is copied, with where it came from, instead of trained again (training is deterministic)
    reuse_runs: tuple[str, ...] = ()
    # interleaved repeats of the side-by-side timing (each model's median over them is its latency): which
    # models fit is decided here, and on a shared CPU 3 repeats let one disturbed repeat swap two models 10%
    # apart; a repeat costs about a second per model, nothing beside the trainings
    timing_repeats: int = 15

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "reuse_runs", tuple(self.reuse_runs))
        if not all(isinstance(p, str) and p for p in self.reuse_runs):
            raise StudyError(f"[stage2] reuse_runs must be a list of folder paths, got {list(self.reuse_runs)}")
        if self.top_k < 1 or self.epochs < 1:
            raise StudyError(f"[stage2] top_k and epochs must be >= 1, got {self.top_k}, {self.epochs}")
        if isinstance(self.timing_repeats, bool) or not isinstance(self.timing_repeats, int) or self.timing_repeats < 1:
            raise StudyError(f"[stage2] timing_repeats must be an integer >= 1, got {self.timing_repeats!r}")
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise StudyError(f"[stage2] seeds: at least two different seeds (a spread needs two), got {self.seeds}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise StudyError(f"[stage2] lr must be a finite number > 0, got {self.lr}")


@dataclass(frozen=True)
class Candidate:
    label: str  # baseline name or "trial N"
    trial: int
    is_baseline: bool
    arch: dict[str, Any]
    stage1_val_accuracy: float | None
    stage1_latency_ms: float | None = None  # the search's timing (the reference a slowed machine is told by)

    @property
    def arch_hash(self) -> str:
        return dscnn.config_from_dict(self.arch).arch_hash()


def select_candidates(rows: list[TrialRow], top_k: int, budget_ms: float | None = None,
                      budget_macs: float | None = None) -> list[Candidate]:
    """The top-k searched trials by stage-1 validation accuracy and every baseline that fit the budget.

    Reads nothing but stage-1 trial records: the test split cannot influence the choice. A searched
    architecture sampled twice counts once (its better trial), so it cannot take two of the k places.
    With ``budget_ms``, a baseline stage 1 timed within `NEAR_BUDGET` of it comes too: one stage-1
    timing near the line must not drop a rival; the side-by-side run decides (`run_stage2`).
    """
    done = trained(rows)
    searched = sorted((r for r in done if not r.is_baseline), key=lambda r: (-(r.accuracy or 0.0), r.number))
    chosen: list[TrialRow] = []
    archs: set[str] = set()
    for r in searched:
        key = _arch_key(r.arch)
        if key not in archs and len(chosen) < top_k:
            archs.add(key)
            chosen.append(r)
    seen: set[str] = set()
    for r in sorted(rows, key=lambda r: r.number):
        near = (budget_ms is not None and r.latency_ms is not None and r.latency_ms <= NEAR_BUDGET * budget_ms
                and (budget_macs is None or (r.macs is not None and r.macs <= budget_macs)))  # latency its only miss
        if r.is_baseline and (r.feasible or near) and r.arch and r.label not in seen:  # a re-run trial counts once
            seen.add(r.label)
            chosen.append(r)
    return [Candidate(r.label, r.number, r.is_baseline, json.loads(r.arch or "{}"), r.accuracy, r.latency_ms)
            for r in chosen]


def excluded_baselines(rows: list[TrialRow], candidates: list[Candidate]) -> list[dict[str, Any]]:
    """Baselines stage 1 did not carry over (over the budget beyond `NEAR_BUDGET`, or never timed)."""
    taken = {c.label for c in candidates}
    out: dict[str, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: r.number):
        if r.is_baseline and r.label not in taken:
            out.setdefault(r.label, {"label": r.label, "latency_ms": r.latency_ms,
                                     "timed": "stage 1" if r.latency_ms is not None else "never timed"})
    return list(out.values())


def _arch_key(arch: str | None) -> str:
    return json.dumps(json.loads(arch or "{}"), sort_keys=True)


def run_stage2(search: SearchConfig, config: Stage2Config, out: Path, console: Console | None = None) -> dict[str, Any]:
    """Run (or resume) stage 2 of the study ``search`` describes; returns the stored summary."""
    console = console or Console()
    if not search.data.holdout_per_class:
        raise StudyError("stage 2 reports on a test split that selection never saw: set holdout_per_class in "
                         "[search] (validation is then held out of the training split)")
    study = optuna.load_study(study_name=search.study_name, storage=open_storage(search.storage))
    rows = trial_rows(study)
    revision = git_revision()  # the code this stage runs (it may take hours; others commit meanwhile)
    stage1_budget_ms = _stage1_budget_ms(search, study)
    timed = select_candidates(rows, config.top_k, stage1_budget_ms, search.budget_macs)
    if not any(not c.is_baseline for c in timed):
        raise StudyError("stage 2: the search has no trained feasible trial to compare")
    data = load_dataset(search.data)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    # cost first, as in stage 1: one side-by-side timing decides which baselines fit (and is the table's)
    latencies = _latencies(timed, search, out, data, console, config.timing_repeats)
    budget_ms = _side_by_side_budget_ms(search, stage1_budget_ms, latencies["results"], console)
    over = {c.label for c in timed if c.is_baseline and budget_ms is not None
            and latencies["results"][c.label]["median_ms"] > budget_ms}
    candidates = [c for c in timed if c.label not in over]
    excluded = excluded_baselines(rows, timed) + [
        {"label": label, "latency_ms": latencies["results"][label]["median_ms"], "timed": "side by side"}
        for label in sorted(over)]
    recipe = _recipe(search, config, out)
    lock = DeviceLock(search.device_lock, device=search.latency.device)
    jobs = [(c, s) for c in candidates for s in config.seeds]
    seconds: dict[str, float] = {}  # one run's wall time per candidate (its seeds cost about the same)
    left: list[tuple[Candidate, int, Path, dict[str, Any]]] = []
    for candidate, seed in jobs:
        path = runs / f"{_slug(candidate.label)}-s{seed}.json"
        doc = json.loads(path.read_text()) if path.is_file() else {}
        key = _run_key(candidate, seed, recipe, search)
        if doc.get("key") == key:
            if doc.get("seconds"):
                seconds.setdefault(candidate.label, float(doc["seconds"]))
            continue
        found = find_run(key, config.reuse_runs)
        if found is not None:
            console.log(f"stage 2: {candidate.label} seed {seed} was trained under the same key in {found[0]}: reused")
            _write_json(path, reuse_run(found, candidate.label, path.with_suffix(".pt")))
            continue
        if doc:
            console.log(f"stage 2: {path.name} was trained with another recipe, data or architecture: training again")
        left.append((candidate, seed, path, key))
    for n, (candidate, seed, path, key) in enumerate(left):
        console.log(f"stage 2 [{len(jobs) - len(left) + n + 1}/{len(jobs)}]: {candidate.label} seed {seed}, "
                    f"{recipe.epochs} epochs{_eta([c.label for c, *_ in left[n:]], seconds)}")
        started = time.monotonic()
        with lock.training() as slot:
            record = _train_one(candidate, seed, recipe, data, runs, slot)
        seconds[candidate.label] = time.monotonic() - started
        _write_json(path, {**record, "key": key})
    stored = {c.label: [json.loads((runs / f"{_slug(c.label)}-s{s}.json").read_text()) for s in config.seeds]
              for c in candidates}
    rows_out = [summary_row({"label": c.label, "trial": c.trial, "baseline": c.is_baseline, "arch": c.arch,
                             "stage1_val_accuracy": c.stage1_val_accuracy},
                            stored[c.label], latencies["results"][c.label], budget_ms) for c in candidates]
    rows_out.sort(key=lambda r: -(r["test_mean"] if r["test_mean"] is not None else -1.0))
    summary = {"budget_ms": budget_ms, **({"budget_of": search.budget_of} if search.budget_of else {}),
               "seeds": list(config.seeds), "epochs": config.epochs,
               "top_k": config.top_k, "recipe": dataclasses.asdict(recipe), "rows": rows_out,
               "excluded_baselines": excluded, "verdict": verdict(rows_out, excluded),
               "timing": {k: latencies.get(k) for k in ("slowdown", "slowdown_attempts", "slowed")}, "git": revision}
    _write_json(out / "stage2.json", summary)
    write_text_atomic(out / "stage2.md", markdown(summary) + "\n")
    return summary


def _stage1_budget_ms(search: SearchConfig, study: optuna.Study) -> float | None:
    """The latency budget stage 1 judged trials by: ``budget_ms``, or with ``budget_of`` the reference's
    timing stored in the study (`searchspace.budget_of`)."""
    if search.budget_of is None:
        return search.budget_ms
    reference = reference_cost(study)
    if reference is None:
        raise StudyError(f"stage 2: study {search.study_name!r} has no timing of its budget_of baseline "
                         f"{search.budget_of!r}: was it searched with budget_of?")
    return reference[1].latency_ms


def _side_by_side_budget_ms(search: SearchConfig, stage1_budget_ms: float | None, results: dict[str, Any],
                            console: Console) -> float | None:
    """Which models fit, in the side-by-side timing: with ``budget_of``, no more than the reference's
    latency in that same run (one machine state decides); else the absolute budget."""
    if search.budget_of is None:
        return search.budget_ms
    if search.budget_of in results:
        return float(results[search.budget_of]["median_ms"])
    console.log(f"[yellow]warning:[/yellow] stage 2: the budget_of baseline {search.budget_of} is not a stage-2 "
                f"candidate (its stage-1 trial did not train), so not in the side-by-side timing: its timing when "
                f"the search started, {stage1_budget_ms} ms, is the budget")
    return stage1_budget_ms


def _eta(labels: list[str], seconds: dict[str, float]) -> str:
    """Time left for the runs of ``labels``: each candidate's own measured run, else the mean of those known."""
    if not seconds:
        return ""
    mean = sum(seconds.values()) / len(seconds)
    left = sum(seconds.get(label, mean) for label in labels)
    return f" (about {datetime.timedelta(seconds=round(left))} left with this one)"


def _recipe(search: SearchConfig, config: Stage2Config, out: Path) -> TrainConfig:
    """The one recipe of every stage-2 run. An "auto" memory format is decided once and stored, so a
    resumed stage trains in the same layout (the two layouts' kernels agree only to rounding, and
    rounding differences grow over a training run)."""
    recipe = dataclasses.replace(
        search.train, epochs=config.epochs, lr=config.lr or search.train.lr,
        batch_size=config.batch_size or search.train.batch_size,
    )
    if recipe.memory_format != "auto":
        return recipe
    path = out / "memory_format.json"
    if path.is_file():
        name = str(json.loads(path.read_text())["memory_format"])
    else:
        choice = choose_memory_format(resolve_device(recipe.device), "auto")
        name = choice.name
        _write_json(path, choice.to_dict() | {"memory_format": name})
    return dataclasses.replace(recipe, memory_format=name)


def _run_key(candidate: Candidate, seed: int, recipe: TrainConfig, search: SearchConfig) -> dict[str, Any]:
    """What a stored run was trained with; a run stored under another key is trained again."""
    doc = {"arch_hash": candidate.arch_hash, "seed": seed,
           "recipe": dataclasses.asdict(dataclasses.replace(recipe, seed=seed)),
           "data": dataclasses.asdict(search.data)}
    return as_stored(doc)


def _train_one(candidate: Candidate, seed: int, recipe: TrainConfig, data: ImageDataset, runs: Path,
               slot: TrainingSlot) -> dict[str, Any]:
    def between_epochs(epoch: int, accuracy: float) -> None:
        with slot.paused():  # a latency measurement waiting on the device lock runs here
            pass

    torch.manual_seed(seed)
    model = dscnn.build_model(dscnn.config_from_dict(candidate.arch))
    base = {"label": candidate.label, "seed": seed, "epochs": recipe.epochs, "threads": torch.get_num_threads()}
    try:
        result = train_and_evaluate(model, data, dataclasses.replace(recipe, seed=seed), progress=True,
                                    on_epoch=between_epochs)
    except TrainingDiverged as exc:  # a row of the table (deterministic: a resume would diverge again)
        return {**base, "diverged": str(exc)}
    test_view = data.test_view()
    test_accuracy = evaluate_accuracy(model, test_view, recipe)
    checkpoint = runs / f"{_slug(candidate.label)}-s{seed}.pt"
    dscnn.save_checkpoint(checkpoint, model.cpu(), metrics={"val_accuracy": result.final_accuracy,
                                                             "test_accuracy": test_accuracy, "seed": seed})
    return {**base, "val_accuracy": result.final_accuracy, "test_accuracy": test_accuracy,
            "test_images": len(test_view.val_labels), "seconds": result.seconds,
            "memory_format": result.memory_format, "train_images_per_second": result.train_images_per_second,
            "checkpoint": checkpoint.name}


def _latencies(candidates: list[Candidate], search: SearchConfig, out: Path, data: ImageDataset,
               console: Console, repeats: int) -> dict[str, Any]:
    """Every candidate's deploy form timed side by side in one run; stored, and reused by a resumed
    stage only for the same candidates and settings, and only when no entry was measured on a busy
    machine and the run was not slowed as a whole. A run slower as a whole than stage 1 (`slowed`)
    is timed again (`timing_drift.least_slowed`); the least slowed is kept."""
    path = out / "latency.json"
    resolution = search.data.resolution or data.resolution
    settings = search.latency.replace(resolution=resolution, repeats=repeats)
    key = as_stored({"settings": settings.to_dict(), "archs": {c.label: c.arch_hash for c in candidates}})
    if path.is_file():
        stored = dict(json.loads(path.read_text()))
        busy = any(r.get("busy") for r in stored["results"].values())
        if stored.get("key") == key and not busy and not stored.get("slowed"):
            return stored
    models = {c.label: dscnn.deploy_copy(dscnn.build_model(dscnn.config_from_dict(c.arch))) for c in candidates}
    lock = DeviceLock(search.device_lock, device=settings.device)
    stage1 = {c.label: c.stage1_latency_ms for c in candidates}
    results, factor, factors = least_slowed(
        lambda: measure_side_by_side(models, settings, guard=lock.measuring()),
        lambda results: slowdown({k: v.median_ms for k, v in results.items()}, stage1),
        lambda factor, attempt: console.log(
            f"stage 2: every model timed {factor:.2f}x its stage-1 latency (median): the machine runs slower as a "
            f"whole; timing again in {timing_drift.TIMING_PAUSE_S:g} s ({attempt}/{timing_drift.TIMING_ATTEMPTS})"))
    if slowed(factor):
        console.log(f"[yellow]warning:[/yellow] stage 2: the side-by-side timing stayed {factor:.2f}x slower than stage 1 "
                    f"in {len(factors)} runs: which baselines fit the budget is decided on a slowed machine")
    doc = {"key": key, "settings": settings.to_dict(),
           "results": {k: dataclasses.asdict(v) for k, v in results.items()}, "slowdown": factor,
           "slowdown_attempts": factors, "slowed": slowed(factor)}
    _write_json(path, doc)
    return doc


def _slug(label: str) -> str:
    return label.replace(" ", "_").replace("/", "_")


def run_record(out: Path, label: str, seed: int) -> dict[str, Any]:
    """The stored result of one stage-2 training (its ``checkpoint`` resolved to a path)."""
    doc = dict(json.loads((out / "runs" / f"{_slug(label)}-s{seed}.json").read_text()))
    return {**doc, "checkpoint": str(out / "runs" / doc["checkpoint"])}


def restore_run(search: SearchConfig, config: Stage2Config, out: Path, label: str, seed: int,
                arch: dict[str, Any], console: Console) -> dict[str, Any]:
    """`run_record` of one stored run, with its checkpoint on disk: checkpoints are not committed, so in a
    clean checkout of a finished study a later stage (prune) would find none. A missing one is trained
    again with the stored run's recipe, data and seed (the same key), and the stored numbers stay the
    study's: the retrained model's own accuracies are returned under ``restored``, with a warning when
    they differ (training reproduces bit for bit only on the same device, threads and library versions)."""
    run = run_record(out, label, seed)
    if Path(run["checkpoint"]).is_file():
        return run
    if not arch:
        raise StudyError(f"stage 2: {run['checkpoint']} is missing, and the stage-2 summary stores no architecture "
                         "to train it again from: delete the stage2 folder to run stage 2 again")
    candidate = Candidate(label, -1, False, arch, None)
    recipe = _recipe(search, config, out)
    if run.get("key") != _run_key(candidate, seed, recipe, search):
        raise StudyError(f"stage 2: {run['checkpoint']} is missing, and the stored run was trained with another recipe, "
                         "data or architecture than the study file gives now: delete the stage2 folder to run stage 2 again")
    console.log(f"stage 2: {Path(run['checkpoint']).name} is missing (checkpoints are not committed): training "
                f"{label} seed {seed} again, {recipe.epochs} epochs, as stored")
    lock = DeviceLock(search.device_lock, device=search.latency.device)
    with lock.training() as slot:
        again = _train_one(candidate, seed, recipe, load_dataset(search.data), out / "runs", slot)
    if "diverged" in again:
        raise StudyError(f"stage 2: {label} seed {seed} diverged when trained again ({again['diverged']}); stored: "
                         f"validation top-1 {run['val_accuracy']:.4f}")
    restored = {k: again[k] for k in ("val_accuracy", "test_accuracy", "seconds")}
    if (again["val_accuracy"], again["test_accuracy"]) != (run["val_accuracy"], run["test_accuracy"]):
        console.log(f"[yellow]warning:[/yellow] {label} seed {seed} trained again reaches validation / test top-1 "
                    f"{again['val_accuracy']:.4f} / {again['test_accuracy']:.4f}, stored {run['val_accuracy']:.4f} / "
                    f"{run['test_accuracy']:.4f}: the later stages use the model trained now")
    return {**run, "restored": restored}


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(doc, indent=2, default=str) + "\n")

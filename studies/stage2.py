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
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from rich.console import Console

import dscnn
from dscnn.data import ImageDataset, load_dataset
from dscnn.side_by_side import measure_side_by_side
from dscnn.train import TrainConfig, evaluate_accuracy, train_and_evaluate
from searchspace import SearchConfig, open_storage
from searchspace.device_lock import DeviceLock
from searchspace.report import TrialRow, trained, trial_rows
from studies.plan import StudyError

__all__ = ["Candidate", "Stage2Config", "markdown", "run_record", "run_stage2", "select_candidates", "verdict"]


@dataclass(frozen=True)
class Stage2Config:
    """The final comparison's recipe (the [stage2] table of a study file)."""

    top_k: int = 3  # searched trials carried over, by stage-1 validation accuracy
    seeds: tuple[int, ...] = (0, 1)  # every candidate is trained once per seed
    epochs: int = 30  # the longer recipe (the search's batch size, optimizer, LR and augmentation)
    lr: float | None = None  # None = the search's peak LR
    batch_size: int | None = None  # None = the search's

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if self.top_k < 1 or self.epochs < 1:
            raise StudyError(f"[stage2] top_k and epochs must be >= 1, got {self.top_k}, {self.epochs}")
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


def select_candidates(rows: list[TrialRow], top_k: int) -> list[Candidate]:
    """The top-k searched trials by stage-1 validation accuracy and every baseline that fit the budget.

    Reads nothing but stage-1 trial records: the test split cannot influence the choice.
    """
    done = trained(rows)
    searched = sorted((r for r in done if not r.is_baseline), key=lambda r: (-(r.accuracy or 0.0), r.number))
    chosen = searched[:top_k]
    seen: set[str] = set()
    for r in sorted(rows, key=lambda r: r.number):
        if r.is_baseline and r.feasible and r.arch and r.label not in seen:  # a re-run trial counts once
            seen.add(r.label)
            chosen.append(r)
    return [Candidate(r.label, r.number, r.is_baseline, json.loads(r.arch or "{}"), r.accuracy) for r in chosen]


def run_stage2(search: SearchConfig, config: Stage2Config, out: Path, console: Console | None = None) -> dict[str, Any]:
    """Run (or resume) stage 2 of the study ``search`` describes; returns the stored summary."""
    console = console or Console()
    if not search.data.holdout_per_class:
        raise StudyError("stage 2 reports on a test split that selection never saw: set holdout_per_class in "
                         "[search] (validation is then held out of the training split)")
    study = optuna.load_study(study_name=search.study_name, storage=open_storage(search.storage))
    candidates = select_candidates(trial_rows(study), config.top_k)
    if not any(not c.is_baseline for c in candidates):
        raise StudyError("stage 2: the search has no trained feasible trial to compare")
    data = load_dataset(search.data)
    recipe = dataclasses.replace(
        search.train, epochs=config.epochs, lr=config.lr or search.train.lr,
        batch_size=config.batch_size or search.train.batch_size,
    )
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    total = len(candidates) * len(config.seeds)
    for i, (candidate, seed) in enumerate((c, s) for c in candidates for s in config.seeds):
        path = runs / f"{_slug(candidate.label)}-s{seed}.json"
        if path.is_file():
            continue
        console.log(f"stage 2 [{i + 1}/{total}]: {candidate.label} seed {seed}, {recipe.epochs} epochs")
        _write_json(path, _train_one(candidate, seed, recipe, data, runs))
    latencies = _latencies(candidates, search, out, data)
    summary = _summarise(candidates, config, runs, latencies, search)
    _write_json(out / "stage2.json", summary)
    (out / "stage2.md").write_text(markdown(summary) + "\n")
    return summary


def _train_one(candidate: Candidate, seed: int, recipe: TrainConfig, data: ImageDataset, runs: Path) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = dscnn.build_model(dscnn.config_from_dict(candidate.arch))
    result = train_and_evaluate(model, data, dataclasses.replace(recipe, seed=seed), progress=True)
    test_view = data.test_view()
    test_accuracy = evaluate_accuracy(model, test_view, recipe)
    checkpoint = runs / f"{_slug(candidate.label)}-s{seed}.pt"
    dscnn.save_checkpoint(checkpoint, model.cpu(), metrics={"val_accuracy": result.final_accuracy,
                                                             "test_accuracy": test_accuracy, "seed": seed})
    return {"label": candidate.label, "seed": seed, "val_accuracy": result.final_accuracy,
            "test_accuracy": test_accuracy, "epochs": recipe.epochs, "seconds": result.seconds,
            "checkpoint": checkpoint.name}


def _latencies(candidates: list[Candidate], search: SearchConfig, out: Path, data: ImageDataset) -> dict[str, Any]:
    path = out / "latency.json"
    if path.is_file():
        stored = dict(json.loads(path.read_text()))
        if set(stored["results"]) == {c.label for c in candidates}:
            return stored  # else the candidates changed: time the new set together again
    resolution = search.data.resolution or data.resolution
    settings = search.latency.replace(resolution=resolution)
    models = {c.label: dscnn.deploy_copy(dscnn.build_model(dscnn.config_from_dict(c.arch))) for c in candidates}
    lock = DeviceLock(search.device_lock, device=settings.device)
    results = measure_side_by_side(models, settings, guard=lock.measuring())
    doc = {"settings": settings.to_dict(), "results": {k: dataclasses.asdict(v) for k, v in results.items()}}
    _write_json(path, doc)
    return doc


def _summarise(candidates: list[Candidate], config: Stage2Config, runs: Path, latencies: dict[str, Any],
               search: SearchConfig) -> dict[str, Any]:
    rows = []
    for c in candidates:
        seeds = [json.loads((runs / f"{_slug(c.label)}-s{s}.json").read_text()) for s in config.seeds]
        test = [r["test_accuracy"] for r in seeds]
        val = [r["val_accuracy"] for r in seeds]
        latency = latencies["results"][c.label]
        rows.append({
            "label": c.label, "trial": c.trial, "baseline": c.is_baseline, "stage1_val_accuracy": c.stage1_val_accuracy,
            "test_mean": statistics.mean(test), "test_std": statistics.stdev(test), "test": test,
            "val_mean": statistics.mean(val), "latency_ms": latency["median_ms"], "latency_noisy": latency["noisy"],
            "latency_busy": latency.get("busy", False),
            "fits": search.budget_ms is None or latency["median_ms"] <= search.budget_ms,
        })
    rows.sort(key=lambda r: -r["test_mean"])
    return {"budget_ms": search.budget_ms, "seeds": list(config.seeds), "epochs": config.epochs,
            "top_k": config.top_k, "rows": rows, "verdict": verdict(rows)}


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Does the best searched model beat the best fitting baseline at no more latency? (by mean test accuracy)"""
    searched = [r for r in rows if not r["baseline"]]
    baselines = [r for r in rows if r["baseline"] and r["fits"]]
    if not searched or not baselines:
        return {"comparable": False, "reason": "no searched model or no baseline within the budget"}
    best_base = max(baselines, key=lambda r: r["test_mean"])
    rivals = [r for r in searched if r["latency_ms"] <= best_base["latency_ms"]]
    best = max(rivals or searched, key=lambda r: r["test_mean"])
    return {
        "comparable": True, "best_searched": best["label"], "best_baseline": best_base["label"],
        "gain_points": round(100 * (best["test_mean"] - best_base["test_mean"]), 2),
        "at_most_baseline_latency": best["latency_ms"] <= best_base["latency_ms"],
    }


def markdown(summary: dict[str, Any]) -> str:
    """The stage-2 table, from the stored summary only."""
    lines = [
        f"Stage 2: {len(summary['seeds'])} seeds x {summary['epochs']} epochs, test split (never used to choose); "
        "latency measured side by side in one interleaved run.",
        "",
        "| model | baseline | test top-1 mean | spread (std) | per seed | val mean | stage-1 val | latency ms | fits |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        flag = " (noisy)" if r["latency_noisy"] else ""
        flag += " (busy machine)" if r.get("latency_busy") else ""
        stage1 = f"{r['stage1_val_accuracy']:.4f}" if r["stage1_val_accuracy"] is not None else "-"
        lines.append(
            f"| {r['label']} | {'yes' if r['baseline'] else 'no'} | {r['test_mean']:.4f} | {r['test_std']:.4f} | "
            f"{', '.join(f'{t:.4f}' for t in r['test'])} | {r['val_mean']:.4f} | {stage1} | "
            f"{r['latency_ms']:.3f}{flag} | {'yes' if r['fits'] else 'no'} |"
        )
    v = summary["verdict"]
    if v["comparable"]:
        lines += ["", f"Best searched ({v['best_searched']}) vs best fitting baseline ({v['best_baseline']}): "
                      f"{v['gain_points']:+.2f} points of mean test top-1"
                      f"{'' if v['at_most_baseline_latency'] else ' (but slower than that baseline)'}."]
    else:
        lines += ["", f"No comparison: {v['reason']}."]
    return "\n".join(lines)


def _slug(label: str) -> str:
    return label.replace(" ", "_").replace("/", "_")


def run_record(out: Path, label: str, seed: int) -> dict[str, Any]:
    """The stored result of one stage-2 training (its ``checkpoint`` resolved to a path)."""
    doc = dict(json.loads((out / "runs" / f"{_slug(label)}-s{seed}.json").read_text()))
    return {**doc, "checkpoint": str(out / "runs" / doc["checkpoint"])}


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(path)

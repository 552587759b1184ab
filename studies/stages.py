"""The stages of a study (`studies.run`): each takes the plan and the earlier stages' records and
returns its own JSON-ready record. Artifacts go to ``<out>/<stage>/``."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from rich.console import Console

import dscnn
from searchspace import run_search
from studies.plan import StudyError, StudyPlan

Record = dict[str, Any]


def search(plan: StudyPlan, records: dict[str, Record], console: Console) -> Record:
    config = plan.search_config()
    result = run_search(config, console=console)
    if result.best is None:
        raise StudyError("the search found no feasible architecture that finished training: raise the budget")
    best = result.best
    return {
        "study_name": config.study_name, "storage": config.storage, "out": str(config.out_dir),
        "best_trial": best.label, "best_accuracy": best.accuracy, "best_latency_ms": best.latency_ms,
        "best_macs": best.macs, "arch": json.loads(best.arch or "{}"), "finished_trials": result.finished_trials,
        "budget_ms": config.budget_ms, "budget_macs": config.budget_macs, "device": config.latency.device,
        "threads": config.latency.threads,
    }


def stage2(plan: StudyPlan, records: dict[str, Record], console: Console) -> Record:
    """The final comparison (`studies.stage2`), when the study file has a [stage2] table."""
    if plan.stage2 is None:
        return {"skipped": True}
    from studies.stage2 import run_stage2

    summary = run_stage2(plan.search_config(), plan.stage2, plan.stage_dir("stage2"), console)
    console.print(f"stage 2: {summary['verdict']}")
    return {"skipped": False, "summary": summary, "table": str(plan.stage_dir("stage2") / "stage2.md")}


def retrain(plan: StudyPlan, records: dict[str, Record], console: Console) -> Record:
    """The winner's architecture trained from scratch for the final epoch budget; after a stage 2,
    its best searched model by validation accuracy (seed 0) instead, trained there already."""
    if not records.get("stage2", {}).get("skipped", True):
        return _stage2_winner(plan, records["stage2"]["summary"])
    from dscnn.data import load_dataset
    from dscnn.train import train_and_evaluate

    config = plan.search_config()
    arch = dscnn.config_from_dict(records["search"]["arch"])
    model = dscnn.build_model(arch)
    data = load_dataset(config.data)
    train = dataclasses.replace(config.train, epochs=plan.retrain_epochs)
    console.log(f"retraining {arch.family} ({records['search']['best_trial']}) for {train.epochs} epochs")
    result = train_and_evaluate(model, data, train, progress=True)
    path = plan.stage_dir("retrain") / "model.pt"
    dscnn.save_checkpoint(path, model.cpu(), metrics={"accuracy": result.final_accuracy})
    return {"checkpoint": str(path), "accuracy": result.final_accuracy, "epoch_accuracies": list(result.val_accuracies),
            "epochs": train.epochs}


def _stage2_winner(plan: StudyPlan, summary: Record) -> Record:
    from studies.stage2 import run_record

    searched = [r for r in summary["rows"] if not r["baseline"]]
    best = max(searched, key=lambda r: r["val_mean"])  # chosen by validation, like everything else
    run = run_record(plan.stage_dir("stage2"), best["label"], summary["seeds"][0])
    return {"checkpoint": run["checkpoint"], "accuracy": run["val_accuracy"], "test_accuracy": run["test_accuracy"],
            "epochs": run["epochs"], "from_stage2": best["label"]}


def _algorithm(plan: StudyPlan) -> Any:
    if plan.prune_method == "resrep":
        from pruning.resrep import ResRep, ResRepConfig

        return ResRep(ResRepConfig(**plan.prune_options))
    from pruning.csgd import CSGD, CSGDConfig

    return CSGD(CSGDConfig(**plan.prune_options))


def prune(plan: StudyPlan, records: dict[str, Record], console: Console) -> Record:
    from pruning.run import RunConfig, run_pruning

    config = plan.search_config()
    train = dataclasses.replace(
        RunConfig(target=plan.target_flops).train, epochs=plan.prune_epochs, batch_size=config.train.batch_size,
        device=config.train.device, seed=config.train.seed,
    )
    run = RunConfig(
        target=plan.target_flops, data=config.data, train=train, finetune_epochs=plan.finetune_epochs,
        out=str(plan.stage_dir("prune") / "pruned.pt"), latency_threads=config.latency.threads,
    )
    _, report = run_pruning(_algorithm(plan), run, checkpoint=records["retrain"]["checkpoint"], console=console)
    report.print(console)
    return {"checkpoint": report.output, "report": report.to_dict()}


def export(plan: StudyPlan, records: dict[str, Record], console: Console) -> Record:
    from dscnn.export import ExportConfig, run_export

    folder = plan.stage_dir("export")
    config = ExportConfig(
        checkpoint=records["prune"]["checkpoint"], onnx=str(folder / "model.onnx"),
        torchscript=str(folder / "model.ts") if plan.torchscript else None,
    )
    report = run_export(config)
    if not report.ok:
        raise StudyError(f"export checks failed: {'; '.join(report.problems)}")
    console.log(f"exported {config.onnx}: onnxruntime matches PyTorch, no BN or branch nodes")
    return report.to_dict()


def report(plan: StudyPlan, records: dict[str, Record], console: Console) -> Record:
    from studies.study_report import write_report

    path = write_report(plan, records, console)
    return {"report": str(path)}


"""The stages of a study (`studies.run`): each takes the plan and the earlier stages' records and
returns its own JSON-ready record. Artifacts go to ``<out>/<stage>/``."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from rich.console import Console

import dscnn
from studies.run import StudyPlan

Record = dict[str, Any]


def _search_config(plan: StudyPlan) -> Any:
    """The search's `SearchConfig`, from the [search] table with the study folder as default output."""
    import search as search_cli

    argv = ["--study", str(plan.path)]
    if "out" not in plan.search:
        argv += ["--out", str(plan.stage_dir("search"))]
    if "storage" not in plan.search:
        argv += ["--storage", plan.storage]
    if "study_name" not in plan.search:
        argv += ["--study-name", plan.path.stem]
    try:
        return search_cli.parse_args(argv)
    except SystemExit as exc:  # argparse already printed why
        raise ValueError(f"{plan.path}: invalid [search] table (see the message above)") from exc


def search(plan: StudyPlan, records: dict[str, Record], console: Console) -> Record:
    from searchspace.run import run_search

    config, ray_config = _search_config(plan)
    if ray_config is None:
        result = run_search(config, console=console)
    else:
        from searchspace.ray_backend import run_ray_search

        result = run_ray_search(config, ray_config, console=console)
    if result.best is None:
        raise ValueError("the search found no feasible architecture that finished training: raise the budget")
    best = result.best
    return {
        "study_name": config.study_name, "storage": config.storage, "out": str(config.out_dir),
        "best_trial": best.label, "best_accuracy": best.accuracy, "best_latency_ms": best.latency_ms,
        "best_macs": best.macs, "arch": json.loads(best.arch or "{}"), "finished_trials": result.finished_trials,
        "budget_ms": config.budget_ms, "budget_macs": config.budget_macs, "device": config.latency.device,
        "threads": config.latency.threads,
    }


def retrain(plan: StudyPlan, records: dict[str, Record], console: Console) -> Record:
    """The winner's architecture trained from scratch for the final epoch budget."""
    from dscnn.data import load_dataset
    from dscnn.train import train_and_evaluate

    config, _ = _search_config(plan)
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


def _algorithm(plan: StudyPlan) -> Any:
    if plan.prune_method == "resrep":
        from pruning.resrep import ResRep, ResRepConfig

        return ResRep(ResRepConfig(**plan.prune_options))
    from pruning.csgd import CSGD, CSGDConfig

    return CSGD(CSGDConfig(**plan.prune_options))


def prune(plan: StudyPlan, records: dict[str, Record], console: Console) -> Record:
    from pruning.run import RunConfig, run_pruning

    config, _ = _search_config(plan)
    data = config.data
    run = RunConfig(
        target=plan.target_flops, dataset=data.name, data_dir=data.data_dir, train_per_class=data.train_per_class,
        val_per_class=data.val_per_class, epochs=plan.prune_epochs, finetune_epochs=plan.finetune_epochs,
        batch_size=config.train.batch_size, device=config.train.device,
        out=str(plan.stage_dir("prune") / "pruned.pt"), latency_threads=config.latency.threads,
    )
    _, report = run_pruning(_algorithm(plan), run, checkpoint=records["retrain"]["checkpoint"], console=console)
    report.print(console)
    return {"checkpoint": report.output, "report": report.to_dict()}


def export(plan: StudyPlan, records: dict[str, Record], console: Console) -> Record:
    from dscnn._export_cli import ExportConfig, run_export

    folder = plan.stage_dir("export")
    config = ExportConfig(
        checkpoint=records["prune"]["checkpoint"], onnx=str(folder / "model.onnx"),
        torchscript=str(folder / "model.ts") if plan.torchscript else None,
    )
    doc = run_export(config)
    if not doc["ok"]:
        raise ValueError(f"export checks failed: {'; '.join(doc['problems'])}")
    console.log(f"exported {config.onnx}: onnxruntime matches PyTorch, no BN or branch nodes")
    return doc


def report(plan: StudyPlan, records: dict[str, Record], console: Console) -> Record:
    from studies.study_report import write_report

    path = write_report(plan, records, console)
    return {"report": str(path)}


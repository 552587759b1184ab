"""The stages of a study (`studies.run`): each takes the plan and the earlier stages' records and
returns its own JSON-ready record. Artifacts go to ``<out>/<stage>/``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from rich.console import Console

import dscnn
from dscnn.checkpoint import read_checkpoint, write_text_atomic
from dscnn.environment import hardware_id
from dscnn.json_record import as_stored
from searchspace import run_search
from studies import timing_drift
from studies.plan import StudyError, StudyPlan
from studies.timing_drift import least_slowed, slowed

Record = dict[str, Any]

#: A pruned model whose validation top-1 is at most this multiple of chance has collapsed.
COLLAPSED = 1.2


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
        "budget_ms": result.budget_ms, **({"budget_of": config.budget_of} if config.budget_of else {}),
        "budget_macs": config.budget_macs, "device": config.latency.device,
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
        return _stage2_winner(plan, records["stage2"]["summary"], console)
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


def _stage2_winner(plan: StudyPlan, summary: Record, console: Console) -> Record:
    from studies.stage2 import restore_run
    from studies.stage2_table import winner

    best = winner(summary["rows"])  # by validation among those that fit: the verdict's model too
    if best is None:
        raise StudyError("stage 2: no searched model finished training (every seed diverged)")
    seed = next(s for s in summary["seeds"] if s not in best.get("diverged_seeds", []))
    run = restore_run(plan.search_config(), plan.stage2, plan.stage_dir("stage2"), best["label"], seed,
                      best.get("arch") or {}, console)
    return {"checkpoint": run["checkpoint"], "accuracy": run["val_accuracy"], "test_accuracy": run["test_accuracy"],
            "epochs": run["epochs"], "from_stage2": best["label"], "seed": seed, "arch": best.get("arch"),
            "stage1_val_accuracy": best.get("stage1_val_accuracy"), "fits": best.get("fits"),
            **({"restored": run["restored"]} if "restored" in run else {})}


def _algorithm(method: str, options: dict[str, Any]) -> Any:
    if method == "resrep":
        from pruning.resrep import ResRep, ResRepConfig

        return ResRep(ResRepConfig(**options))
    if method == "csgd":
        from pruning.csgd import CSGD, CSGDConfig

        return CSGD(CSGDConfig(**options))
    from pruning.magnitude import Magnitude, MagnitudeConfig

    return Magnitude(MagnitudeConfig(**options))


def prune(plan: StudyPlan, records: dict[str, Record], console: Console) -> Record:
    """Every [prune] method on the winner, at equal epochs (a method without regularised training
    fine-tunes for the regularised epochs too; each method's record holds the epochs its report says
    ran, and a split other than the plan's is a `StudyError`), each resumable on its own; the one
    exported is the most accurate on validation among those that met the target without collapsing
    (top-1 above `COLLAPSED` x chance). When none did, the stage still finishes and says so
    (``chosen`` None, ``exported`` "unpruned", ``reason``): its ``checkpoint`` is the unpruned winner's,
    so the export and report stages run on it. ``collapsed`` is True when a method met the target at
    chance (each method's record says which)."""
    checkpoint = records["retrain"]["checkpoint"]
    target_latency = _shared_latency_target(plan, checkpoint, console, _stage2_latency_ms(records))
    source = record_digest(records["retrain"])  # a method pruned from another winner is pruned again
    ran = {m: _prune_one(plan, m, checkpoint, source, target_latency, console) for m in plan.methods}
    chance = 1.0 / int(read_checkpoint(checkpoint)["config"].get("num_classes") or 1)  # no model rebuilt
    # judged on copies: the stored per-method records stay what the runs wrote (a resume reads them back)
    runs = {m: _judged(r, chance) for m, r in ran.items()}
    reason = "; ".join(f"{m}: {r['outcome']}" for m, r in runs.items())
    collapsed = [m for m, r in runs.items() if r["met_target"] and r.get("collapsed")]
    for method in collapsed:  # met the target by destroying the network: never silent, never exported
        console.log(f"[bold red]warning:[/bold red] {method} met the target at chance (top-1 "
                    f"{_accuracy(runs[method]):.4f}, chance {chance:.4f}): not exported")
    record = {"methods": runs, "target": target_latency or plan.target_flops, "target_latency": target_latency,
              "collapsed": bool(collapsed), "chance": chance, "reason": reason}
    usable = {m: r for m, r in runs.items() if r["met_target"] and "report" in r and not r["collapsed"]}
    if not usable:
        console.log("[bold red]warning:[/bold red] no pruned model met the target without collapsing: exporting the "
                    f"unpruned winner ({reason}); to retry the methods that failed, run the study again with --redo "
                    "prune (the export and the report follow if the outcome changes)")
        if at_chance(records["retrain"].get("accuracy"), chance):
            console.log(f"[bold red]warning:[/bold red] the unpruned winner is itself at chance (validation top-1 "
                        f"{records['retrain'].get('accuracy')}, chance {chance:.4f}): train it longer")
        return {**record, "checkpoint": checkpoint, "chosen": None, "exported": "unpruned"}
    chosen = max(usable, key=lambda m: _accuracy(usable[m]))
    return {**record, "checkpoint": usable[chosen]["checkpoint"], "report": usable[chosen]["report"],
            "chosen": chosen, "exported": "pruned"}


#: A stage record's finish time (seconds since the epoch): a stage that finished before an earlier stage
#: last did (that stage was run again since) is out of date (`studies.run.stale_stages`).
FINISHED_AT = "finished_at"
#: What a rerun of an unchanged stage changes in its record: not a change of what later stages read.
VOLATILE = frozenset({"seconds", "git", FINISHED_AT, "restored"})


def record_digest(record: Record) -> str:
    """A digest of ``record`` without its `VOLATILE` fields, as stored (canonical JSON: NaN equals NaN):
    two runs that produced the same thing have the same digest."""
    text = json.dumps(as_stored({k: v for k, v in record.items() if k not in VOLATILE}), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def lost_checkpoint(record: Record) -> bool:
    """Does ``record`` name a checkpoint that is not on disk (checkpoints are not committed)?"""
    checkpoint = record.get("checkpoint")
    return isinstance(checkpoint, str) and bool(checkpoint) and not Path(checkpoint).is_file()


def at_chance(accuracy: float | None, chance: float) -> bool:
    """Top-1 at most `COLLAPSED` x ``chance``: the network learned nothing (None counts as 0)."""
    return float(accuracy or 0.0) <= COLLAPSED * chance


def _accuracy(run: Record) -> float:
    """A method's validation top-1 after pruning (None, never measured, counts as 0)."""
    return float(run["report"]["after"]["accuracy"] or 0.0)


def _judged(run: Record, chance: float) -> Record:
    """``run`` with ``collapsed`` (top-1 at most `COLLAPSED` x ``chance``) and a one-line ``outcome``."""
    if "report" not in run:
        verb = "missed the target" if run.get("missed") else "failed"  # TargetMissed says by how much
        return {**run, "collapsed": False, "outcome": f"{verb} ({run.get('error', '?')})"}
    accuracy = _accuracy(run)
    collapsed = at_chance(accuracy, chance)
    if not run["met_target"]:
        outcome = f"missed the target{_missed_by(run['report'])} (top-1 {accuracy:.4f})"
    elif collapsed:
        outcome = f"met the target but collapsed (top-1 {accuracy:.4f}, chance {chance:.4f})"
    else:
        outcome = f"met the target (top-1 {accuracy:.4f})"
    return {**run, "collapsed": collapsed, "outcome": outcome}


def _missed_by(report: Record) -> str:
    """`` by 12.0%: 3.1 ms measured, target 2.8 ms`` when the report holds both latencies, else ``""``."""
    latency = report.get("latency") or {}
    measured, target = (latency.get("after") or {}).get("median_ms"), latency.get("target_ms")
    if measured is None or not target:
        return ""
    return f" by {measured / target - 1.0:.1%}: {measured:.4g} ms measured, target {target:.4g} ms"


def _latency_settings(config: Any, resolution: int) -> Any:
    """The settings every pruning run of the study times with (built by `pruning.run.RunConfig` itself)."""
    from pruning.run import RunConfig

    lat = config.latency
    return RunConfig(target="0.5x", latency_threads=lat.threads, latency_runtime=lat.runtime,
                     latency_device=lat.device).latency_settings(resolution)


def _stage2_latency_ms(records: dict[str, Record]) -> float | None:
    """The winner's latency in stage 2's side-by-side run (a reference for a slowed machine), if any."""
    label = records.get("retrain", {}).get("from_stage2")
    rows = records.get("stage2", {}).get("summary", {}).get("rows", [])
    return next((float(r["latency_ms"]) for r in rows if r.get("label") == label and r.get("latency_ms")), None)


def _shared_latency_target(plan: StudyPlan, checkpoint: str, console: Console,
                           reference_ms: float | None = None) -> str | None:
    """A fractional latency target ("0.6x") turned into milliseconds ONCE, from one measurement of the
    winner, so every method is held to the same number (each run measuring its own baseline would give
    each method another target on a machine whose load changes). Stored with what it was measured
    for, so a resumed stage keeps it; a changed target or settings, or a busy measurement, is measured
    again. With ``reference_ms`` (the winner's stage-2 side-by-side latency), a measurement more than
    `SLOWED` x it was taken on a slowed machine: it is taken again (`timing_drift.least_slowed`), and
    the fastest is the reference of the target."""
    if plan.target_latency is None:
        return None
    from pruning.targets import parse_latency_target

    target = parse_latency_target(plan.target_latency)
    if target.ms is not None:
        return plan.target_latency
    from dscnn.latency import measure_latency_ms
    from searchspace.device_lock import DeviceLock

    config = plan.search_config()
    model, _ = dscnn.load_checkpoint(checkpoint)
    deploy = dscnn.reparameterize_model(model).eval()
    resolution = config.data.resolution or int(getattr(model.config, "resolution", 0)) or config.latency.resolution
    settings = _latency_settings(config, resolution)
    key = {"target": plan.target_latency, "settings": settings.to_dict(), "checkpoint": str(checkpoint),
           "arch_hash": _arch_hash(model), "hardware": hardware_id(settings.device)}
    stored = plan.stage_dir("prune") / "latency_target.json"
    if reference_ms is not None and not _timed_alike(config.latency.replace(resolution=resolution), settings):
        reference_ms = None  # stage 2 timed another batch, runtime or precision: no reference for a slowdown
    if stored.is_file():
        doc = json.loads(stored.read_text())
        if doc.get("for") == as_stored(key):
            return str(doc["target_latency"])
        console.log(f"prune: {stored} was measured for another target or settings: measuring again")
    lock = DeviceLock(config.device_lock, device=settings.device)

    def timed() -> Any:
        with lock.measuring():
            return measure_latency_ms(deploy, settings)

    measured, factor, _ = least_slowed(
        timed, lambda result: result.median_ms / reference_ms if reference_ms else None,
        lambda factor, attempt: console.log(f"prune: the winner timed {factor:.2f}x its stage-2 latency: the machine "
                                            f"runs slower as a whole; timing again in {timing_drift.TIMING_PAUSE_S:g} s"))
    text = f"{target.resolve(measured.median_ms):.6g}ms"
    console.log(f"prune: latency target {plan.target_latency} of the winner's {measured.median_ms:.3f} ms = {text} "
                "for every method")
    if measured.busy or slowed(factor):  # usable for this run, never kept: a resumed stage measures again
        why = "on a busy machine" if measured.busy else f"{factor:.2f}x its stage-2 latency"
        console.log(f"[yellow]warning:[/yellow] the winner's {measured.median_ms:.3f} ms was measured {why}: the "
                    "target is not stored")
        return text
    plan.stage_dir("prune").mkdir(parents=True, exist_ok=True)
    write_text_atomic(stored, json.dumps({"target_latency": text, "fraction": target.fraction, "for": key,
                                          "winner": measured.to_dict()}, indent=2, default=str))
    return text


def _arch_hash(model: Any) -> str | None:
    config = getattr(model, "config", None)
    return config.arch_hash() if config is not None else None


def _timed_alike(a: Any, b: Any) -> bool:
    """Do two latency settings time the same thing (not how many runs)?"""
    fields = ("device", "batch", "resolution", "threads", "precision", "channels_last", "runtime", "in_channels")
    return all(getattr(a, f, None) == getattr(b, f, None) for f in fields)


def _prune_one(plan: StudyPlan, method: str, checkpoint: str, source: str, target_latency: str | None,
               console: Console) -> Record:
    from pruning.algorithm import PruningError, TargetMissed
    from pruning.run import RunConfig, run_pruning

    folder = plan.stage_dir("prune") / method
    done = folder / "record.json"
    algorithm = _algorithm(method, plan.options_of(method))
    planned = _planned_split(plan, getattr(algorithm, "regularized", True))
    if done.is_file():
        record = dict(json.loads(done.read_text()))
        # the report's epochs (a record from before reports stated them: the study's own)
        stored = record.get("report", {}).get("epochs") or record.get("epochs") or {}
        same = record.get("target") == (target_latency or plan.target_flops) and stored == planned
        # records from before the source was stored keep their word (committed studies are not re-pruned)
        if same and record.get("source", source) != source:
            console.log(f"prune: {done} was pruned from another winner (the retrain stage ran again): pruning again")
        elif same and lost_checkpoint(record):  # checkpoints are not committed: a clean checkout of a finished study
            console.log(f"prune: {method} finished earlier, but {record.get('checkpoint')} is missing: pruning again")
        elif same:
            console.log(f"prune: {method} finished earlier ({done})")
            return record
        else:
            console.log(f"prune: {done} was pruned to {record.get('target')} in {_split_text(stored)} epochs, not "
                        f"{target_latency or plan.target_flops} in {_split_text(planned)}: pruning again")
    folder.mkdir(parents=True, exist_ok=True)
    config = plan.search_config()
    train = dataclasses.replace(
        RunConfig(target="0.5x").train, epochs=plan.prune_epochs, batch_size=config.train.batch_size,
        device=config.train.device, seed=config.train.seed,
    )
    run = RunConfig(
        target=plan.target_flops if target_latency is None else "", target_latency=target_latency,
        data=config.data, train=train, finetune_epochs=planned["finetune"], out=str(folder / "pruned.pt"),
        latency_threads=config.latency.threads, latency_runtime=config.latency.runtime,
        latency_device=config.latency.device, device_lock=config.device_lock,
        latency_plan=str(plan.stage_dir("prune") / "latency_plan.json"),  # one table and budget for every method
    )
    console.log(f"prune: {method} to {target_latency or plan.target_flops} ({_planned_epochs(plan)} epochs in all)")
    try:
        model, report = run_pruning(algorithm, run, checkpoint=checkpoint, console=console)
    except (PruningError, TargetMissed) as exc:  # one method's failure is a row, not the end of the study;
        # not stored: a rerun of the prune stage (its done.json deleted) runs it again, not the stored methods
        console.log(f"[yellow]prune: {method} failed: {exc}")
        return {"method": method, "error": str(exc), "met_target": False, "missed": isinstance(exc, TargetMissed)}
    else:
        report.print(console)
        met = (report.latency or {}).get("met", True) if target_latency is not None else True
        reported = report.to_dict()
        record = {"method": method, "checkpoint": report.output, "report": reported, "met_target": bool(met),
                  "epochs": epochs_run(method, reported, planned),  # before the test pass: fail early
                  "test_accuracy": _test_accuracy(model, config), "target": target_latency or plan.target_flops,
                  "source": source}
    write_text_atomic(done, json.dumps(record, indent=2, default=str))
    return record


def _planned_epochs(plan: StudyPlan) -> int:
    """Every method's total at equal budget: regularised + fine-tuning epochs (a method without
    regularised training fine-tunes for all of them)."""
    return plan.prune_epochs + plan.finetune_epochs


def _planned_split(plan: StudyPlan, regularized: bool) -> dict[str, int]:
    """The epochs a method must run, ``{"regularized", "finetune"}``: the plan's split for a
    regularised method, all of the equal budget as fine-tuning for one without regularised training.
    The split, not only the total: a regularised method trained 2 + 1 is another run than 1 + 2."""
    if regularized:
        return {"regularized": plan.prune_epochs, "finetune": plan.finetune_epochs}
    return {"regularized": 0, "finetune": _planned_epochs(plan)}


def _split_text(epochs: dict[str, Any]) -> str:
    return f"{epochs.get('regularized', '?')} + {epochs.get('finetune', '?')}"


def epochs_run(method: str, report: Record, planned: dict[str, int]) -> dict[str, int]:
    """The epochs a pruning report says ran, ``{"regularized", "finetune"}``; a `StudyError` when
    they are not the ``planned`` split (`_planned_split`: else the comparison between methods would
    be unfair, or a regularised method would have skipped its regularised training)."""
    epochs = report.get("epochs") or {}
    if set(epochs) != {"regularized", "finetune"}:
        raise StudyError(f"prune: {method}'s report does not state the epochs it ran ({epochs or 'none'}): "
                         "the equal budget cannot be checked")
    ran = {k: int(epochs[k]) for k in ("regularized", "finetune")}
    if ran != planned:
        raise StudyError(f"prune: {method} ran {ran['regularized']} regularised + {ran['finetune']} fine-tuning "
                         f"epochs, not the study's planned {_split_text(planned)}")
    return ran


def _test_accuracy(model: Any, config: Any) -> float | None:
    """Top-1 on the data set's test split when the study has one (never used to choose)."""
    from dscnn.data import load_dataset
    from dscnn.train import evaluate_accuracy

    data = load_dataset(config.data)
    if not data.has_test:
        return None
    return float(evaluate_accuracy(model, data.test_view(), config.train))


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


"""The report of a study (`studies.run`): ``report.md`` plus PNGs, readable without running anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from dscnn.environment import environment
from dscnn.units import format_macs
from studies.plan import StudyPlan
from studies.stages import COLLAPSED, at_chance

Record = dict[str, Any]


def write_report(plan: StudyPlan, records: dict[str, Record], console: Console) -> Path:
    folder = plan.stage_dir("report")
    search, retrain, prune, export = (records[s] for s in ("search", "retrain", "prune", "export"))
    pareto = Path(search["out"]) / "pareto.png"
    if pareto.is_file():
        shutil.copyfile(pareto, folder / "pareto.png")
    if "report" in prune:
        _plot_widths(prune["report"]["widths"], folder / "widths.png")
    else:  # the unpruned winner was exported: a plot left by an earlier render would show a pruned model
        (folder / "widths.png").unlink(missing_ok=True)
    dashboard = _dashboard_screenshot(search, folder / "dashboard.png", console)
    onnx = export.get("onnx", {})
    lines = [
        f"# Study `{plan.path.stem}`",
        "",
        *_stage2_section(plan, records.get("stage2", {})),
        f"Search: {search['finished_trials']} trials in study `{search['study_name']}` ({search['storage']}), "
        f"budget: {_budget(search)}; latency measured on {search['device']} ({search['threads']} thread(s), batch 1, "
        "deploy form).",
        "FLOPs = fvcore multiply-accumulates of the deploy form at batch 1.",
        "",
        "## Accuracy vs latency",
        "",
        "![Pareto plot: searched trials, Pareto front, each hand-designed baseline named in the legend, "
        "over-budget trials (x), budget line](pareto.png)",
        "",
        *_winner_section(search, retrain),
        *_pruning_section(prune, retrain),
        "## Export",
        "",
        f"ONNX `{onnx.get('path')}`: largest relative error vs PyTorch "
        f"{max((c['max_rel_error'] for c in onnx.get('checks', [])), default=float('nan')):.2e}; "
        f"BatchNorm nodes {onnx.get('batchnorm_nodes', '-')}; "
        f"onnxruntime latency {_latency(onnx.get('onnx_latency'))} ms vs PyTorch {_latency(onnx.get('torch_latency'))} ms.",
        "",
        "## Dashboard",
        "",
        "![optuna-dashboard showing a trial's latency and FLOPs](dashboard.png)" if dashboard
        else "optuna-dashboard could not be checked here (no chromium); run `optuna-dashboard "
        f"{search['storage']}`.",
        "",
        "## Environment",
        "",
        "```json",
        json.dumps(environment(search["device"], search["threads"]), indent=2),
        "```",
        "",
        "## Commands",
        "",
        "```bash",
        f"python -m studies.run {plan.path}        # all stages; reruns skip finished ones",
        f"optuna-dashboard {search['storage']}",
        "```",
    ]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _winner_section(search: Record, retrain: Record) -> list[str]:
    """The model handed to pruning: stage 2's winner when there was a stage 2, else the search's best."""
    if retrain.get("from_stage2"):
        arch, label = retrain.get("arch") or {}, retrain["from_stage2"]
        pool = ("the searched models that fit the budget" if retrain.get("fits", True)
                else "all searched models (none fitted the budget in the side-by-side timing)")
        trained = (f"Chosen by stage-2 validation mean among {pool}; stage-1 proxy "
                   f"validation {_fmt(retrain.get('stage1_val_accuracy'))}; the seed-{retrain.get('seed')} stage-2 run "
                   f"({retrain['epochs']} epochs) is the one pruned: validation {_fmt(retrain['accuracy'])}, test "
                   f"{_fmt(retrain.get('test_accuracy'))}.")
    else:
        arch, label = search["arch"], search["best_trial"]
        trained = (f"Proxy accuracy in the search {search['best_accuracy']:.4f}; retrained for {retrain['epochs']} "
                   f"epochs: {retrain['accuracy']:.4f}.")
    return [f"## Winner: {label} ({arch.get('family')})", "", _describe(arch), "", "| field | value |", "|---|---|",
            *[f"| {k} | {v} |" for k, v in arch.items()], "", trained, ""]


def _pruning_section(prune: Record, retrain: Record) -> list[str]:
    """Before/after the exported pruned model; when the unpruned winner was exported instead (no method met
    the target without collapsing), a leading warning with the reason, that model, and every method's row."""
    pr = prune.get("report")
    if pr is None:
        return [f"## Pruning ({_stage_target_text(prune)}): the unpruned winner is exported", "",
                "**Warning: no pruned model met the target without collapsing; the exported model is the unpruned "
                f"winner.** {prune.get('reason', '')}", "", *_retry_hint(prune), *_unpruned_section(prune, retrain),
                *_methods_section(prune)]
    return [
        f"## Before and after pruning ({pr['method']}, {_target_text(pr)})",
        "",
        "| model | params | FLOPs (MACs) | latency ms | top-1 |",
        "|---|---|---|---|---|",
        _stats_row("retrained winner", pr["before"]),
        _stats_row(f"pruned ({pr['method']})", pr["after"]),
        "",
        f"FLOPs -{pr['macs_reduction']:.1%}; top-1 right after pruning, before fine-tuning: "
        f"{_fmt(pr['accuracy_after_prune'])}.",
        "",
        *_methods_section(prune),
        *_collapse_warning(prune),
        *_pruning_warnings(pr),
        "![Per-layer output widths before and after pruning](widths.png)",
        "",
    ]


def _retry_hint(prune: Record) -> list[str]:
    """A finished prune stage is not rerun, and a failed method was not stored: say how to retry it."""
    failed = [m for m, r in (prune.get("methods") or {}).items() if "error" in r]
    if not failed:
        return []
    return [f"To retry {', '.join(failed)} (after changing what made it fail), run the study again with "
            "`--redo prune`: the methods stored under `prune/` are not run again, and the export and the report are "
            "redone if the outcome changes.", ""]


def _unpruned_section(prune: Record, retrain: Record) -> list[str]:
    """The exported unpruned winner, with the stats a pruning run measured of it (the first that got that far)."""
    text = f"Exported: the retrained winner unchanged, validation top-1 {_fmt(retrain.get('accuracy'))}."
    accuracy, chance = retrain.get("accuracy"), prune.get("chance")
    if accuracy is not None and chance is not None and at_chance(accuracy, chance):
        text += (f"\n\n**Warning: the exported model is itself at chance** (validation top-1 {_fmt(accuracy)}, chance "
                 f"{_fmt(chance)}): it has not learned the task. Train longer (the [stage2] or [retrain] epochs) "
                 "before deploying or pruning it.")
    before = next((r["report"]["before"] for r in (prune.get("methods") or {}).values() if "report" in r), None)
    if before is None:
        return [text, ""]
    return [text, "", "| model | params | FLOPs (MACs) | latency ms | top-1 |", "|---|---|---|---|---|",
            _stats_row("retrained winner (exported, unpruned)", before), ""]


def _stage_target_text(prune: Record) -> str:
    """The stage's target, from the exported run's report when there is one, else as the stage stored it."""
    if "report" in prune:
        return _target_text(prune["report"])
    if prune.get("target_latency"):
        return f"latency target {prune['target_latency']}"
    return f"target {prune.get('target', '?')}"


def _target_text(pr: Record) -> str:
    """A latency target in ms (its MACs field is then the unpruned model's, not a target)."""
    target_ms = (pr.get("latency") or {}).get("target_ms")
    if target_ms is not None:
        return f"latency target {target_ms:.4g} ms"
    return f"target {pr['target']} = {format_macs(pr['target_macs'])} MACs"


def _methods_section(prune: Record) -> list[str]:
    """Every method the study ran on the winner, at equal epochs; the exported one marked. Shown for one
    method too when none was exported: the table is then where each method's outcome is read."""
    runs = prune.get("methods") or {}
    if not runs or (len(runs) < 2 and "report" in prune):
        return []
    lines = ["### Every pruning method at equal epochs", "",
             "| method | epochs (regularised + fine-tune) | met target | params | FLOPs (MACs) | latency ms | "
             "val top-1 before conversion | val top-1 | test top-1 |", "|---|---|---|---|---|---|---|---|---|"]
    for method, run in runs.items():
        mark = " (exported)" if method == prune.get("chosen") else ""
        if "report" not in run:
            lines.append(f"| {method} | - | no: {run.get('error', '?')} | - | - | - | - | - | - |")
            continue
        r, epochs = run["report"], run.get("epochs", {})
        after = r["after"]
        met = ("yes, but collapsed (at chance)" if run.get("collapsed") else "yes") if run["met_target"] else "no"
        lines.append(
            f"| {method}{mark} | {epochs.get('regularized', '?')} + {epochs.get('finetune', '?')} | "
            f"{met} | {after['params']:,} | {format_macs(after['macs'])} | "
            f"{_fmt(after['latency_ms'], 3)} | {_fmt(r.get('accuracy_before_prune'))} | {_fmt(after['accuracy'])} | "
            f"{_fmt(run.get('test_accuracy'))} |"
        )
    chance = prune.get("chance")
    floor = f" = {COLLAPSED * chance:.4f}" if chance is not None else ""
    rule = ("Chosen for export by validation top-1 among the methods that met the target without collapsing (top-1 "
            f"above {COLLAPSED:g} x chance{floor})")
    if "exported" not in prune:  # a record from before collapsed models were refused: chosen among all that met it
        rule = "Chosen for export by validation top-1 among the methods that met the target"
    elif "report" not in prune:
        rule += "; none qualified, so none was exported"
    return [*lines, "", f"{rule}. Test top-1 is reported, never used to choose. One seed.", ""]


def _collapse_warning(prune: Record) -> list[str]:
    """A pruned model at chance met its target by destroying the network: the report must say so. A record
    written before such models were refused for export (it has no ``exported``) exported one: the old warning."""
    if not prune.get("collapsed"):
        return []
    if "exported" not in prune:
        accuracy = prune["report"]["after"]["accuracy"]
        return [f"**Warning: the exported pruned model is at chance** (validation top-1 {_fmt(accuracy)}, chance "
                f"{_fmt(prune.get('chance'))}): it met the target by collapsing the network. Do not deploy it; the "
                "target is out of reach by pruning this model (raise it, or search under the lower budget).", ""]
    lines = []
    for method, run in (prune.get("methods") or {}).items():
        if run.get("met_target") and run.get("collapsed"):
            lines += [f"**Warning: {method} met the target at chance** (validation top-1 "
                      f"{_fmt(run['report']['after']['accuracy'])}, chance {_fmt(prune.get('chance'))}): it collapsed the "
                      "network and was not exported.", ""]
    return lines


def _pruning_warnings(pr: Record) -> list[str]:
    """What the pruning run warned about on the console, so the report cannot hide it."""
    facts, lines = pr.get("algorithm", {}), []
    from pruning.csgd import CONVERGED
    from pruning.resrep import SMALL_ROW_NORM

    merge = facts.get("merge_relative_error")
    if merge is not None and merge > CONVERGED:
        lines.append(f"**Warning:** C-SGD's cluster merge changed the outputs by {merge:.3g} (relative, above "
                     f"{CONVERGED:g}): the clusters had not converged; train longer or raise the centripetal strength.")
    norm = facts.get("max_removed_row_norm")
    if norm is not None and norm > SMALL_ROW_NORM:
        lines.append(f"**Warning:** ResRep removed compactor rows of norm up to {norm:.3g} (above {SMALL_ROW_NORM:g}): "
                     "the lasso had not shrunk them yet.")
    if facts.get("forced_final_mask"):
        lines.append("**Warning:** ResRep reached the target only with a forced final mask update (not gradually).")
    return [*lines, ""] if lines else []


def _stage2_section(plan: StudyPlan, stage2: Record) -> list[str]:
    """The report leads with the final comparison, read from the table stage 2 stored."""
    if stage2.get("skipped", True):
        return []
    return ["## Searched vs hand-designed (stage 2)", "", Path(stage2["table"]).read_text().strip(), ""]


def _budget(search: Record) -> str:
    parts = []
    if search.get("budget_ms") is not None:
        if search.get("budget_of"):
            parts.append(f"{search['budget_ms']:.3f} ms (the latency of {search['budget_of']}, timed when the "
                         "search started)")
        else:
            parts.append(f"{search['budget_ms']} ms")
    if search.get("budget_macs") is not None:
        parts.append(f"{format_macs(search['budget_macs'])} MACs")
    return " and ".join(parts) or "none (accuracy only)"


def _describe(arch: dict[str, Any]) -> str:
    depths, widths = arch.get("depths"), arch.get("widths")
    parts = [f"A {arch.get('family')} network at {arch.get('resolution')}x{arch.get('resolution')} input",
             f"stem stride {arch.get('stem_stride') or 'auto'}"]
    if depths and widths:
        parts.append("stages " + ", ".join(f"{d} block(s) of width {w}" for d, w in zip(depths, widths)))
    if "branch_set" in arch:
        parts.append(f"RepASO branch set {arch['branch_set']}")
    if "spatial_ops" in arch:
        parts.append("spatial operators " + "/".join(arch["spatial_ops"]))
    if "activation" in arch:
        parts.append(f"{arch['activation']} activations")
    return "; ".join(parts) + "."


def _stats_row(label: str, stats: dict[str, Any]) -> str:
    return (f"| {label} | {stats['params']:,} | {format_macs(stats['macs'])} | {_fmt(stats['latency_ms'], 3)} | "
            f"{_fmt(stats['accuracy'])} |")


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _latency(record: dict[str, Any] | None) -> str:
    return _fmt(record.get("median_ms") if record else None, 3)


def _plot_widths(widths: dict[str, list[int]], png: Path) -> None:
    """Kept fraction of each layer's output channels (so a 1280-wide head does not flatten the rest),
    layers named on the axis, the unpruned width printed above each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in widths if widths[n][0] > 0]
    kept = [widths[n][1] / widths[n][0] for n in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(names)), 4.5))
    ax.bar(range(len(names)), [1.0] * len(names), color="lightgrey", label="before (= 1)")
    ax.bar(range(len(names)), kept, color="tab:blue", label="kept after pruning")
    for i, n in enumerate(names):
        ax.text(i, 1.01, str(widths[n][0]), ha="center", va="bottom", fontsize=5, rotation=90)
    ax.set_xticks(range(len(names)), [_short(n) for n in names], rotation=90, fontsize=6)
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("output channels kept (fraction)")
    ax.set_title("per-layer widths (number above a bar: channels before pruning)", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _short(name: str) -> str:
    """``stages.1.2.expand.conv`` -> ``s1.2.expand``: readable tick labels."""
    return name.replace("stages.", "s").replace(".conv", "").replace("blocks.", "b")


def _dashboard_screenshot(search: Record, png: Path, console: Console) -> bool:
    if shutil.which("chromium") is None:
        return False
    from studies.dashboard import check_dashboard

    try:
        check_dashboard(search["storage"], png, study_name=search["study_name"])
    except Exception as exc:  # the report must not be lost for a browser problem: say so in it
        console.log(f"[yellow]dashboard check failed: {exc}")
        return False
    return True

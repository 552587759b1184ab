"""Study results: trial rows, the accuracy/latency Pareto front, plots and the printed table.

Everything is read from trial user attributes (latency_ms, macs, params, arch, accuracy), which
are set in both single- and multi-objective studies, so one report serves both modes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from dscnn.checkpoint import write_text_atomic


@dataclass(frozen=True)
class TrialRow:
    number: int
    label: str  # baseline name or "trial N"
    state: str
    feasible: bool | None
    accuracy: float | None
    latency_ms: float | None
    macs: int | None
    params_deploy: int | None
    family: str | None
    arch: str | None  # the config as JSON
    checkpoint: str | None  # relative to the output folder (older studies: to where they ran)
    fail_reason: str | None = None  # why a FAIL trial failed

    @property
    def is_baseline(self) -> bool:
        return not self.label.startswith("trial ")


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    return [_row(t) for t in study.get_trials(deepcopy=False)]


def _row(t: FrozenTrial) -> TrialRow:
    a = t.user_attrs
    trained = t.state == TrialState.COMPLETE and a.get("feasible", True) and "accuracy" in a
    return TrialRow(
        number=t.number, label=a.get("baseline") or f"trial {t.number}", state=t.state.name,
        feasible=a.get("feasible"), accuracy=a["accuracy"] if trained else None,
        latency_ms=a.get("latency_ms"), macs=a.get("macs"), params_deploy=a.get("params_deploy"),
        family=a.get("family"), arch=a.get("arch"), checkpoint=a.get("checkpoint"),
        fail_reason=a.get("fail_reason") or t.system_attrs.get("fail_reason"),
    )


def trained(rows: list[TrialRow]) -> list[TrialRow]:
    """Feasible trials that finished training (the only ones with a real accuracy)."""
    return [r for r in rows if r.accuracy is not None and r.latency_ms is not None]


def pareto_front(rows: list[TrialRow]) -> list[TrialRow]:
    """Trained trials not dominated in (accuracy up, latency down), sorted by latency."""
    front: list[TrialRow] = []
    for r in sorted(trained(rows), key=lambda r: (r.latency_ms, -(r.accuracy or 0))):
        if not front or (r.accuracy or 0) > (front[-1].accuracy or 0):
            front.append(r)
    return front


def _xy(rows: list[TrialRow]) -> tuple[list[float], list[float]]:
    """(latency_ms, accuracy) of trained rows, for plotting."""
    return [float(r.latency_ms or 0) for r in rows], [float(r.accuracy or 0) for r in rows]


def best_row(rows: list[TrialRow]) -> TrialRow | None:
    done = trained(rows)
    return max(done, key=lambda r: (r.accuracy, -(r.latency_ms or 0))) if done else None


def print_table(rows: list[TrialRow], console: Console | None = None, title: str = "Pareto trials") -> None:
    table = Table(title=title)
    for column in ("trial", "family", "accuracy", "latency ms", "MMACs", "params (deploy)"):
        table.add_column(column, justify="right" if column != "family" else "left")
    for r in rows:
        table.add_row(
            r.label, r.family or "-", f"{r.accuracy:.4f}" if r.accuracy is not None else "-",
            f"{r.latency_ms:.3f}" if r.latency_ms is not None else "-",
            f"{r.macs / 1e6:.1f}" if r.macs is not None else "-",
            f"{r.params_deploy:,}" if r.params_deploy is not None else "-",
        )
    (console or Console()).print(table)


def write_best_json(path: Path, best: TrialRow, budget: dict[str, Any], warning: str | None = None) -> None:
    data = asdict(best)
    data["arch"] = json.loads(best.arch) if best.arch else None
    data["budget"] = budget
    data["macs_convention"] = "fvcore multiply-accumulates of the deploy form, batch 1"
    if warning:
        data["warning"] = warning
    write_text_atomic(path, json.dumps(data, indent=2))


def why_no_best(rows: list[TrialRow], budget_ms: float | None, budget_macs: float | None,
                budget_of: str | None = None) -> str:
    """What went wrong when no feasible trial finished training, and what to change. ``budget_of``: the
    baseline whose latency is the budget (then a larger budget is a slower baseline, not --budget-ms)."""
    if not rows:
        return "no trial ran: raise --trials"
    over = [r for r in rows if r.feasible is False]
    diverged = [r for r in rows if r.state == "FAIL" and "diverged" in (r.fail_reason or "")]
    failed = [r for r in rows if r.state == "FAIL" and r not in diverged]
    parts = []
    if over:
        fastest = min(over, key=lambda r: r.latency_ms if r.latency_ms is not None else math.inf)
        limit = f" (budget {budget_ms:g} ms)" if budget_ms is not None else ""
        larger = (f"a slower --budget-of baseline than {budget_of} (or --budget-ms in a new study)" if budget_of
                  else "a larger --budget-ms")
        macs = f", {fastest.macs / 1e6:.1f} MMACs (budget {budget_macs / 1e6:.1f})" if budget_macs and fastest.macs else ""
        parts.append(f"{len(over)} of {len(rows)} trials were over the budget; the fastest, {fastest.label}, measured "
                     f"{fastest.latency_ms:.3f} ms{limit}{macs}. Try {larger}, a smaller space (--space), "
                     "a lighter stem or lower --resolution, or a faster runtime")
    if diverged:
        parts.append(f"{len(diverged)} trials diverged (non-finite loss): lower --lr or use --optimizer adamw")
    if failed:
        parts.append(f"{len(failed)} trials failed: {failed[0].label}: {failed[0].fail_reason or 'see the log'}")
    pruned = [r for r in rows if r.state == "PRUNED" and r.feasible is not False]
    if pruned:
        parts.append(f"{len(pruned)} trials were stopped early by the pruner")
    return "no feasible trial finished training, so no best.json / best.pt: " + ("; ".join(parts) or "see the trials")


def plot_pareto(
    rows: list[TrialRow], png: Path, html_path: Path, budget_ms: float | None, title: str,
    *, budget_macs: float | None = None,
) -> None:
    """Accuracy vs latency: every trained trial, the Pareto front, each baseline named in the legend,
    over-budget trials along the bottom, the budget line; a PNG and an interactive plotly page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done, front = trained(rows), pareto_front(rows)
    over = [r for r in rows if r.feasible is False and r.latency_ms is not None]
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    searched = [r for r in done if not r.is_baseline]
    if searched:
        ax.scatter(*_xy(searched), c="tab:blue", s=18, alpha=0.6, label="searched")
    if front:
        ax.plot(*_xy(front), "-", c="tab:orange", lw=1, label="Pareto front")
    markers = "*^sDvP"
    for i, r in enumerate(r for r in done if r.is_baseline):
        ax.scatter(*_xy([r]), marker=markers[i % len(markers)], s=90, zorder=3, label=f"baseline {r.label}")
    if over:
        ax.scatter([float(r.latency_ms or 0) for r in over], [0.0] * len(over), marker="x", c="grey",
                   label=f"over budget ({len(over)}, not trained)")
    if budget_ms is not None:
        ax.axvline(budget_ms, ls="--", c="k", lw=1, label=f"latency budget {budget_ms:g} ms")
    if budget_macs is not None:
        ax.plot([], [], " ", label=f"MACs budget {budget_macs / 1e6:g}M (not an axis: trials over it are x)")
    ax.set_xlabel("deploy-form latency (ms)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # outside: covers nothing
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    _write_html(html_path, rows, budget_ms, title)


def _write_html(path: Path, rows: list[TrialRow], budget_ms: float | None, title: str) -> None:
    """An interactive page: hover a point for its trial, family, accuracy, latency, MACs and params."""
    import plotly.graph_objects as go

    def trace(name: str, subset: list[TrialRow], **style: object) -> go.Scatter:
        hover = [f"{r.label} ({r.family or '-'})<br>accuracy {r.accuracy if r.accuracy is not None else '-'}<br>"
                 f"{r.latency_ms:.3f} ms, {(r.macs or 0) / 1e6:.1f} MMACs, {r.params_deploy or 0:,} params"
                 for r in subset]
        y = [r.accuracy if r.accuracy is not None else 0.0 for r in subset]
        return go.Scatter(x=[r.latency_ms for r in subset], y=y, name=name, text=hover, hoverinfo="text", **style)

    done = trained(rows)
    fig = go.Figure()
    fig.add_trace(trace("searched", [r for r in done if not r.is_baseline], mode="markers"))
    fig.add_trace(trace("Pareto front", pareto_front(rows), mode="lines"))
    for r in (r for r in done if r.is_baseline):
        fig.add_trace(trace(f"baseline {r.label}", [r], mode="markers", marker={"size": 12, "symbol": "star"}))
    over = [r for r in rows if r.feasible is False and r.latency_ms is not None]
    fig.add_trace(trace("over budget (not trained)", over, mode="markers", marker={"symbol": "x", "color": "grey"}))
    if budget_ms is not None:
        fig.add_vline(x=budget_ms, line_dash="dash", annotation_text=f"budget {budget_ms:g} ms")
    fig.update_layout(title=title, xaxis_title="deploy-form latency (ms)", yaxis_title="validation accuracy")
    tmp = path.with_name(f".{path.name}.tmp")
    fig.write_html(tmp, include_plotlyjs=True, full_html=True)  # self-contained: opens offline
    tmp.replace(path)


def baseline_comparison(rows: list[TrialRow]) -> tuple[TrialRow | None, list[TrialRow]]:
    """(best searched trial, baselines that were trained) — the question a study answers."""
    searched = [r for r in trained(rows) if not r.is_baseline]
    best = max(searched, key=lambda r: (r.accuracy, -(r.latency_ms or 0))) if searched else None
    return best, [r for r in trained(rows) if r.is_baseline]


def markdown_table(rows: list[TrialRow]) -> str:
    lines = ["| model | family | accuracy | latency ms | MMACs (deploy) | params (deploy) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.family or '-'} | {r.accuracy:.4f} | {r.latency_ms:.3f} | "
            f"{(r.macs or 0) / 1e6:.1f} | {r.params_deploy or 0:,} |"
        )
    return "\n".join(lines)

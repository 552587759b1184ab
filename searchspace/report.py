"""Study results: trial rows, the accuracy/latency Pareto front, plots and the printed table.

Everything is read from trial user attributes (latency_ms, macs, params, arch, accuracy), which
are set in both single- and multi-objective studies, so one report serves both modes.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table


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
    checkpoint: str | None

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


def write_best_json(path: Path, best: TrialRow, budget: dict[str, float | None]) -> None:
    data = asdict(best)
    data["arch"] = json.loads(best.arch) if best.arch else None
    data["budget"] = budget
    data["flops_convention"] = "fvcore multiply-accumulates of the deploy form, batch 1"
    path.write_text(json.dumps(data, indent=2))


def plot_pareto(rows: list[TrialRow], png: Path, html_path: Path, budget_ms: float | None, title: str) -> None:
    """Accuracy vs latency: every trained trial, the Pareto front, baselines marked, the budget line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done, front = trained(rows), pareto_front(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    searched = [r for r in done if not r.is_baseline]
    ax.scatter(*_xy(searched), c="tab:blue", s=18, alpha=0.6, label="searched")
    ax.plot(*_xy(front), "-o", c="tab:orange", ms=4, label="Pareto front")
    for r in (r for r in done if r.is_baseline):
        ax.scatter(*_xy([r]), marker="*", s=140, c="tab:red", zorder=3)
        ax.annotate(r.label, (r.latency_ms or 0, r.accuracy or 0), textcoords="offset points", xytext=(5, 4), fontsize=8)
    over = [r for r in rows if r.feasible is False and r.latency_ms is not None]
    if over:
        ax.scatter([float(r.latency_ms or 0) for r in over], [0.0] * len(over), marker="x", c="grey",
                   label="over budget (not trained)")
    if budget_ms is not None:
        ax.axvline(budget_ms, ls="--", c="k", lw=1, label=f"budget {budget_ms:g} ms")
    ax.set_xlabel("deploy-form latency (ms)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    _write_html(html_path, png, front, title)


def _write_html(path: Path, png: Path, front: list[TrialRow], title: str) -> None:
    image = base64.b64encode(png.read_bytes()).decode()
    cells = "".join(
        f"<tr><td>{html.escape(r.label)}</td><td>{html.escape(r.family or '-')}</td><td>{r.accuracy:.4f}</td>"
        f"<td>{r.latency_ms:.3f}</td><td>{(r.macs or 0) / 1e6:.1f}</td><td>{r.params_deploy or 0:,}</td></tr>"
        for r in front
    )
    path.write_text(
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>"
        f"<img src='data:image/png;base64,{image}' alt='accuracy vs latency'>"
        "<table border=1 cellpadding=4><tr><th>trial</th><th>family</th><th>accuracy</th><th>latency ms</th>"
        f"<th>MMACs</th><th>params (deploy)</th></tr>{cells}</table>"
    )


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

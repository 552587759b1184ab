"""The end-of-search answer: the best searched model against the hand-designed baselines.

`print_comparison` prints one table (searched best first, then every baseline: trained, over the
budget, or not reached) and one verdict line that says how large the gap is against the noise of
the validation split (two binomial standard errors of a difference of two accuracies), so a newcomer
reads "better", "worse" or "within noise" rather than guessing from four digits.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from searchspace.report import TrialRow, baseline_comparison

__all__ = ["noise_points", "print_comparison", "verdict"]


def noise_points(accuracy: float, val_images: int) -> float:
    """Two standard errors of the difference of two accuracies near ``accuracy`` on ``val_images``, in points."""
    p = min(max(accuracy, 0.0), 1.0)
    return 100 * 2 * math.sqrt(2 * p * (1 - p) / max(val_images, 1))


def verdict(best: TrialRow | None, baselines: list[TrialRow], val_images: int | None) -> str:
    """One line: the searched best against the best trained baseline."""
    if best is None or best.accuracy is None:
        return "no searched trial was trained: nothing to compare (raise --trials or the budget)"
    if not baselines:
        return f"{best.label}: {best.accuracy:.1%}; no baseline was trained under this budget to compare against"
    top = max(baselines, key=lambda r: r.accuracy or 0.0)
    assert top.accuracy is not None and best.latency_ms is not None and top.latency_ms is not None
    gap = 100 * (best.accuracy - top.accuracy)
    ratio = f"at {best.latency_ms / top.latency_ms:.2f}x its latency"
    if not val_images:
        return f"{best.label} vs the best baseline {top.label}: {gap:+.1f} points {ratio}"
    noise = noise_points((best.accuracy + top.accuracy) / 2, val_images)
    word = "within noise of" if abs(gap) < noise else "better than" if gap > 0 else "worse than"
    return (f"{best.label} is {word} the best baseline {top.label}: {gap:+.1f} points "
            f"(noise +/-{noise:.1f} on {val_images} validation images, one seed) {ratio}")


def print_comparison(rows: list[TrialRow], console: Console, *, num_classes: int | None,
                     val_images: int | None) -> None:
    """The table and verdict; baselines that were not trained are listed with the reason."""
    best, trained_baselines = baseline_comparison(rows)
    chance = f"; chance {1 / num_classes:.1%}" if num_classes else ""
    table = Table(title=f"searched vs hand-designed (validation top-1{chance})")
    for column in ("model", "kind", "top-1", "latency ms", "MMACs"):
        table.add_column(column, justify="left" if column in ("model", "kind") else "right")
    if best is not None:
        table.add_row(best.label, "searched (best)", f"{best.accuracy:.1%}", *_cost(best))
    for r in rows:
        if not r.is_baseline:
            continue
        if r in trained_baselines:
            table.add_row(r.label, "baseline", f"{r.accuracy:.1%}", *_cost(r))
        elif r.feasible is False:
            table.add_row(r.label, "baseline", "over budget", *_cost(r))
        else:
            table.add_row(r.label, "baseline", r.state.lower(), *_cost(r))
    console.print(table)
    console.print(verdict(best, trained_baselines, val_images), soft_wrap=True)


def _cost(r: TrialRow) -> tuple[str, str]:
    return (f"{r.latency_ms:.2f}" if r.latency_ms is not None else "-",
            f"{r.macs / 1e6:.1f}" if r.macs is not None else "-")

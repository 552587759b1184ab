"""What a pruning run reports: cost and accuracy before and after, per-layer widths, algorithm facts.

Printed as a rich table and written as JSON beside the pruned model. FLOPs follow docs/design.md section 0: fvcore
multiply-accumulates of the deploy form at batch 1 (the unpruned model is measured fused too).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from torch import nn

from dscnn.units import format_macs

CONVENTION = "FLOPs = fvcore multiply-accumulates of the deploy form, batch 1 (docs/design.md section 0)"
#: Algorithm summary entries printed under the table (key -> label), when the algorithm reports them.
HEADLINE_FACTS = {
    "max_removed_row_norm": "largest removed compactor row norm",  # ResRep
    "max_cluster_distance": "largest within-cluster distance",  # C-SGD
    "merge_relative_error": "output change by the merge (relative)",  # C-SGD
    "max_removed_importance": "largest removed L1 importance",  # magnitude
}


@dataclass(frozen=True)
class ModelStats:
    """One model's cost and accuracy."""

    params: int  # parameters of the deploy form
    macs: int  # fvcore MACs of the deploy form at batch 1
    latency_ms: float | None  # median batch-1 latency (docs/design.md section 4 CPU protocol), None if not timed
    accuracy: float | None  # top-1 on the validation split, in [0, 1]
    latency_noisy: bool | None = None  # its repeats disagree by more than 20%: do not trust latency_ms

    def latency_text(self) -> str:
        return _fmt(self.latency_ms, "{:.3f}") + (" (noisy)" if self.latency_noisy else "")


@dataclass
class PruneReport:
    """Everything a pruning run produced besides the model itself."""

    method: str  # "resrep", "csgd", ...
    source: str  # what was pruned (registry family:hash, or torchvision name)
    target: str  # the target as given ("0.3G", "0.5x")
    target_macs: float  # the target in MACs
    before: ModelStats
    after: ModelStats
    accuracy_after_prune: float | None  # before any fine-tuning
    widths: dict[str, tuple[int, int]]  # per conv / linear: output channels before, after
    algorithm: dict[str, Any] = field(default_factory=dict)  # the algorithm's own summary
    settings: dict[str, Any] = field(default_factory=dict)  # the run's resolved configuration
    resolution: int = 0  # input size counted and timed at
    latency_settings: dict[str, Any] | None = None
    output: str = ""  # where the pruned model was written
    convention: str = CONVENTION
    latency: dict[str, Any] | None = None  # {"before", "after": LatencyResult dicts}, timed interleaved
    # with a latency target also "target_ms", "predicted_ms", "met", "table", "where_latency_went", and
    # "calibration" (`pruning.calibration.Calibration.to_dict`, None when the table was trusted as it is)
    accuracy_before_prune: float | None = None  # the trained model (compactors / clusters) before conversion
    # epochs that ran: {"regularized": with the algorithm's regularizer (0 for magnitude), "finetune": after the cut}
    epochs: dict[str, int] = field(default_factory=dict)

    @property
    def macs_reduction(self) -> float:
        """Fraction of the deploy MACs removed."""
        return 1.0 - self.after.macs / self.before.macs

    @property
    def latency_change(self) -> float | None:
        """after / before - 1 of the median latencies (negative: faster); None when not timed."""
        if self.before.latency_ms is None or self.after.latency_ms is None:
            return None
        return self.after.latency_ms / self.before.latency_ms - 1.0

    @property
    def latency_noisy(self) -> bool | None:
        if self.latency_change is None:
            return None
        return bool(self.before.latency_noisy or self.after.latency_noisy)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "macs_reduction": self.macs_reduction, "latency_change": self.latency_change,
                "latency_noisy": self.latency_noisy}

    def write_json(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str))
        return path

    def latency_line(self) -> str | None:
        """``latency -28.2% (3.900 -> 2.800 ms, ...)``, flagged when noisy; None when not timed."""
        change = self.latency_change
        if change is None:
            return None
        repeats = (self.latency_settings or {}).get("repeats", "?")
        runtime = (self.latency_settings or {}).get("runtime", "eager")
        text = (f"latency {change:+.1%} ({self.before.latency_ms:.3f} -> {self.after.latency_ms:.3f} ms, runtime "
                f"{runtime}; both timed interleaved, {repeats} repeats each, under the device lock)")
        return text + (" NOISY: repeats disagree by more than 20%, do not trust this change" if self.latency_noisy
                       else "")

    def latency_target_line(self) -> str | None:
        """``latency target 2.0 ms: met (measured 1.9, predicted 1.8); saved most: group (48->24) 0.3 ms, ...``."""
        latency = self.latency or {}
        if "target_ms" not in latency:
            return None
        measured = latency["after"]["median_ms"]
        went = ", ".join(f"{row['group']} ({row['width'][0]}->{row['width'][1]}) {row['saved_ms']:.3f} ms"
                         for row in latency.get("where_latency_went", [])[:3])
        calibration = latency.get("calibration")
        unverified = "" if not calibration or calibration.get("verified", True) else "; no plan measured under the target"
        planned = (f", planned to a {calibration['budget_ms']:.4g} ms predicted budget (measured / predicted "
                   f"x{calibration['factor']:.3g} at the plan{unverified})" if calibration else "")
        return (f"latency target {latency['target_ms']:.4g} ms: {'met' if latency['met'] else 'MISSED'} (measured "
                f"{measured:.4g}, predicted {latency['predicted_ms']:.4g}{planned}); saved most: {went or '-'}")

    def print(self, console: Console | None = None) -> None:
        console = console or Console()
        title = f"{self.method}: {self.source}, target {self.target} ({format_macs(self.target_macs)} MACs)"
        if "target_ms" in (self.latency or {}):
            title = f"{self.method}: {self.source}, latency target {self.target} ({self.latency['target_ms']:.4g} ms)"  # type: ignore[index]
        table = Table(title=title)
        for column in ("", "params", "FLOPs (MACs)", "latency ms", "top-1"):
            table.add_column(column, justify="right")
        for label, stats in (("unpruned", self.before), ("pruned", self.after)):
            table.add_row(
                label, f"{stats.params:,}", format_macs(stats.macs), stats.latency_text(),
                _fmt(stats.accuracy, "{:.4f}"),
            )
        console.print(table)
        facts = [f"{text} {self.algorithm[key]:.3g}" for key, text in HEADLINE_FACTS.items()
                 if self.algorithm.get(key) is not None]
        console.print(
            f"FLOPs -{self.macs_reduction:.1%}; top-1 before conversion {_fmt(self.accuracy_before_prune, '{:.4f}')}, "
            f"right after pruning {_fmt(self.accuracy_after_prune, '{:.4f}')}"
            + "".join(f"; {fact}" for fact in facts)
        )
        if self.epochs:
            console.print(f"epochs {sum(self.epochs.values())}: {self.epochs.get('regularized', 0)} regularised + "
                          f"{self.epochs.get('finetune', 0)} fine-tuning")
        if (line := self.latency_line()) is not None:
            console.print(line)
        if (line := self.latency_target_line()) is not None:
            console.print(line)
        went = self.algorithm.get("where_macs_went") or []
        if went:
            console.print("MACs removed most by: " + ", ".join(
                f"{row['group']} ({row['width'][0]}->{row['width'][1]}) {format_macs(row['saved_macs'])}" for row in went[:3]))
        changed = {k: v for k, v in self.widths.items() if v[0] != v[1]}
        console.print(f"{len(changed)} of {len(self.widths)} layers narrowed: " + ", ".join(
            f"{name} {a}->{b}" for name, (a, b) in list(changed.items())[:12]
        ) + (" ..." if len(changed) > 12 else ""))
        console.print(f"[dim]{self.convention}[/dim]")


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels (features) of every Conv2d / Linear, by module name."""
    return {
        name: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)

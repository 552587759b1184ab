"""One latency plan (table, target, calibrated budget) shared by every pruning run of one model.

A run with a latency target times its own latency table and calibration (`pruning.latency_table`,
`pruning.calibration`), and both carry the machine's noise: in the Tiny-ImageNet equal-latency study
(studies/tiny_imagenet_cpu_equal_latency) ResRep planned to 1.437 ms predicted and C-SGD to 1.398 ms
for one 1.370 ms target, so "equal budgets" were two budgets. Given a plan file, the first run
measures and stores its plan, and a later run of the same model, timing settings, target and
calibration rounds reads it back instead of measuring: every method plans against one number. Each
run's final pruned model is still measured against the target itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dscnn.checkpoint import write_text_atomic
from dscnn.environment import hardware_id
from dscnn.json_record import as_stored
from pruning.calibration import Calibration
from pruning.latency_table import LatencyTable
from pruning.macs import CostModel

__all__ = ["LatencyPlan", "load_plan", "plan_key", "save_plan"]


@dataclass(frozen=True)
class LatencyPlan:
    table: LatencyTable
    target_ms: float  # what the pruned model must measure
    budget_ms: float  # the predicted-ms budget the algorithm plans with (the target when not calibrated)
    calibration: Calibration | None


def plan_key(model_label: str, group_sizes: dict[str, int], settings: dict[str, Any], target: str,
             calibration_rounds: int) -> dict[str, Any]:
    """What a stored plan was measured for; a plan stored under another key is measured again."""
    doc = {"model": model_label, "groups": group_sizes, "settings": settings, "target": target,
           "calibration_rounds": calibration_rounds,
           "hardware": hardware_id(str(settings.get("device", "cpu")))}  # a committed plan, read on another machine
    return as_stored(doc)


def load_plan(path: Path, key: dict[str, Any], cost: CostModel) -> LatencyPlan | None:
    """The plan stored at ``path`` under ``key`` (on the geometry ``cost``), else None."""
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    if doc.get("key") != key:
        return None
    calibration = Calibration.from_dict(doc["calibration"]) if doc.get("calibration") else None
    return LatencyPlan(LatencyTable.from_dict(doc["table"], cost), float(doc["target_ms"]), float(doc["budget_ms"]),
                       calibration)


def save_plan(path: Path, key: dict[str, Any], plan: LatencyPlan) -> None:
    doc = {"key": key, "target_ms": plan.target_ms, "budget_ms": plan.budget_ms, "table": plan.table.to_dict(),
           "calibration": plan.calibration.to_dict() if plan.calibration is not None else None}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(doc, indent=1) + "\n")

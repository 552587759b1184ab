"""One latency plan (table + calibrated budget) shared by the pruning runs of one model and target."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import dscnn
import pruning.latency_table
import pruning.run
from dscnn.latency import LatencySettings
from pruning.groups import find_groups
from pruning.latency_table import LatencyTable, build_table
from pruning.macs import CostModel
from pruning.magnitude import main as magnitude_main
from tests.pruning.fake_latency import fake_latency
from tests.pruning.test_calibration import SIZE, _layer_ms, _whole_ms
from tests.pruning.test_latency_target import Small, _fake_timing
from tests.pruning.test_magnitude import DATA
from tests.pruning.tiny import tiny_overrides


def test_a_stored_table_predicts_what_the_measured_one_did(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pruning.latency_table, "_time", lambda module, settings: _layer_ms(module, settings.resolution))
    model = Small().eval()
    example = torch.zeros(1, 3, SIZE, SIZE)
    groups = find_groups(model, example).groups
    table = build_table(model, groups, example, LatencySettings(resolution=SIZE), _whole_ms)
    stored = LatencyTable.from_dict(json.loads(json.dumps(table.to_dict())), CostModel(model, groups, example))
    for fraction in (1.0, 0.7, 0.4, 0.1):
        widths = {g.root: max(1, round(fraction * g.size)) for g in groups}
        assert stored.predict(widths) == pytest.approx(table.predict(widths), rel=1e-12)
    assert stored.base_ms == table.base_ms and stored.sizes == table.sizes


def test_runs_given_one_plan_file_measure_once_and_plan_against_one_budget(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pruning.run, "compare_latency", _fake_timing(0.2))  # every pruned model meets the target
    monkeypatch.setattr(pruning.latency_table, "snap_width", lambda model, group, width, example, measure: width)
    fake_latency(monkeypatch)
    tables: list[int] = []
    real = pruning.run.build_table

    def counted(*args: Any, **kwargs: Any) -> LatencyTable:
        tables.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pruning.run, "build_table", counted)
    real_harness = pruning.run.harness

    retries: list[dict[str, Any]] = []

    def harness(settings: LatencySettings, lock: Any = None, busy: list[bool] | None = None, **retry: Any) -> Any:
        measure = real_harness(settings, lock)  # busy flags come from ``machine_busy`` below
        retries.append(retry)

        def flagged(model: torch.nn.Module) -> float:
            if busy is not None:
                busy.append(machine_busy)
            return measure(model)
        return flagged

    machine_busy = False
    monkeypatch.setattr(pruning.run, "harness", harness)
    torch.manual_seed(0)
    ckpt = dscnn.save_checkpoint(tmp_path / "resnet20.pt", dscnn.create_model("resnet20", **tiny_overrides("resnet20")))
    plan = tmp_path / "plan.json"

    def run(name: str, target: str) -> dict[str, Any]:
        out = tmp_path / f"{name}.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = magnitude_main([str(ckpt), "--target-latency", target, "--no-progress", "--finetune-epochs", "1",
                                   "--latency-plan", str(plan), "--out", str(out), *DATA])
        assert code == 0, capsys.readouterr().err
        return dict(json.loads(out.with_suffix(".json").read_text())["latency"])

    first = run("first", "0.9x")
    assert len(tables) == 1 and plan.is_file()
    assert retries[:2] == [{}, {"untrusted_retries": pruning.run.UNTRUSTED_RETRIES}]  # the table's timings wait for nothing
    second = run("second", "0.9x")
    assert len(tables) == 1  # read back, not measured again
    assert second["calibration"] == first["calibration"] and second["target_ms"] == first["target_ms"]
    assert second["table"] == first["table"]
    run("other", "0.8x")
    assert len(tables) == 2  # another target: another plan
    plan.unlink()
    machine_busy = True
    run("busy", "0.9x")
    assert len(tables) == 3 and not plan.exists()  # a plan timed on a busy machine is never stored

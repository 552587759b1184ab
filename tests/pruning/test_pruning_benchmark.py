"""benchmarks/pruning_cifar10.py's own checks: bad settings fail before any training, errors are retried."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.scripts import load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("benchmarks/pruning_cifar10.py")


@pytest.mark.parametrize("argv, message", [(["--runtime", "nope"], "unknown runtime"),
                                           (["--markdown", "--out", "/nonexistent.json"], "no results file")])
def test_bad_settings_fail_before_training(bench: ModuleType, argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_resume_keeps_results_and_misses_but_retries_errors(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    args = bench.parse_args(["--out", str(out), "--resume"])
    settings = {k: getattr(args, k) for k in bench.SHARED_SETTINGS}
    rows = {"a/0/resrep@macs": {"accuracy": 0.5}, "a/0/csgd@latency": {"missed": "2.4 > 2.0 ms"},
            "a/0/magnitude@latency": {"error": "no prunable group"}}
    out.write_text(json.dumps({"settings": settings, "rows": rows}))
    assert set(bench.kept_rows(args)) == {"a/0/resrep@macs", "a/0/csgd@latency"}


def _row(accuracy: float) -> dict[str, Any]:
    unpruned = {"accuracy": 0.6, "macs": 2, "params": 2, "latency_ms": None, "latency_noisy": None}
    return {"accuracy": accuracy, "accuracy_before_conversion": accuracy, "accuracy_after_conversion": accuracy,
            "macs": 1, "params": 1, "latency_ms": None, "latency_noisy": None, "unpruned": unpruned, "seconds": 0.0}


def test_rows_a_resume_appends_carry_their_own_run_not_the_first(bench: ModuleType, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "rows.json"
    argv = ["--models", "resnet20", "--seeds", "0", "--methods", "resrep", "csgd", "--latency-methods",
            "--out", str(out), "--work-dir", str(tmp_path), "--resume"]
    args = bench.parse_args(argv)
    first = {"command": "first run", "environment": {"cpu_model": "machine A"}}
    out.write_text(json.dumps({"settings": vars(args), **first, "rows": {
        "resnet20/seed0/resrep@macs": {**_row(0.5), "provenance": {**first, "git": {"commit": "aaa", "dirty": False}}},
    }}))
    monkeypatch.setattr(bench, "environment", lambda device, threads: {"cpu_model": "machine B"})
    monkeypatch.setattr(bench, "git_revision", lambda path=None: {"commit": "bbb", "dirty": True})
    monkeypatch.setattr(bench, "load_dataset", lambda config: None)
    monkeypatch.setattr(bench, "trained_base", lambda label, seed, args, data: tmp_path / "base.pt")
    monkeypatch.setattr(bench, "run_row", lambda method, *rest: _row(0.4))
    assert bench.main(argv) == 0
    record = json.loads(out.read_text())
    kept, added = record["rows"]["resnet20/seed0/resrep@macs"], record["rows"]["resnet20/seed0/csgd@macs"]
    assert kept["provenance"]["environment"] == {"cpu_model": "machine A"} and kept["provenance"]["git"]["commit"] == "aaa"
    assert added["provenance"]["environment"] == {"cpu_model": "machine B"} and added["provenance"]["git"]["commit"] == "bbb"
    assert "--resume" in added["provenance"]["command"] and added["provenance"]["started_at"]
    assert record["environment"] == {"cpu_model": "machine B"} and record["earlier_commands"] == ["first run"]


def test_rows_from_before_per_row_provenance_get_the_one_run_that_made_them(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    args = bench.parse_args(["--out", str(out), "--resume"])
    settings = {k: getattr(args, k) for k in bench.SHARED_SETTINGS}
    single = {"command": "only run", "environment": {"cpu_model": "machine A"}}
    out.write_text(json.dumps({"settings": settings, **single, "rows": {"a/0/resrep@macs": {"accuracy": 0.5}}}))
    assert bench.kept_rows(args)["a/0/resrep@macs"]["provenance"] == single
    # after a resume the file's top-level record is the latest run's: an old row's run is unknown, so none is claimed
    out.write_text(json.dumps({"settings": settings, **single, "earlier_commands": ["first"],
                               "rows": {"a/0/resrep@macs": {"accuracy": 0.5}}}))
    assert "provenance" not in bench.kept_rows(args)["a/0/resrep@macs"]

"""``python -m studies.compare``: a finished study's report, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna

from searchspace import open_storage
from searchspace.budget_of import BUDGET_OF_ATTR

ROOT = Path(__file__).resolve().parents[2]


def _study_file(tmp_path: Path, budget: str) -> Path:
    storage = tmp_path / "studies.db"
    study = optuna.create_study(study_name="c", storage=open_storage(str(storage)), direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={
        "arch": '{"family": "resnet_cifar"}', "family": "resnet_cifar", "feasible": True, "accuracy": 0.5,
        "latency_ms": 1.0, "macs": 1, "baseline": "resnet20"}))
    study.set_user_attr(BUDGET_OF_ATTR, {"baseline": "resnet20", "cost": {
        "latency_ms": 1.234, "latency_spread_ms": 0.0, "macs": 1, "params_train": 1, "params_deploy": 1, "device": "cpu"}})
    path = tmp_path / "c.toml"
    path.write_text(f'study_name = "c"\nstorage = "{storage}"\nout = "{tmp_path / "out"}"\n{budget}\n')
    return path


def _compare(study_file: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "studies.compare", "--study", str(study_file)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return (study_file.parent / "out" / "report.md").read_text()


def test_the_report_states_an_absolute_budget_or_the_baseline_timing_that_made_it(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert "Budget: 2.5 ms deploy-form latency on cpu" in _compare(_study_file(tmp_path / "a", "budget_ms = 2.5"))
    text = _compare(_study_file(tmp_path / "b", 'budget_of = "resnet20"\nbaselines = "resnet20"'))
    assert "Budget: 1.234 ms (the latency of resnet20, timed when the search started)" in text

"""The whole chain on the embedded data: every stage's artifacts, and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studies.run import load_plan, main, run_study

ROOT = Path(__file__).resolve().parents[2]

SHIPPED = ROOT / "studies" / "tiny_e2e.toml"
#: The shipped study, unchanged, made tinier only through the documented ``--set`` overrides.
TINY = ["search.train_per_class=6", "search.val_per_class=4", "search.batch_size=20", "search.threads=1",
        "retrain.epochs=1", "prune.finetune_epochs=0"]


def _overrides(tmp_path: Path) -> list[str]:
    return [*TINY, f'out="{tmp_path / "run"}"']


def test_shipped_study_runs_end_to_end_and_resumes_after_kill(tmp_path: Path) -> None:
    path, overrides = SHIPPED, _overrides(tmp_path)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    sets = [arg for o in overrides for arg in ("--set", o)]
    worker = subprocess.Popen([sys.executable, "-W", "ignore", "-m", "studies.run", str(path), *sets], cwd=tmp_path,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    search_done = out / "search" / "done.json"
    deadline = time.time() + 240
    while not search_done.exists() and worker.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert search_done.exists(), "search stage never finished"
    worker.send_signal(signal.SIGKILL)  # mid-way: somewhere in retrain (or later)
    worker.wait()
    stamp = search_done.stat().st_mtime_ns
    records = run_study(load_plan(path, overrides))
    assert search_done.stat().st_mtime_ns == stamp  # finished stage not redone
    for stage in ("search", "retrain", "prune", "export", "report"):
        assert (out / stage / "done.json").is_file(), stage
    prune = records["prune"]
    for run in prune["methods"].values():  # the method met its MACs target, whatever its accuracy
        assert run["report"]["after"]["macs"] <= run["report"]["target_macs"] < run["report"]["before"]["macs"]
    assert records["export"]["ok"] and records["export"]["onnx"]["batchnorm_nodes"] == 0
    assert records["export"]["checkpoint"] == prune["checkpoint"]  # the model the prune stage chose is exported
    assert all(c["fp64_abs_error"] <= c["allowed_abs_error"] for c in records["export"]["onnx"]["checks"])
    report = (out / "report" / "report.md").read_text()
    for needle in ("## Winner", "## Environment", "python -m studies.run"):
        assert needle in report
    if prune["exported"] == "pruned":
        assert prune["checkpoint"] == prune["methods"][prune["chosen"]]["checkpoint"]
        assert "## Before and after pruning" in report and "widths.png" in report
        assert (out / "report" / "widths.png").stat().st_size > 1000
    else:  # this tiny winner pruned to chance: the unpruned one is exported, and the report says so
        assert all(run["collapsed"] for run in prune["methods"].values())
        assert prune["checkpoint"] == records["retrain"]["checkpoint"] and records["export"]["form"] == "train"
        assert "the exported model is the unpruned winner" in report and "widths.png" not in report
    assert (out / "report" / "pareto.png").stat().st_size > 1000
    before = json.loads(search_done.read_text())
    assert run_study(load_plan(path, overrides))["search"] == before  # a third run does nothing new
    assert sorted(p.name for p in (out / "export").iterdir()) == ["done.json", "model.onnx", "model.ts"]


@pytest.mark.parametrize(
    "text, message",
    [
        ('[prune]\nmethod = "magic"\n', "method 'magic'"),
        ('[prune]\ntarget_flops = "-3"\n', "target"),
        ('[bogus]\nx = 1\n', "unknown table"),
        ("[retrain\n", "not valid TOML"),
    ],
)
def test_bad_study_files_are_rejected_before_running(tmp_path: Path, text: str, message: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main([str(path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_overrides_are_checked_like_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = load_plan(SHIPPED, [*TINY, 'out="x"', "prune.target_flops=0.3x"])
    assert plan.out == Path("x") and plan.target_flops == "0.3x" and plan.search["train_per_class"] == 6
    assert plan.prune_options["mask_interval"] == 5  # untouched keys keep the file's values
    for bad, message in (("search", "expected TABLE.KEY=VALUE"), ("bogus.x=1", "unknown table"),
                         ("prune.target_flops=0.3", "did you mean 0.3x"), ("a.b.c=1", "expected")):
        assert main([str(SHIPPED), "--set", bad]) == 2
        assert message in capsys.readouterr().err, bad


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_study_file_parses_and_checks(path: Path) -> None:
    import tomllib

    from searchspace import SearchConfig, read_study_table

    if "search" not in tomllib.loads(path.read_text()):  # a search.py study file (flat keys)
        assert SearchConfig.from_mapping(read_study_table(path), {}).trials >= 1
        return
    # a GPU study is checked as it would run on this CPU (its documented override), not skipped
    overrides = ['search.device="cpu"', 'search.runtime="eager"'] if "cuda" in path.read_text() else []
    if 'train_device = "cuda"' in path.read_text():
        overrides.append('search.train_device="cpu"')
    plan = load_plan(path, overrides)
    config = plan.search_config()
    assert config.trials >= 1 and plan.methods
    if plan.stage2 is not None:  # a two-stage study reports on a test split that selection never sees
        assert config.data.holdout_per_class > 0

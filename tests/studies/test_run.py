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

STUDY = """
out = "{out}"

[search]
space = "dscnn"
budget_flops = "50M"
trials = 4
no_baselines = true
epochs = 1
train_per_class = 6
val_per_class = 4
batch_size = 20
device = "cpu"
threads = 1

[retrain]
epochs = 1

[prune]
method = "resrep"
target_flops = "0.5x"
epochs = 1
finetune_epochs = 0
mask_interval = 1
warmup_epochs = 0.0

[export]
torchscript = false
"""


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(STUDY.format(out=tmp_path / "run"))
    return path


def test_chain_runs_end_to_end_and_resumes_after_kill(tmp_path: Path) -> None:
    path = _write(tmp_path)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen([sys.executable, "-W", "ignore", "-m", "studies.run", str(path)], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    search_done = out / "search" / "done.json"
    deadline = time.time() + 240
    while not search_done.exists() and worker.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert search_done.exists(), "search stage never finished"
    worker.send_signal(signal.SIGKILL)  # mid-way: somewhere in retrain (or later)
    worker.wait()
    stamp = search_done.stat().st_mtime_ns
    records = run_study(load_plan(path))
    assert search_done.stat().st_mtime_ns == stamp  # finished stage not redone
    for stage in ("search", "retrain", "prune", "export", "report"):
        assert (out / stage / "done.json").is_file(), stage
    prune = records["prune"]["report"]
    assert prune["after"]["macs"] <= prune["target_macs"] < prune["before"]["macs"]
    assert records["export"]["ok"] and records["export"]["onnx"]["batchnorm_nodes"] == 0
    report = (out / "report" / "report.md").read_text()
    for needle in ("## Winner", "## Before and after pruning", "widths.png", "## Environment", "python -m studies.run"):
        assert needle in report
    assert (out / "report" / "widths.png").stat().st_size > 1000
    assert (out / "report" / "pareto.png").stat().st_size > 1000
    before = json.loads(search_done.read_text())
    assert run_study(load_plan(path))["search"] == before  # a third run does nothing new


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

"""benchmarks/train_throughput.py's runner: a row per child process, failed rows recorded, --resume, bad input.

Every row here is resnet20 on a tiny input (batch 2, one round, one thread): a few seconds each.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from tests.scripts import ROOT, load_script

TINY = ["--models", "resnet20", "--threads", "1", "--rounds", "1", "--memory-format", "contiguous"]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))  # the script imports its sibling plain_twin.py
    try:
        return load_script("benchmarks/train_throughput.py")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def child_doc(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One row measured the default way, in a child process."""
    out = tmp_path_factory.mktemp("child") / "rows.json"
    assert bench.main([*TINY, "--resolutions", "16", "--batches", "2", "--out", str(out)]) == 0
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def _rows(out: Path) -> dict[int, dict[str, Any]]:
    return {r["batch"]: r for r in json.loads(out.read_text())["results"]}


def test_child_and_in_process_rows_have_the_same_keys(bench: ModuleType, child_doc: dict[str, Any],
                                                      tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:  # in-process mode sets this process's thread count
        code = bench.main([*TINY, "--resolutions", "16", "--batches", "2", "--in-process", "--out", str(tmp_path / "r.json")])
    finally:
        torch.set_num_threads(threads)
    (in_process,) = json.loads((tmp_path / "r.json").read_text())["results"]
    (child,) = child_doc["results"]
    assert code == 0 and child_doc["complete"]
    assert set(child) == set(in_process) and "failed" not in child
    assert set(child["images_per_s"]) == set(bench.FORMS) and len(child["step_s"]["default"]) == 1
    assert 0 < child["peak_rss_mb"] < 16 * 1024


def test_a_failing_row_is_recorded_and_the_next_still_runs(bench: ModuleType, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    # batch 1 at 1 px: the last BatchNorm sees one value per channel and raises in the child
    code = bench.main([*TINY, "--resolutions", "1", "--batches", "1,2", "--out", str(out)])
    rows, printed = _rows(out), capsys.readouterr().out
    assert code == 1 and not json.loads(out.read_text())["complete"]
    assert rows[1]["failed"].startswith("exit 1: ValueError: Expected more than 1 value per channel")
    assert set(rows[1]) == {"model", "resolution", "batch", "threads", "device", "failed"}
    assert "failed" not in rows[2] and rows[2]["images_per_s"]["plain"] > 0
    assert "| resnet20 | 1 | 1 | 1 | failed: exit 1: ValueError" in printed
    assert "[1/2] resnet20 1 px batch 1 1 thr ... ETA --:--" in printed
    assert re.search(r"\[2/2\] resnet20 1 px batch 2 1 thr \.\.\. ETA \d\d:\d\d\n", printed)


def test_a_row_past_the_rss_cap_is_killed(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    # 50 MB: importing torch alone takes more, so the parent kills the child early
    code = bench.main([*TINY, "--resolutions", "16", "--batches", "2", "--max-rss-gb", "0.05", "--out", str(out)])
    assert code == 1
    assert re.fullmatch(r"killed at \d\.\d\d GB RSS \(--max-rss-gb 0\.05\)", _rows(out)[2]["failed"])


def test_resume_keeps_finished_rows_and_remeasures_failed_ones(bench: ModuleType, child_doc: dict[str, Any],
                                                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    (done,) = child_doc["results"]
    failed = {"model": "resnet20", "resolution": 16, "batch": 3, "threads": 1, "device": "cpu", "failed": "killed"}
    other = {**done, "model": "resnet56"}  # outside the resumed grid: stays in the file
    out.write_text(json.dumps({**child_doc, "results": [done, failed, other]}))
    code = bench.main([*TINY, "--resolutions", "16", "--batches", "2,3", "--resume", "--out", str(out)])
    doc = json.loads(out.read_text())
    rows = {(r["model"], r["batch"]): r for r in doc["results"]}
    assert code == 0 and doc["complete"] and len(rows) == 3
    assert rows["resnet20", 2]["step_s"] == done["step_s"]  # not re-measured: the same timings
    assert "failed" not in rows["resnet20", 3] and rows["resnet20", 3]["images_per_s"]["default"] > 0
    assert rows["resnet56", 2] == other
    assert doc["earlier_runs"][0]["command"] == child_doc["command"]
    assert "[1/2] resnet20 16 px batch 2 1 thr: kept from" in capsys.readouterr().out


def test_resume_refuses_a_file_of_other_rounds(bench: ModuleType, child_doc: dict[str, Any], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    out.write_text(json.dumps({**child_doc, "rounds": 5}))
    with pytest.raises(SystemExit) as exc:
        bench.main([*TINY, "--resolutions", "16", "--batches", "2", "--resume", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "made with rounds 5, not 1" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["--models", "resnet20,nope"], "unknown model 'nope'; valid models: "),
    (["--rounds", "0"], "argument --rounds: '0' is not positive"),
    (["--batches", "64,x"], "argument --batches: 'x' is not an integer"),
    (["--resolutions", "32,-1"], "argument --resolutions: '-1' is not positive"),
    (["--threads", "1.5"], "argument --threads: '1.5' is not an integer"),
    (["--max-rss-gb", "0"], "argument --max-rss-gb: '0' is not positive"),
])
def test_bad_input_is_one_line_and_exit_2(bench: ModuleType, argv: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and err.count("\n") == 1

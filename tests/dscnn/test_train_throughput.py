"""benchmarks/train_throughput.py's runner: a row per child process, failed rows recorded, --resume, bad input.

Every row here is resnet20 on a tiny input (batch 2, one round, one thread): a few seconds each. The
generic siblings it runs on (row_runner.py, resumable_results.py) are also tested on their own, with
torch-free rows.
"""

from __future__ import annotations

import json
import re
import signal
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
def row_runner() -> ModuleType:
    return load_script("benchmarks/row_runner.py")


@pytest.fixture(scope="module")
def resumable() -> ModuleType:
    return load_script("benchmarks/resumable_results.py")


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


def _child(code: str) -> Any:
    """A torch-free child command: Python ``code`` with ``path`` bound to the row file."""
    return lambda path: [sys.executable, "-c", f"import json, os, signal, sys, time; path = {str(path)!r}; {code}"]


def test_row_runner_returns_the_row_a_child_wrote(row_runner: ModuleType) -> None:
    row = row_runner.run_in_child(_child("json.dump({'n': 3, 'peak': 1.5}, open(path, 'w'))"), 1.0)
    assert row == {"n": 3, "peak": 1.5}


@pytest.mark.parametrize("code, reason", [
    ("print('warming up', file=sys.stderr); sys.exit('boom: out of luck')", "exit 1: boom: out of luck"),
    ("sys.exit(3)", "exit 3: no error output"),
    ("pass", "exited without writing its row"),
    ("os.kill(os.getpid(), signal.SIGKILL)", f"killed by {signal.SIGKILL.name}"),
])
def test_row_runner_says_why_a_child_has_no_row(row_runner: ModuleType, code: str, reason: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert row_runner.run_in_child(_child(code), 1.0) == reason
    if "boom" in code:  # the child's stderr is passed on, not swallowed
        assert "warming up" in capsys.readouterr().err


def test_row_runner_names_the_callers_cap_flag(row_runner: ModuleType) -> None:
    grow = "x = bytearray(400 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(20)"  # touched: resident
    reason = row_runner.run_in_child(_child(grow), 0.1, cap_flag="--rss-cap")
    assert re.fullmatch(r"killed at 0\.\d\d GB RSS \(--rss-cap 0\.1\)", reason)


def test_resumable_results_keep_rows_by_key_across_runs(resumable: ModuleType, tmp_path: Path) -> None:
    out, grid = tmp_path / "sub" / "doc.json", [{"n": 1, "k": "a"}, {"n": 2, "k": "a"}, {"n": 3, "k": "a"}]
    first = resumable.ResumableResults(out, ("n", "k"), grid, {"seed": 0}, resume=True)  # no file yet: nothing kept
    assert first.to_measure == ((1, "a"), (2, "a"), (3, "a"))
    first.add({"n": 1, "k": "a", "v": 10})
    first.add({"n": 2, "k": "a", "failed": "exit 1: boom"})
    first.add({"n": 1, "k": "b", "v": 11})  # same n, other key: another row, outside the grid
    first.save("bench --first", {"environment": "env-1"})
    assert not list(out.parent.glob("*.tmp")) and list(json.loads(out.read_text()))[:3] == ["command", "seed", "complete"]
    again = resumable.ResumableResults(out, ("n", "k"), grid, {"seed": 0}, resume=True)
    assert again.kept({"n": 1, "k": "a"}) and not again.kept({"n": 2, "k": "a"}) and again.to_measure == ((2, "a"), (3, "a"))
    assert [r.get("v") for r in again.grid_rows()] == [10, None] and again.any_failed() and not again.complete()
    again.add({"n": 2, "k": "a", "v": 20})
    again.add({"n": 3, "k": "a", "v": 30})
    again.save("bench --again", {})
    doc = json.loads(out.read_text())
    assert doc["complete"] and doc["command"] == "bench --again" and len(doc["results"]) == 4
    assert doc["earlier_runs"] == [{"command": "bench --first", "environment": "env-1"}]
    fresh = resumable.ResumableResults(out, ("n", "k"), grid, {"seed": 0}, resume=False)
    assert fresh.to_measure == ((1, "a"), (2, "a"), (3, "a")) and not fresh.earlier_runs


def test_resumable_results_refuse_files_that_do_not_fit(resumable: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "doc.json"
    out.write_text(json.dumps({"command": "old", "results": [{"n": 1}]}))  # from before "seed" was recorded
    assert resumable.ResumableResults(out, ("n",), [{"n": 1}], {"seed": 0}, resume=True, assumed={"seed": 0}).kept({"n": 1})
    with pytest.raises(resumable.ResumeMismatch, match=r"doc\.json was made with seed 0, not 1$"):
        resumable.ResumableResults(out, ("n",), [{"n": 1}], {"seed": 1}, resume=True, assumed={"seed": 0})
    for text in ("not json", "[]", '{"results": [1]}'):
        out.write_text(text)
        with pytest.raises(resumable.ResumeMismatch, match=r"doc\.json is not this script's JSON$"):
            resumable.ResumableResults(out, ("n",), [{"n": 1}], {}, resume=True)

"""benchmarks/train_throughput.py's runner: a row per child process, failed rows recorded, --resume, bad input,
what each row records about the process that measured it, no child left behind.

Every row here is resnet20 on a tiny input (batch 2, one round, one thread): a few seconds each. The
generic siblings it runs on (row_runner.py, resumable_results.py) are also tested on their own, with
torch-free rows.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import sys
import time
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
    """One row measured the default way, in a child process that would start at 2 threads, not the 1 asked."""
    out = tmp_path_factory.mktemp("child") / "rows.json"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "2")  # the child inherits it: only measure's set_num_threads makes it 1
        assert bench.main([*TINY, "--resolutions", "16", "--batches", "2", "--out", str(out)]) == 0
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def _rows(out: Path) -> dict[int, dict[str, Any]]:
    return {r["batch"]: r for r in json.loads(out.read_text())["results"]}


def _this_commit(bench: ModuleType, doc: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """``doc`` as if made at the current commit (another helper may commit while the tests run), with ``fields``."""
    return {**doc, "git": bench.git_revision(), **fields}


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


def test_a_row_records_what_was_in_force_in_its_child(bench: ModuleType, child_doc: dict[str, Any]) -> None:
    (child,) = child_doc["results"]
    assert child["threads_in_force"] == 1  # asked for 1 where the child would have run 2
    if platform.libc_ver()[0] == "glibc":
        assert child["malloc_pinned"] is True
    assert re.fullmatch(r"[0-9a-f]{40}", child["git"]["commit"]) and isinstance(child["git"]["dirty"], bool)
    assert child["environment"]["threads"] == 1 and child["environment"]["device"] == "cpu"
    assert child["environment"]["cpu_model"] == child_doc["environment"]["cpu_model"] and child["run"] == 0
    assert child_doc["environment"]["threads"] == 1 and re.fullmatch(r"[0-9a-f]{40}", child_doc["git"]["commit"])


def test_the_run_environment_names_the_device_kind_and_every_thread_count(bench: ModuleType) -> None:
    several, one = bench.run_environment("cuda:0", [1, 2]), bench.run_environment("cpu", [2])
    assert several["device"] == "cuda" and several["threads"] == [1, 2]
    assert one["device"] == "cpu" and one["threads"] == 2


def test_a_failing_row_is_recorded_and_the_next_still_runs(bench: ModuleType, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    # batch 1 at 1 px: the last BatchNorm sees one value per channel and raises in the child
    code = bench.main([*TINY, "--resolutions", "1", "--batches", "1,2", "--out", str(out)])
    rows, printed = _rows(out), capsys.readouterr().out
    assert code == 1 and not json.loads(out.read_text())["complete"]
    assert rows[1]["failed"].startswith("exit 1: ValueError: Expected more than 1 value per channel")
    assert set(rows[1]) == {"model", "resolution", "batch", "threads", "device", "failed", "run"}
    assert "failed" not in rows[2] and rows[2]["images_per_s"]["plain"] > 0
    assert "| resnet20 | 1 | 1 | 1 | failed: exit 1: ValueError" in printed
    assert "[1/2] resnet20 1 px batch 1 1 thr ... ETA --:--" in printed
    assert re.search(r"\[2/2\] resnet20 1 px batch 2 1 thr \.\.\. ETA \d\d:\d\d\n", printed)


def test_a_row_past_the_rss_cap_is_killed(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    # 50 MB: importing torch alone takes more, so the parent kills the child early
    code = bench.main([*TINY, "--resolutions", "16", "--batches", "2", "--max-rss-gb", "0.05", "--out", str(out)])
    assert code == 1
    assert re.fullmatch(r"killed at \d\.\d\d GiB RSS \(--max-rss-gb 0\.05\)", _rows(out)[2]["failed"])


def test_resume_keeps_finished_rows_and_remeasures_failed_ones(bench: ModuleType, child_doc: dict[str, Any],
                                                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    (done,) = child_doc["results"]
    failed = {"model": "resnet20", "resolution": 16, "batch": 3, "threads": 1, "device": "cpu", "failed": "killed"}
    other = {**done, "model": "resnet56"}  # outside the resumed grid: stays in the file
    out.write_text(json.dumps(_this_commit(bench, child_doc, results=[done, failed, other])))
    code = bench.main([*TINY, "--resolutions", "16", "--batches", "2,3", "--resume", "--out", str(out)])
    doc = json.loads(out.read_text())
    rows = {(r["model"], r["batch"]): r for r in doc["results"]}
    assert code == 0 and doc["complete"] and len(rows) == 3
    assert rows["resnet20", 2]["step_s"] == done["step_s"] and rows["resnet20", 2]["run"] == 0  # not re-measured
    assert "failed" not in rows["resnet20", 3] and rows["resnet20", 3]["images_per_s"]["default"] > 0
    assert rows["resnet20", 3]["run"] == 1  # measured by the resumed run, earlier_runs[0] by the first
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


@pytest.mark.parametrize("section, field, value", [
    ("environment", "cpu_model", "Some Other CPU"), ("environment", "torch", "1.0.0"), ("git", "commit", "0" * 40),
])
def test_resume_refuses_a_file_from_another_cpu_torch_or_commit(bench: ModuleType, child_doc: dict[str, Any],
                                                                tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                section: str, field: str, value: str) -> None:
    out, doc = tmp_path / "rows.json", _this_commit(bench, child_doc)
    out.write_text(json.dumps({**doc, section: {**doc[section], field: value}}))
    with pytest.raises(SystemExit) as exc:
        bench.main([*TINY, "--resolutions", "16", "--batches", "2", "--resume", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"records {section}.{field} {value!r}, this run '" in err
    assert "--force-resume" in err and err.count("\n") == 1


def test_resume_refuses_a_file_that_records_no_commit(bench: ModuleType, child_doc: dict[str, Any], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    out.write_text(json.dumps({k: v for k, v in child_doc.items() if k != "git"}))  # from before it was recorded
    with pytest.raises(SystemExit) as exc:
        bench.main([*TINY, "--resolutions", "16", "--batches", "2", "--resume", "--out", str(out)])
    assert exc.value.code == 2 and "records git.commit None, this run '" in capsys.readouterr().err


def test_force_resume_keeps_rows_of_another_cpu_and_says_which_run_they_are(
        bench: ModuleType, child_doc: dict[str, Any], tmp_path: Path) -> None:
    out, doc = tmp_path / "rows.json", _this_commit(bench, child_doc)
    out.write_text(json.dumps({**doc, "environment": {**doc["environment"], "cpu_model": "Some Other CPU"}}))
    code = bench.main([*TINY, "--resolutions", "16", "--batches", "2", "--force-resume", "--out", str(out)])  # implies --resume
    after = json.loads(out.read_text())
    assert code == 0 and after["results"] == child_doc["results"] and after["results"][0]["run"] == 0
    assert after["earlier_runs"][0]["environment"]["cpu_model"] == "Some Other CPU"
    assert after["environment"]["cpu_model"] == child_doc["environment"]["cpu_model"]


def test_a_resume_that_keeps_every_row_still_rewrites_the_file(bench: ModuleType, child_doc: dict[str, Any],
                                                              tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    out.write_text(json.dumps(_this_commit(bench, child_doc, command="an older command", complete=False)))
    argv = [*TINY, "--resolutions", "16", "--batches", "2", "--resume", "--out", str(out)]
    assert bench.main(argv) == 0
    after = json.loads(out.read_text())
    assert after["complete"] and after["command"] == "benchmarks/train_throughput.py " + " ".join(argv)
    assert after["earlier_runs"][0]["command"] == "an older command" and after["results"] == child_doc["results"]


def test_sigterm_stops_a_run_with_system_exit_and_the_handler_is_put_back(bench: ModuleType, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def sigterm_mid_row(point: Any, a: Any) -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # run's handler raises out of this
        raise AssertionError("SIGTERM did not stop the row")

    def guard(signum: int, frame: Any) -> None:  # without run's handler: fail the test, not kill pytest
        raise AssertionError("SIGTERM reached the handler from before the run")

    monkeypatch.setattr(bench, "measure_in_child", sigterm_mid_row)
    previous = signal.signal(signal.SIGTERM, guard)
    try:
        with pytest.raises(SystemExit) as exc:
            bench.main([*TINY, "--resolutions", "16", "--batches", "2", "--out", str(tmp_path / "rows.json")])
        assert exc.value.code == 128 + signal.SIGTERM and signal.getsignal(signal.SIGTERM) is guard
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    assert re.fullmatch(r"killed at 0\.\d\d GiB RSS \(--rss-cap 0\.1\)", reason)  # 400 MiB: 0.39 GiB


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads Linux's /proc")
def test_row_runner_reads_rss_in_gib(row_runner: ModuleType) -> None:
    status = Path("/proc/self/status").read_text().splitlines()
    vm_rss_kib = int(next(line for line in status if line.startswith("VmRSS:")).split()[1])  # the kernel's kB are KiB
    assert row_runner._rss_gib(os.getpid()) == pytest.approx(vm_rss_kib / 2**20, rel=0.01)  # 1e9 bytes: 7% off


def test_row_runner_kills_the_child_when_the_wait_raises(row_runner: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    children: list[Any] = []

    def broken_watch(proc: Any, max_rss_gib: float) -> None:
        children.append(proc)
        raise RuntimeError("the watch broke")

    monkeypatch.setattr(row_runner, "_watch", broken_watch)
    try:
        with pytest.raises(RuntimeError, match="the watch broke"):
            row_runner.run_in_child(_child("time.sleep(30)"), 1.0)
        (child,) = children
        assert child.poll() == -signal.SIGKILL  # killed and reaped, not left sleeping
    finally:
        for orphan in (c for c in children if c.poll() is None):
            orphan.kill()
            orphan.wait()


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

"""A damaged journal file is refused before anything is written, and repaired without losing a complete record."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from searchspace import journal
from searchspace.journal import CheckedJournalFileBackend, JournalDamaged, journal_lock
from searchspace.repair import main as repair_main
from searchspace.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)

HALF_RECORD = b'{"op_code":6,"worker_id":"dead-worker","trial_id":2,"sta'


def _journal(tmp_path: Path, trials: int = 3) -> Path:
    """A healthy journal with ``trials`` COMPLETE trials, written by plain Optuna."""
    path = tmp_path / "studies.db"
    study = optuna.create_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))), direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=trials)
    return path


def _plain_trials(path: Path) -> list[optuna.trial.FrozenTrial]:
    """The trials as optuna-dashboard reads them: Optuna's own backend, no check."""
    return optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path)))).trials


def _line_start(data: bytes, number: int) -> int:
    """Byte offset of 1-based line ``number``."""
    return sum(len(line) for line in data.splitlines(keepends=True)[: number - 1])


def _damage(path: Path, kind: str) -> tuple[int, int]:
    """Damage the journal; return the (line, byte offset) the refusal must name."""
    data = path.read_bytes()
    lines = data.count(b"\n")
    if kind == "cut mid-line":
        last = _line_start(data, lines)
        path.write_bytes(data[: last + (len(data) - last) // 2])
        return lines, last
    if kind == "partial line appended":
        path.write_bytes(data + HALF_RECORD)
    elif kind == "garbage line appended":
        path.write_bytes(data + b"\x00\x17 not json\n")
    elif kind == "garbage in the middle":
        at = _line_start(data, 4)
        path.write_bytes(data[:at] + b"{oops}\n" + data[at:])
        return 4, at
    return lines + 1, len(data)


KINDS = ["cut mid-line", "partial line appended", "garbage line appended", "garbage in the middle"]


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_journal_is_refused_before_any_write(tmp_path: Path, kind: str) -> None:
    path = _journal(tmp_path)
    line, offset = _damage(path, kind)
    damaged = path.read_bytes()
    with pytest.raises(JournalDamaged) as err:
        optuna.create_study(study_name="s", storage=open_storage(str(path)), load_if_exists=True)
    message = str(err.value)
    assert "\n" not in message
    assert f"{path} is damaged at line {line} (byte {offset})" in message
    assert f"python -m searchspace.repair {path}" in message
    assert path.read_bytes() == damaged  # nothing appended, nothing rewritten


def test_damage_after_open_stops_the_next_append(tmp_path: Path) -> None:
    path = _journal(tmp_path)
    study = optuna.load_study(study_name="s", storage=open_storage(str(path)))
    line, offset = path.read_bytes().count(b"\n") + 1, path.stat().st_size
    with open(path, "ab") as f:  # e.g. a worker killed in the middle of its append
        f.write(HALF_RECORD)
    damaged = path.read_bytes()
    with pytest.raises(JournalDamaged, match=f"line {line} \\(byte {offset}\\)"):
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert path.read_bytes() == damaged


@pytest.mark.parametrize("kind", KINDS)
def test_repair_keeps_every_complete_record(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = _journal(tmp_path)
    healthy = path.read_bytes()
    before = _plain_trials(path)
    line, offset = _damage(path, kind)
    damaged = path.read_bytes()
    assert repair_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert f"line {line} (bytes {offset}-" in out and "the original is in" in out
    backups = list(tmp_path.glob("studies.db.bak-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == damaged and str(backups[0]) in out
    assert not list(tmp_path.glob("*.tmp"))
    after = _plain_trials(path)
    if kind == "cut mid-line":  # the cut record (trial 2's COMPLETE) is gone; everything before it is kept
        assert path.read_bytes() == healthy[: _line_start(healthy, line)]
        assert [t.state for t in after] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
        assert [t.params for t in after] == [t.params for t in before]
    else:
        assert path.read_bytes() == healthy
        assert [(t.state, t.values, t.params) for t in after] == [(t.state, t.values, t.params) for t in before]
    optuna.create_study(study_name="s", storage=open_storage(str(path)), load_if_exists=True).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=1)  # a search can go on with it
    assert len(_plain_trials(path)) == 4


def test_repair_keeps_a_record_appended_onto_a_cut_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _journal(tmp_path)
    data = path.read_bytes()
    last = _line_start(data, data.count(b"\n"))
    # a worker killed mid-append, then Optuna's plain writer appending trial 2's COMPLETE right after it
    path.write_bytes(data[:last] + HALF_RECORD + data[last:])
    assert _plain_trials(path)[2].state == TrialState.RUNNING  # Optuna skips the fused line without a word
    assert repair_main([str(path)]) == 0
    assert "kept the complete record in its last" in capsys.readouterr().out
    assert path.read_bytes() == data
    assert [t.state for t in _plain_trials(path)] == [TrialState.COMPLETE] * 3


def test_repair_of_a_healthy_journal_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _journal(tmp_path)
    healthy = path.read_bytes()
    assert repair_main([str(path)]) == 0
    assert "healthy" in capsys.readouterr().out
    assert path.read_bytes() == healthy and not list(tmp_path.glob("studies.db.bak-*"))


def test_dry_run_and_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _journal(tmp_path)
    _damage(path, "garbage line appended")
    damaged = path.read_bytes()
    assert repair_main([str(path), "--dry-run"]) == 0
    assert "dry run" in capsys.readouterr().out and path.read_bytes() == damaged
    sqlite = tmp_path / "old.db"
    sqlite.write_bytes(b"SQLite format 3\x00" + bytes(100))
    assert repair_main([str(sqlite)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"use --storage sqlite:///{sqlite}")
    with pytest.raises(JournalDamaged, match="is an SQLite database"):
        open_storage(str(sqlite))
    assert repair_main([str(tmp_path / "missing.db")]) == 2


def test_a_worker_mid_append_is_not_damage(tmp_path: Path) -> None:
    """Another worker's half-written last line is waited for under the journal lock, never flagged."""
    path = _journal(tmp_path)
    writer = JournalFileBackend(str(path))
    checked: list[object] = []
    with journal_lock(writer):  # a worker inside its append: the lock held, half its record written
        with open(path, "ab") as f:
            f.write(HALF_RECORD)
        checker = threading.Thread(target=lambda: checked.append(_try_open(path)))
        checker.start()
        time.sleep(0.5)
        assert checker.is_alive()  # waits for the lock instead of reading the half line
        with open(path, "ab") as f:
            f.write(b'te":1,"datetime_complete":"2026-01-01T00:00:00.000000"}\n')
    checker.join(timeout=30)
    assert checked == ["ok"]


def _try_open(path: Path) -> str:
    try:
        open_storage(str(path))
    except JournalDamaged as exc:
        return str(exc)
    return "ok"


APPENDER = """
import importlib.util, sys, optuna
from optuna.storages import JournalStorage
# searchspace.journal by its path: importing the searchspace package would load torch (seconds per process)
spec = importlib.util.spec_from_file_location("journal", sys.argv[2])
journal = sys.modules["journal"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(journal)
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = JournalStorage(journal.CheckedJournalFileBackend(sys.argv[1]))
study = optuna.create_study(study_name="s", storage=storage, load_if_exists=True)
def objective(trial):
    trial.set_user_attr("blob", "x" * 20_000)  # large records: a reader without the lock would catch them half-written
    return trial.suggest_float("x", 0, 1)
study.optimize(objective, n_trials=15)
"""


def test_two_workers_appending_are_never_flagged(tmp_path: Path) -> None:
    path = _journal(tmp_path, trials=1)
    command = [sys.executable, "-c", APPENDER, str(path), journal.__file__]
    workers = [subprocess.Popen(command, stderr=subprocess.PIPE) for _ in range(2)]
    checks = 0
    while any(w.poll() is None for w in workers):
        CheckedJournalFileBackend(str(path))  # raises JournalDamaged on a false alarm
        checks += 1
        time.sleep(0.01)
    for w in workers:
        assert w.wait() == 0, w.stderr.read().decode()[-2000:] if w.stderr else ""
    assert checks > 0 and len(_plain_trials(path)) == 31

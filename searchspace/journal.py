"""The journal file (``studies.db``): refuse to use a damaged one, and repair it.

An Optuna journal file holds one JSON record per line, appended under Optuna's lock file
(``studies.db.lock``). Optuna's reader skips a line without its newline or a bad last line without
a word, and raises on a bad line further up; a writer appends right after whatever is there, so a
journal cut mid-line, or with garbage appended, is silently read with records missing, and the next
append fuses a good record onto the broken line: from then on nobody can read the file.

`CheckedJournalFileBackend` checks every line before the first read and again before each append
(only the bytes added since its last check), **holding the journal lock**: a writer holds the same
lock for its whole append, so a half-written last line seen under the lock is damage, not a
concurrent worker mid-write, and a healthy study with any number of workers is never flagged. On
damage it raises `JournalDamaged` (a one-line message naming the file, line and byte offset, and
the repair command) and writes nothing. `repair_journal` (``python -m searchspace.repair``) keeps
every complete record, backs the original up and replaces the file atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

REPAIR_COMMAND = "python -m searchspace.repair"
RECORD_START = b'{"op_code":'  # how Optuna's writer starts every record (compact JSON)
OP_CODES = range(0, 11)  # optuna.storages.journal JournalOperation: CREATE_STUDY (0) .. DISCARD_TRIALS (10)
SQLITE_MAGIC = b"SQLite format 3\x00"


class JournalDamaged(ValueError):
    """The journal file holds a line that is not a complete record; nothing was written to it."""


@dataclass(frozen=True)
class BadLine:
    """One line that is not a complete journal record."""

    number: int  # 1-based line number
    offset: int  # byte offset of the line's first byte
    length: int  # bytes, newline included
    reason: str
    salvaged: int = 0  # bytes at the line's end that hold a complete record (kept by a repair)


@dataclass
class JournalScan:
    records: int = 0
    bad: list[BadLine] = field(default_factory=list)
    kept: list[bytes] = field(default_factory=list)  # the complete records, newline-terminated
    end: int = 0  # bytes scanned


def record_problem(line: bytes) -> str | None:
    """Why ``line`` (without its newline) is not a journal record; None when it is one."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "not valid JSON"
    if not isinstance(record, dict) or record.get("op_code") not in OP_CODES or not isinstance(record.get("worker_id"), str):
        return "valid JSON but not a journal record"
    return None


def _salvage(line: bytes) -> bytes | None:
    """The longest tail of a bad line that is a complete record (a record appended onto a cut one)."""
    start = line.find(RECORD_START, 1)
    while start != -1:
        if record_problem(line[start:]) is None:
            return line[start:]
        start = line.find(RECORD_START, start + 1)
    return None


def scan(data: bytes, *, base_offset: int = 0, first_line: int = 1, keep: bool = False) -> JournalScan:
    """Check every line of ``data`` (journal bytes starting at ``base_offset``)."""
    result = JournalScan(end=base_offset + len(data))
    offset, number = 0, first_line
    while offset < len(data):
        newline = data.find(b"\n", offset)
        end = len(data) if newline == -1 else newline + 1
        line = data[offset:newline] if newline != -1 else data[offset:]
        tail: bytes | None = None
        if newline == -1 and record_problem(line) is None:
            problem: str | None = "complete record without its newline at the end of the file"
            tail = line
        else:
            problem = "cut off: no newline at the end of the file" if newline == -1 else record_problem(line.rstrip(b"\r"))
            tail = _salvage(line) if problem else None
        if problem is None:
            result.records += 1
            if keep:
                result.kept.append(data[offset:end])
        else:
            result.bad.append(BadLine(number, base_offset + offset, end - offset, problem, len(tail) if tail else 0))
            if tail is not None:
                result.records += 1
                if keep:
                    result.kept.append(tail + b"\n")
        offset, number = end, number + 1
    return result


def damage_message(path: str, bad: list[BadLine]) -> str:
    first = bad[0]
    more = f" ({len(bad)} bad lines)" if len(bad) > 1 else ""
    return (
        f"{path} is damaged at line {first.number} (byte {first.offset}): {first.reason}{more}; nothing was written to it. "
        f"Stop its workers, then repair it (keeps every complete record, backs up the original): {REPAIR_COMMAND} {path}"
    )


def check_not_sqlite(path: str, head: bytes) -> None:
    if head.startswith(SQLITE_MAGIC):
        raise JournalDamaged(f"{path} is an SQLite database, not a journal file: use --storage sqlite:///{path}")


@contextmanager
def journal_lock(backend: JournalFileBackend) -> Iterator[bool]:
    """Hold the lock Optuna's writers append under; yields False where it cannot be taken (a read-only folder)."""
    lock = backend._lock  # Optuna's default JournalFileSymlinkLock on ``path + ".lock"``, as optuna-dashboard's
    try:
        lock.acquire()
    except OSError:  # EEXIST (another holder) is waited for inside acquire; this is EACCES / EROFS
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


class CheckedJournalFileBackend(JournalFileBackend):
    """A `JournalFileBackend` that never reads past, or appends onto, a damaged line (see the module doc)."""

    def __init__(self, file_path: str) -> None:
        super().__init__(file_path)
        self._checked = 0  # bytes known to be complete records
        self._lines = 0
        self._inode: int | None = None
        with journal_lock(self) as locked:
            self._check(allow_cut_tail=not locked)

    def _check(self, *, allow_cut_tail: bool = False) -> None:
        """Check the bytes appended since the last check (call under the lock)."""
        path = self._file_path
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            if self._inode is not None and (stat.st_ino != self._inode or stat.st_size < self._checked):
                raise JournalDamaged(f"{path} was replaced or truncated while this process used it (a repair?); nothing was "
                                     "written to it: restart this worker")
            f.seek(self._checked)
            data = f.read()
        if self._checked == 0:
            check_not_sqlite(path, data)
        if allow_cut_tail and not data.endswith(b"\n"):  # no lock: the last line may be another worker's append
            data = data[: data.rfind(b"\n") + 1]
        result = scan(data, base_offset=self._checked, first_line=self._lines + 1)
        if result.bad:
            raise JournalDamaged(damage_message(path, result.bad))
        self._inode, self._checked, self._lines = stat.st_ino, result.end, self._lines + result.records

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Optuna's append (same bytes), after checking what other workers appended, under the same lock."""
        with journal_lock(self):
            self._check()
            payload = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
            with open(self._file_path, "ab") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            self._checked += len(payload)
            self._lines += len(logs)


@dataclass(frozen=True)
class RepairReport:
    path: str
    records: int  # complete records in the repaired file
    dropped: list[BadLine]
    backup: str | None  # None when nothing needed repairing (or a dry run)
    studies: int
    trials: int

    def summary(self) -> str:
        if not self.dropped:
            return (f"{self.path}: healthy ({self.records} records, {self.studies} studies, {self.trials} trials); "
                    "nothing to repair")
        lines = ", ".join(
            f"line {b.number} (bytes {b.offset}-{b.offset + b.length - 1}, {b.reason}"
            + (f"; kept the complete record in its last {b.salvaged} bytes" if b.salvaged else "") + ")"
            for b in self.dropped
        )
        dropped_bytes = sum(b.length - b.salvaged for b in self.dropped)
        where = f"; the original is in {self.backup}" if self.backup else " (dry run: nothing written)"
        return (f"{self.path}: dropped {_count(dropped_bytes, 'byte')} in {_count(len(self.dropped), 'line')}: {lines}; "
                f"kept {_count(self.records, 'record')} ({_count(self.studies, 'study')}, {_count(self.trials, 'trial')} "
                f"load){where}")


def _count(n: int, noun: str) -> str:
    plural = "studies" if noun == "study" else noun + "s"
    return f"{n} {noun if n == 1 else plural}"


def _replay(path: str) -> tuple[int, int]:
    """(studies, trials) of the journal at ``path``, read as Optuna (and optuna-dashboard) reads it."""
    storage = JournalStorage(JournalFileBackend(path))
    studies = storage.get_all_studies()
    return len(studies), sum(len(storage.get_all_trials(s._study_id, deepcopy=False)) for s in studies)


def _backup_path(path: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, n = f"{path}.bak-{stamp}", 1
    while os.path.exists(candidate):
        candidate, n = f"{path}.bak-{stamp}-{n}", n + 1
    return candidate


def repair_journal(path: str, *, dry_run: bool = False) -> RepairReport:
    """Keep every complete record of the journal at ``path``; back the original up; replace it atomically.

    Holds the journal lock throughout, so no worker appends meanwhile (stop the workers first: a worker
    that had the old file open refuses to append to the new one). The repaired journal is replayed
    by Optuna before it replaces the original; if it does not load, nothing is changed.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    backend = JournalFileBackend(path)
    with journal_lock(backend) as locked:
        if not locked and not dry_run:
            raise ValueError(f"{path}: cannot take its lock {path}.lock (folder not writable); nothing changed")
        with open(path, "rb") as f:
            data = f.read()
        check_not_sqlite(path, data)
        result = scan(data, keep=True)
        if data and not result.records:
            raise ValueError(f"{path}: not an Optuna journal file (no complete record in it); nothing changed")
        if not result.bad:
            return RepairReport(path, result.records, [], None, *_replay(path))
        tmp = f"{path}.repair-{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(b"".join(result.kept))
                f.flush()
                os.fsync(f.fileno())
            studies, trials = _replay(tmp)
            backup = None
            if not dry_run:
                backup = _backup_path(path)
                shutil.copy2(path, backup)
                os.replace(tmp, path)
                _fsync_dir(os.path.dirname(os.path.abspath(path)))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return RepairReport(path, result.records, result.bad, backup, studies, trials)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

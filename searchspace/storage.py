"""Optuna storage for studies: a journal file by default, an RDB URL for several machines.

``studies.db`` is an Optuna journal file (`JournalFileBackend`): what ``optuna-dashboard studies.db``
opens as a bare path, and what several worker processes on one machine can append to safely.
An RDB URL (``postgresql://...``) serves workers on several machines; it gets Optuna's heartbeat,
so the trial of a worker that died anywhere is failed once its heartbeat is stale.

The journal file is checked before anything reads or writes it (`searchspace.journal`): a damaged
one is refused with a one-line `JournalDamaged` naming the line and byte, and
``python -m searchspace.repair studies.db`` repairs it.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.trial import TrialState
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.pool import NullPool

from searchspace.journal import CheckedJournalFileBackend, JournalDamaged

__all__ = ["JournalDamaged", "fail_orphaned_trials", "heartbeat_interval", "mark_worker", "open_storage", "worker_id"]

WORKER_ATTR = "worker"  # system attribute "host:pid" of the process running a trial
HEARTBEAT_INTERVAL_S = 60  # RDB storages: a running trial's worker writes a heartbeat this often
HEARTBEAT_GRACE_S = 180  # ... and its trial is failed once the last heartbeat is this old
SCHEMA_LOCK_KEY = 0x7265706E6173  # PostgreSQL advisory lock key ("repnas") held while a storage is opened


def open_storage(storage: str) -> BaseStorage:
    """A checked journal file for a plain path; an `RDBStorage` with heartbeats for ``sqlite://``/``postgresql://`` URLs.

    Raises `ValueError` (one line) for a missing folder, a damaged journal (`JournalDamaged`), an
    unknown URL, a missing database driver or a database that cannot be reached.
    """
    if "://" in storage:
        return _open_rdb(storage)
    directory = os.path.dirname(os.path.abspath(storage))
    if not os.path.isdir(directory):
        raise ValueError(f"--storage {storage!r}: directory {directory!r} does not exist")
    if os.path.isdir(storage):
        raise ValueError(f"--storage {storage!r} is a folder; give a journal file such as {os.path.join(storage, 'studies.db')}")
    # Optuna's default lock, the same one optuna-dashboard uses when it opens the file.
    return JournalStorage(CheckedJournalFileBackend(storage))


def _open_rdb(storage: str) -> RDBStorage:
    try:
        url = make_url(storage)
        shown = url.render_as_string(hide_password=True)
        url.get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ValueError(f"--storage {storage!r} is not a database URL SQLAlchemy knows: {exc}") from None
    except ImportError as exc:
        if url.drivername in ("postgresql", "postgresql+psycopg"):
            raise ValueError(f"--storage {shown}: the PostgreSQL driver is not installed ({exc}); "
                             "pip install -e '.[postgres]'") from None
        raise ValueError(f"--storage {shown}: its database driver is not installed ({exc})") from None
    try:
        with _schema_lock(url), warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats: experimental since Optuna 2.9
            return RDBStorage(storage, heartbeat_interval=HEARTBEAT_INTERVAL_S, grace_period=HEARTBEAT_GRACE_S)
    except OperationalError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise ValueError(f"--storage {shown}: cannot connect: {reason}") from None


@contextmanager
def _schema_lock(url: URL) -> Iterator[None]:
    """On PostgreSQL, one process at a time opens the storage: `RDBStorage` creates Optuna's tables in an
    empty database, and workers starting together would race there (``UniqueViolation`` on
    ``alembic_version``)."""
    with advisory_lock(url, SCHEMA_LOCK_KEY):
        yield


@contextmanager
def advisory_lock(url: str | URL, key: int) -> Iterator[None]:
    """A PostgreSQL session-level advisory lock on ``key`` (a no-op on other databases): one holder
    across every machine using the database, released when its connection closes, even if the
    process is killed."""
    url = make_url(url) if isinstance(url, str) else url
    if url.get_backend_name() != "postgresql":
        yield
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        engine.dispose()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def mark_worker(trial: optuna.Trial) -> None:
    """Record which process runs ``trial`` so a later run can tell an orphan from a live trial."""
    trial.storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, worker_id())


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials whose worker is gone as FAIL; return their numbers.

    A journal file has no heartbeat: a worker killed mid-trial would leave its trial RUNNING
    forever, so trials whose worker process on this host is dead are failed here; trials of live
    processes, or of other hosts, are left alone. On RDB storages, trials whose heartbeat is stale
    (a worker died on any host) are failed too, by Optuna's `fail_stale_trials`. A failed trial
    counts toward the study's total and is never rerun, so no trial is counted twice.
    """
    failed = _fail_stale(study)
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(trial.system_attrs.get(WORKER_ATTR, ""))
        owner_host, _, pid = owner.rpartition(":")
        if owner_host != host or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        study._storage.set_trial_system_attr(trial._trial_id, "fail_reason", f"worker {owner} died")
        if study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            failed.append(trial.number)
    return failed


def heartbeat_interval(storage: BaseStorage) -> int | None:
    """Seconds between heartbeats when ``storage`` keeps them (RDB, also behind Optuna's cache), else None."""
    interval = getattr(storage, "get_heartbeat_interval", None)  # Optuna does not export BaseHeartbeat
    return interval() if interval is not None else None


def _fail_stale(study: optuna.Study) -> list[int]:
    if not heartbeat_interval(study._storage):
        return []
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in running]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

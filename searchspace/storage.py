"""Optuna storage for studies: a journal file by default, an RDB URL for several machines.

``studies.db`` is an Optuna journal file (`JournalFileBackend`): what ``optuna-dashboard studies.db``
opens as a bare path, and what several worker processes on one machine can append to safely.
An RDB URL (``postgresql://...``) serves workers on several machines; it gets Optuna's heartbeat,
so the trial of a worker that died anywhere is failed once its heartbeat is stale.
"""

from __future__ import annotations

import os
import socket
import warnings

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

WORKER_ATTR = "worker"  # system attribute "host:pid" of the process running a trial
HEARTBEAT_INTERVAL_S = 60  # RDB storages: a running trial's worker writes a heartbeat this often
HEARTBEAT_GRACE_S = 180  # ... and its trial is failed once the last heartbeat is this old


def open_storage(storage: str) -> BaseStorage:
    """A journal file for a plain path; an `RDBStorage` with heartbeats for ``sqlite://``/``postgresql://`` URLs."""
    if "://" in storage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats: experimental since Optuna 2.9
            return RDBStorage(storage, heartbeat_interval=HEARTBEAT_INTERVAL_S, grace_period=HEARTBEAT_GRACE_S)
    directory = os.path.dirname(os.path.abspath(storage))
    if not os.path.isdir(directory):
        raise ValueError(f"--storage {storage!r}: directory {directory!r} does not exist")
    # Optuna's default lock, the same one optuna-dashboard uses when it opens the file.
    return JournalStorage(JournalFileBackend(storage))


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

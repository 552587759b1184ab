"""Optuna storage for studies: a journal file by default, an RDB URL for several machines.

``studies.db`` is an Optuna journal file (`JournalFileBackend`): what ``optuna-dashboard studies.db``
opens as a bare path, and what several worker processes on one machine can append to safely.
"""

from __future__ import annotations

import os
import socket

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

WORKER_ATTR = "worker"  # system attribute "host:pid" of the process running a trial


def open_storage(storage: str) -> BaseStorage | str:
    """A journal file for a plain path, the URL itself for ``sqlite://``/``postgresql://``/... URLs."""
    if "://" in storage:
        return storage
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
    """Mark RUNNING trials whose worker process on this host is gone as FAIL; return their numbers.

    A journal file has no heartbeat: a worker killed mid-trial would leave its trial RUNNING
    forever. Trials of live processes, or of other hosts, are left alone (RDB storages use
    Optuna's heartbeat for those).
    """
    failed = []
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""The study's trial total, respected by every worker that shares the study.

``--trials N`` is the study's total (every trial, in any state, counts: a FAIL is a finished
trial too). Several workers (``search.py`` processes, or a Ray Tune driver) ask for trials from one
study; a count-then-ask check in each of them would race at the end and add up to one extra trial
per worker. `BoundedStudy.ask` does the check and the ask under one lock, so the total is exact:
trial numbers 0..N-1, none created beyond. The lock is a file beside the journal file (or the
``sqlite:///`` file); on PostgreSQL, whose workers may be on several machines, it is an advisory
lock in the database itself, keyed by the study name (`searchspace.storage.advisory_lock`).
Other server databases (MySQL) have neither: there the last few asks can race, at most
``workers - 1`` extra trials, never a lost or duplicated one.

A trial lost to Ctrl-C or to a dead worker is re-run when the study resumes
(`requeue_lost_trials`: the same parameters, enqueued, with ``retry_of`` naming the lost one); the
lost trial then no longer counts toward N, its re-run does.

interpretation: Optuna's own `MaxTrialsCallback` counts after a trial ends and has the same race;
enqueued (WAITING) trials are popped before new ones are created and count toward N.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

RETRY_ATTR = "retry_of"  # user attribute of a re-run: the number of the lost trial it replaces
LOST_REASONS = ("interrupted", "worker ")  # fail_reason prefixes of trials that did not fail by themselves


def _retried(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    return {int(t.user_attrs[RETRY_ATTR]) for t in trials if RETRY_ATTR in t.user_attrs}


def counted_trials(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Trials that count toward the total: all but the lost ones that have a re-run."""
    retried = _retried(trials)
    return sum(1 for t in trials if not (t.state == TrialState.FAIL and t.number in retried))


def requeue_lost_trials(study: optuna.Study, carry: tuple[str, ...] = ("baseline",)) -> list[int]:
    """Enqueue a re-run of every interrupted or worker-lost trial not re-run yet; their numbers.

    The re-run gets the lost trial's parameters and its ``carry`` user attributes (the baseline's
    name), so a baseline or a sampled architecture is trained exactly as it would have been.
    """
    trials = study.get_trials(deepcopy=False)
    retried, requeued = _retried(trials), []
    for t in trials:
        reason = str(t.system_attrs.get("fail_reason", ""))
        if t.state != TrialState.FAIL or t.number in retried or not reason.startswith(LOST_REASONS):
            continue
        attrs = {k: t.user_attrs[k] for k in carry if k in t.user_attrs}
        study.enqueue_trial(dict(t.params), user_attrs={**attrs, RETRY_ATTR: t.number}, skip_if_exists=False)
        requeued.append(t.number)
    return requeued


class StudyFull(Exception):
    """The study already holds its total number of trials and none is waiting to run."""


def ask_lock_path(storage: str) -> str | None:
    """The lock file that serialises asks for ``storage``; None for server databases."""
    if storage.startswith("sqlite:///"):
        return storage.removeprefix("sqlite:///") + ".ask.lock"
    if "://" in storage:
        return None
    return storage + ".ask.lock"


@contextmanager
def _file_lock(path: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class BoundedStudy(optuna.Study):
    """An `optuna.Study` whose `ask` raises `StudyFull` instead of creating trial number ``total``.

    `optuna.Study.optimize` asks through this method, so it stops there too (`StudyFull` ends the
    optimize call; catch it).
    """

    def __init__(self, study: optuna.Study, total: int, lock_path: str | None, database_url: str | None = None) -> None:
        if total < 1:
            raise ValueError(f"the study total must be >= 1 trial, got {total}")
        super().__init__(study.study_name, study._storage, sampler=study.sampler, pruner=study.pruner)
        self.total = total
        self.lock_path = lock_path
        self.database_url = database_url

    def locked(self) -> Any:
        """The ask lock: a file lock, a PostgreSQL advisory lock, or (other servers) none."""
        if self.lock_path:
            return _file_lock(self.lock_path)
        if self.database_url:
            from searchspace.storage import advisory_lock

            key = int.from_bytes(hashlib.sha256(f"repnas-ask:{self.study_name}".encode()).digest()[:7], "big")
            return advisory_lock(self.database_url, key)
        return nullcontext()

    def ask(self, fixed_distributions: dict[str, BaseDistribution] | None = None) -> optuna.Trial:
        with self.locked():
            trials = self.get_trials(deepcopy=False)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if counted_trials(trials) >= self.total and not waiting:
                raise StudyFull(f"study {self.study_name!r} holds its {self.total} trials")
            with warnings.catch_warnings():
                # ask/tell drivers (the Ray backend) run their own heartbeat thread
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                return super().ask(fixed_distributions)

    def remaining(self) -> int:
        """Trials still to be created or run: free slots plus WAITING (enqueued) trials."""
        trials = self.get_trials(deepcopy=False)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        return max(0, self.total - counted_trials(trials)) + waiting

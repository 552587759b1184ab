"""PostgreSQL storage for real: three `search.py` workers on one study, one SIGKILLed mid-trial.

Needs a server: ``$REPNAS_TEST_POSTGRES`` (``postgresql+psycopg://user@host:port/db``), which
``.ci/run`` starts best-effort (``.ci/postgres``); skipped with its reason where it is unset or the
server cannot be reached.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from dscnn.train import TrainConfig
from searchspace import run_search
from searchspace.storage import WORKER_ATTR, open_storage
from tests.searchspace.test_workers import _spawn, _wait_ready
from tests.searchspace.tiny import load_study, tiny_search_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty database on the server at ``$REPNAS_TEST_POSTGRES`` (that one itself without CREATEDB)."""
    url = os.environ.get("REPNAS_TEST_POSTGRES")
    if not url:
        pytest.skip("REPNAS_TEST_POSTGRES is not set (.ci/run starts a PostgreSQL server where it can)")
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
        with engine.connect():
            pass
    except Exception as exc:  # no driver, no server, bad credentials: a skip, with the reason
        pytest.skip(f"PostgreSQL at REPNAS_TEST_POSTGRES unreachable: {str(exc).splitlines()[0]}")
    name = f"repnas_test_{uuid.uuid4().hex[:8]}"
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except sqlalchemy.exc.SQLAlchemyError:  # no CREATEDB: share the given database (its tables may exist already)
        engine.dispose()
        yield url
        return
    try:
        yield sqlalchemy.engine.make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        engine.dispose()


def test_three_workers_one_killed_mid_trial(tmp_path: Path, postgres_url: str) -> None:
    total = 6
    # an empty database: the three workers create Optuna's tables together. The first trial is a feasible
    # baseline trained for a few epochs: some worker is inside a training to kill
    config = tiny_search_config(
        tmp_path, study_name=f"pg-{uuid.uuid4().hex[:8]}", trials=total, storage=postgres_url,
        baselines=("fasternet_t0_w0.5",), train=TrainConfig(epochs=4, batch_size=20),
    )
    start = tmp_path / "start"
    workers = [_spawn(config, start) for _ in range(3)]
    try:
        victim, killed = _kill_a_training_worker(config.study_name, postgres_url, workers, start)
        for w in workers:
            if w is not victim:
                out, _ = w.communicate(timeout=300)
                assert w.returncode == 0, out.decode()[-3000:]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()

    result = run_search(config, show_progress=False)  # fails the dead worker's trial (by its pid) and stops: study full
    trials = load_study(config).trials
    assert [t.number for t in trials] == list(range(len(trials)))  # none lost, none doubled
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}  # a lost trial's re-run replaces it
    # asks hold a PostgreSQL advisory lock, so the total is exact across machines too
    assert len([t for t in trials if t.number not in retried]) == total
    assert result.finished_trials == len(trials)
    assert trials[killed.number].state == TrialState.FAIL
    assert trials[killed.number].system_attrs["fail_reason"] == f"worker {killed.system_attrs[WORKER_ATTR]} died"
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials if t.number != killed.number)
    survivors = {str(w.pid) for w in workers if w is not victim}
    assert {t.system_attrs[WORKER_ATTR].rpartition(":")[2] for t in trials} & survivors  # the others went on


def _kill_a_training_worker(
    study_name: str, url: str, workers: list[subprocess.Popen[bytes]], start: Path,
) -> tuple[subprocess.Popen[bytes], FrozenTrial]:
    """Start the workers together; once a trial is training, SIGKILL the worker running it."""
    _wait_ready(workers, start, timeout_s=300)  # three processes importing torch on a shared 2-core machine
    start.touch()
    storage = open_storage(url)
    deadline = time.monotonic() + 300
    while True:
        assert all(w.poll() is None for w in workers), [w.communicate()[0].decode()[-2000:] for w in workers]
        assert time.monotonic() < deadline, "no trial started training"
        try:
            running = optuna.load_study(study_name=study_name, storage=storage).get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # study not created yet
            running = []
        training = [t for t in running if "trained_by" in t.user_attrs]
        if training:
            break
        time.sleep(0.05)
    victim = next(w for w in workers if training[0].system_attrs[WORKER_ATTR].endswith(f":{w.pid}"))
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    return victim, training[0]


def test_postgres_url_without_the_driver_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    with pytest.raises(ValueError) as err:
        open_storage("postgresql://repnas:secret@127.0.0.1:5432/repnas")
    message = str(err.value)
    assert "\n" not in message and "secret" not in message
    assert message.endswith("pip install -e '.[postgres]'")

"""Several plain Optuna workers on one journal storage: an exact total, no lost or doubled trial, resume after SIGKILL."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from dscnn.train import TrainConfig
from searchspace import SearchConfig, run_search
from searchspace.quota import BoundedStudy, StudyFull, ask_lock_path
from searchspace.run import join_study, make_sampler, open_study, worker_sampler_seed
from searchspace.storage import HEARTBEAT_INTERVAL_S, WORKER_ATTR, fail_orphaned_trials, open_storage
from tests.searchspace.tiny import load_study, tiny_search_config

optuna.logging.set_verbosity(optuna.logging.WARNING)

# A worker process: signals it is ready (imports done), waits for the start file, runs the search.
WORKER = """
import os, pickle, sys, time
from pathlib import Path
from searchspace.run import run_search
config = pickle.loads(bytes.fromhex(sys.argv[1]))
start = Path(sys.argv[2])
Path(f"{start}.ready.{os.getpid()}").touch()
while not start.exists():
    time.sleep(0.02)
run_search(config, show_progress=False)
"""


def _config(tmp_path: Path, **overrides: object) -> SearchConfig:
    return tiny_search_config(tmp_path, **{"study_name": "w", "trials": 4, **overrides})  # type: ignore[arg-type]


def _spawn(config: SearchConfig, start: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two workers share two cores
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, pickle.dumps(config).hex(), str(start)], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def _wait_ready(workers: list[subprocess.Popen[bytes]], start: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(Path(f"{start}.ready.{w.pid}").exists() for w in workers):
        assert all(w.poll() is None for w in workers), [w.communicate()[0].decode()[-2000:] for w in workers]
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.05)


def _study(config: SearchConfig) -> optuna.Study:
    return load_study(config)


def test_two_workers_share_one_study_exactly(tmp_path: Path) -> None:
    config = _config(tmp_path)
    start = tmp_path / "start"
    workers = [_spawn(config, start) for _ in range(2)]
    _wait_ready(workers, start)
    start.touch()  # both begin together, so they race for every trial, the last ones included
    for w in workers:
        out, _ = w.communicate(timeout=240)
        assert w.returncode == 0, out.decode()[-3000:]
    trials = _study(config).trials
    assert [t.number for t in trials] == list(range(config.trials))  # none lost, none beyond the total
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}  # each finished once
    owners = {t.system_attrs[WORKER_ATTR].rpartition(":")[2] for t in trials}
    assert owners == {str(w.pid) for w in workers}  # both workers ran trials of the one study
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert Path(t.user_attrs["checkpoint"]).name == f"trial_{t.number:04d}.pt"
            assert (Path(config.out_dir) / t.user_attrs["checkpoint"]).is_file()  # recorded relative to --out


def test_killed_worker_leaves_a_study_that_resumes(tmp_path: Path) -> None:
    # the first trial is a feasible baseline, trained for a few epochs: the kill lands inside it
    config = _config(tmp_path, trials=3, baselines=("fasternet_t0_w0.5",), train=TrainConfig(epochs=4, batch_size=20))
    start = tmp_path / "start"
    worker = _spawn(config, start)
    _wait_ready([worker], start)
    start.touch()
    storage = open_storage(config.storage)
    deadline = time.monotonic() + 120
    while True:  # wait until the worker is inside a trial
        assert worker.poll() is None, worker.communicate()[0].decode()[-3000:]
        assert time.monotonic() < deadline, "no trial started"
        try:
            running = optuna.load_study(study_name="w", storage=storage).get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # study not created yet
            running = []
        if running and "trained_by" in running[0].user_attrs:
            break
        time.sleep(0.05)
    killed = running[0].number
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    assert _study(config).trials[killed].state == TrialState.RUNNING  # a dead worker's trial stays RUNNING ...

    result = run_search(config, show_progress=False)  # ... until the next run fails it, re-runs it and resumes
    trials = _study(config).trials
    assert [t.number for t in trials] == [0, 1, 2, 3] and result.finished_trials == 4  # 3 counted + the lost one
    assert trials[killed].state == TrialState.FAIL
    assert trials[killed].system_attrs["fail_reason"] == f"worker {trials[killed].system_attrs[WORKER_ATTR]} died"
    (rerun,) = [t for t in trials if "retry_of" in t.user_attrs]  # the lost baseline, trained again (#16 item 4)
    assert rerun.user_attrs["retry_of"] == killed and rerun.user_attrs["baseline"] == trials[killed].user_attrs["baseline"]
    assert rerun.state == TrialState.COMPLETE
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials if t.number != killed)


def test_bounded_study_never_creates_beyond_its_total(tmp_path: Path) -> None:
    storage = str(tmp_path / "s.db")
    base = optuna.create_study(study_name="q", storage=open_storage(storage))
    base.enqueue_trial({"x": 1.0})
    study = BoundedStudy(base, total=2, lock_path=ask_lock_path(storage))
    assert study.remaining() == 2  # one free slot + one waiting trial
    first = study.ask()
    assert first.suggest_float("x", 0, 5) == 1.0  # waiting trials are popped first and count toward the total
    study.tell(first, 1.0)
    second = study.ask()
    study.tell(second, 2.0)
    with pytest.raises(StudyFull):
        study.ask()
    assert len(base.trials) == 2
    base.enqueue_trial({"x": 3.0})  # a waiting trial beyond the total (e.g. a dead worker's) still runs
    third = study.ask()
    assert third.suggest_float("x", 0, 5) == 3.0 and study.remaining() == 0
    assert ask_lock_path("postgresql://h/db") is None and ask_lock_path("sqlite:///a/b.db") == "a/b.db.ask.lock"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # this test asks outside optimize on purpose
def test_rdb_storage_fails_trials_whose_heartbeat_stopped(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.sqlite'}"
    assert open_storage(url).get_heartbeat_interval() == HEARTBEAT_INTERVAL_S  # URLs get Optuna's heartbeat
    storage = RDBStorage(url, heartbeat_interval=1, grace_period=1)  # short, for the test
    study = optuna.create_study(study_name="h", storage=storage)
    silent, beating, _never_beating = study.ask(), study.ask(), study.ask()
    storage.record_heartbeat(silent._trial_id)  # a worker on another machine that then died
    time.sleep(2.2)
    storage.record_heartbeat(beating._trial_id)
    assert fail_orphaned_trials(study) == [silent.number]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING]


def test_each_worker_joining_a_study_samples_with_its_own_seed(tmp_path: Path) -> None:
    """Workers started together used to seed their samplers alike and propose the same startup
    architectures, which only ended as pruned duplicates. The first worker keeps the study's seed."""
    config = _config(tmp_path, trials=6)
    first, second = open_study(config), open_study(config)
    assert join_study(first, config) == 0 and join_study(second, config) == 1
    space: dict[str, optuna.distributions.BaseDistribution] = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    x_first, x_second = first.ask(space).params["x"], second.ask(space).params["x"]
    alone = optuna.create_study(sampler=make_sampler(config, config.seed)).ask(space).params["x"]
    assert x_first == alone  # a one-worker study is reproducible from its seed
    assert x_second != x_first
    assert len({worker_sampler_seed(config.seed, k) for k in range(5)}) == 5

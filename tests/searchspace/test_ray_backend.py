"""The Ray Tune backend: trials end to end on a local Ray, and correct Optuna states for every ending."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import ray
from optuna.trial import TrialState
from optuna_dashboard._storage_url import guess_storage_from_url
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

import search
from dscnn.data import ImageDataset
from dscnn.train import TrainConfig
from searchspace import RayConfig, SearchConfig
from searchspace.objective import ObjectiveSettings, SearchObjective, TrialCost
from searchspace.quota import BoundedStudy, ask_lock_path
from searchspace.ray_backend import FINISHED_KEY, METRIC, StudySearcher, run_ray_search
from searchspace.storage import open_storage, worker_id
from tests.searchspace.tiny import load_study, tiny_search_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # once: Ray starts slowly on 2 cores
    yield
    ray.shutdown()


def _config(tmp_path: Path, **overrides: object) -> SearchConfig:
    return tiny_search_config(tmp_path, **{"study_name": "r", "trials": 3, **overrides})  # type: ignore[arg-type]


def _study(config: SearchConfig) -> optuna.Study:
    return load_study(config)


def test_ray_runs_tiny_trials_end_to_end(local_ray: None, tmp_path: Path) -> None:
    config = _config(tmp_path, baselines=("fasternet_t0_w0.5",))  # the baseline fits the budget: one trial trains
    result = run_ray_search(config, RayConfig(concurrency=2), show_progress=False)
    trials = _study(config).trials
    assert [t.number for t in trials] == [0, 1, 2] and result.finished_trials == 3
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    driver = worker_id()
    for t in trials:  # every latency was measured in the driver, before the trial could train anywhere
        assert t.user_attrs["measured_by"] == driver and t.user_attrs["latency_ms"] > 0
        if not t.user_attrs["feasible"]:
            assert t.state == TrialState.PRUNED and "trained_by" not in t.user_attrs  # never launched
    baseline = trials[0]
    assert baseline.state == TrialState.COMPLETE and baseline.user_attrs["baseline"] == "fasternet_t0_w0.5"
    assert baseline.user_attrs["trained_by"] not in ("", driver)  # trained in a Ray worker process
    assert baseline.value == baseline.user_attrs["accuracy"] == baseline.intermediate_values[0]
    assert baseline.user_attrs["checkpoint"] == "trials/trial_0000.pt"  # relative to --out (#16 item 6)
    assert (Path(config.out_dir) / baseline.user_attrs["checkpoint"]).is_file()
    assert result.trained_trials == sum("trained_by" in t.user_attrs for t in trials)
    out = Path(config.out_dir)
    best = max(t.value for t in trials if t.state == TrialState.COMPLETE)
    assert json.loads((out / "best.json").read_text())["accuracy"] == best
    for name in ("best.pt", "best_deploy.pt", "pareto.png"):
        assert (out / name).stat().st_size > 0, name
    summaries = optuna.get_all_study_summaries(guess_storage_from_url(config.storage))  # what optuna-dashboard opens
    assert [s.study_name for s in summaries] == ["r"]


def test_asha_stopped_trial_is_pruned_not_complete(local_ray: None, tmp_path: Path) -> None:
    # fixed accuracy curves, trained one trial at a time: ASHA (rung at epoch 1, keep the best half)
    # must stop the second trial, whose epoch-1 accuracy is below the first's
    curves = [[0.5, 0.6], [0.1, 0.2], [0.9, 0.95]]
    order = tmp_path / "order"

    def fake_train(model: Any, data: ImageDataset, train: TrainConfig, on_epoch: Callable[[int, float], None]) -> float:
        with open(order, "a") as f:
            f.write("trial\n")
        curve = curves[len(order.read_text().splitlines()) - 1]
        for epoch, accuracy in enumerate(curve):
            on_epoch(epoch, accuracy)
        return curve[-1]

    # one small architecture three times (timed once: the cache answers the repeats)
    config = _config(tmp_path, baselines=("fasternet_t0_w0.5",) * 3, train=TrainConfig(epochs=2, batch_size=20))
    ray_config = RayConfig(concurrency=1, grace_period=1, reduction_factor=2)
    run_ray_search(config, ray_config, show_progress=False, train_model=fake_train)
    trials = _study(config).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    stopped = trials[1]
    assert stopped.intermediate_values == {0: 0.1}  # its truncated curve is kept, as intermediate values
    assert "accuracy" not in stopped.user_attrs and "checkpoint" not in stopped.user_attrs
    assert [t.value for t in (trials[0], trials[2])] == [0.6, 0.95]
    assert trials[2].intermediate_values == {0: 0.9, 1: 0.95}


def test_trial_whose_worker_dies_is_retried_as_the_same_trial(local_ray: None, tmp_path: Path) -> None:
    killed = tmp_path / "killed"

    def dying_train(model: Any, data: ImageDataset, train: TrainConfig, on_epoch: Callable[[int, float], None]) -> float:
        if not killed.exists():  # first attempt: the worker process dies mid-training
            killed.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return 0.5

    config = _config(tmp_path, trials=1, baselines=("fasternet_t0_w0.5",))
    result = run_ray_search(config, RayConfig(max_failures=1), show_progress=False, train_model=dying_train)
    (trial,) = _study(config).trials  # one Optuna trial, not one per attempt
    assert trial.state == TrialState.COMPLETE and trial.value == 0.5 and result.trained_trials == 1
    assert trial.user_attrs["trained_by"].rpartition(":")[2] != killed.read_text()  # the retry, in a new process


def _searcher(
    tmp_path: Path, latency_ms: float, budget_ms: float, total: int = 3, pareto: bool = False
) -> StudySearcher:
    tmp_path.mkdir(exist_ok=True)
    storage = str(tmp_path / "s.db")
    directions = ["maximize", "minimize"] if pareto else ["maximize"]
    base = optuna.create_study(study_name="s", storage=open_storage(storage), directions=directions)
    settings = ObjectiveSettings(
        space="dscnn", num_classes=10, resolution=32, budget_ms=budget_ms, budget_macs=None, pareto=pareto,
        epochs=2, checkpoint_dir=tmp_path,
    )
    cost = TrialCost(latency_ms=latency_ms, latency_spread_ms=0.0, macs=1, params_train=1, params_deploy=1, device="cpu")
    objective = SearchObjective(settings, lambda model: cost, lambda model, on_epoch: 0.0)
    return StudySearcher(BoundedStudy(base, total, ask_lock_path(storage)), objective)


def test_over_budget_trials_are_pruned_in_the_driver_and_never_launched(tmp_path: Path) -> None:
    searcher = _searcher(tmp_path, latency_ms=5.0, budget_ms=1.0)
    assert searcher.suggest("a") == Searcher.FINISHED  # all 3 trials of the total were over budget
    trials = searcher.study.trials
    assert [t.state for t in trials] == [TrialState.PRUNED] * 3 and searcher.launched == 0
    assert all(t.constraints == {"latency_ms": 4.0} and t.user_attrs["feasible"] is False for t in trials)


def test_each_ending_gets_its_own_state(tmp_path: Path) -> None:
    searcher = _searcher(tmp_path, latency_ms=1.0, budget_ms=2.0)
    configs = {tid: searcher.suggest(tid) for tid in ("done", "stopped", "crashed")}
    assert all(isinstance(c, dict) for c in configs.values()) and searcher.suggest("more") == Searcher.FINISHED
    for tid in configs:
        searcher.on_trial_result(tid, {METRIC: 0.3, "training_iteration": 1})
    searcher.on_trial_complete("done", {METRIC: 0.4, "training_iteration": 2, FINISHED_KEY: True})
    searcher.on_trial_complete("stopped", {METRIC: 0.3, "training_iteration": 1})  # what ASHA's stop delivers
    searcher.on_trial_complete("crashed", None, error=True)
    done, stopped, crashed = searcher.study.trials
    assert done.state == TrialState.COMPLETE and done.value == 0.4 and done.intermediate_values == {0: 0.3, 1: 0.4}
    assert stopped.state == TrialState.PRUNED and stopped.intermediate_values == {0: 0.3}
    assert "accuracy" not in stopped.user_attrs
    assert crashed.state == TrialState.FAIL and "fail_reason" in crashed.user_attrs
    assert all(t.constraints == {"latency_ms": -1.0} for t in (done, stopped, crashed))


def test_pareto_study_gets_penalty_and_latency_values(tmp_path: Path) -> None:
    over = _searcher(tmp_path / "over", latency_ms=5.0, budget_ms=1.0, total=1, pareto=True)
    assert over.suggest("a") == Searcher.FINISHED
    (penalised,) = over.study.trials  # NSGA-II ignores pruned trials: completed with the penalty instead
    assert penalised.state == TrialState.COMPLETE and penalised.values == [0.0, 5.0]
    fits = _searcher(tmp_path / "fits", latency_ms=1.0, budget_ms=2.0, total=1, pareto=True)
    assert isinstance(fits.suggest("b"), dict)
    fits.on_trial_result("b", {METRIC: 0.3, "training_iteration": 1})  # no intermediate values in Pareto studies
    fits.on_trial_complete("b", {METRIC: 0.4, "training_iteration": 2, FINISHED_KEY: True})
    (trained,) = fits.study.trials
    assert trained.values == [0.4, 1.0] and trained.intermediate_values == {}


def test_ray_optuna_search_still_records_a_stopped_trial_as_complete() -> None:
    """The gap of the pinned ray[tune]==2.60.0 that StudySearcher closes (fails once Ray fixes it)."""
    search = OptunaSearch(space=lambda t: {"x": t.suggest_float("x", 0, 1)}, metric=METRIC, mode="max", seed=0)
    search.suggest("t")
    search.on_trial_result("t", {METRIC: 0.3, "training_iteration": 1})
    search.on_trial_complete("t", {METRIC: 0.3, "training_iteration": 1})  # stopped by ASHA after epoch 1
    (trial,) = search._ot_study.trials
    assert trial.state == TrialState.COMPLETE and trial.value == 0.3
    assert isinstance(search._ot_study.pruner, optuna.pruners.NopPruner)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--concurrency", "2"], "--concurrency needs --backend ray"),
        (["--backend", "ray", "--concurrency", "0"], "concurrency must be >= 1"),
        (["--backend", "ray", "--device", "cpu", "--gpus-per-trial", "-1"], "gpus_per_trial must be >= 0"),
    ],
)
def test_bad_ray_flags_are_rejected_clearly(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        search.parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_ray_flags_reach_the_ray_config() -> None:
    argv = ["--backend", "ray", "--device", "cpu", "--ray-address", "auto", "--cpus-per-trial", "2", "--concurrency", "4"]
    config, ray_config = search.parse_args(argv)
    assert ray_config == RayConfig(address="auto", cpus_per_trial=2.0, concurrency=4)
    assert search.parse_args(["--device", "cpu"])[1] is None  # the default backend: plain Optuna

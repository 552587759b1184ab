"""The search on a Ray Tune cluster: same space, same cost-first objective, same study and outputs.

``python search.py --backend ray [--ray-address auto|HOST:PORT] ...`` trains trials as Ray Tune
trials under an ASHA scheduler fed by the per-epoch validation accuracy, while the Optuna study in
``--storage`` stays the single record of the search (``optuna-dashboard studies.db`` shows Ray
runs like any other).

Ray Tune 2.60's `OptunaSearch` (with Optuna 5) keeps its own study with three gaps: its pruner is
forced to `NopPruner`, a trial stopped early by ASHA is told as COMPLETE with its truncated score,
and constraints cannot be passed. `StudySearcher` closes them by driving our study itself with
ask/tell instead of wrapping `OptunaSearch`:

* ``suggest`` asks the study (the same define-by-run `searchspace.space.sample`), runs the shared
  cost-first step (`SearchObjective.cost_step`: deploy latency measured in the driver under the
  device lock, MACs, constraints via `Trial.set_constraint`, user attributes) and tells an
  over-budget trial PRUNED (Pareto: the penalty) without ever launching it;
* every reported epoch becomes an intermediate value, and `StudyPrunerASHA` stops a trial when
  either ASHA or the study's own Optuna pruner says so;
* a trial is COMPLETE only when its trainable reported the end of training (``FINISHED_KEY``);
  one stopped by ASHA or the pruner is PRUNED with its truncated curve, a crashed one FAIL.

Latency stays honest under concurrency because it is measured only in the driver, before the
trial is launched, holding the machine's `DeviceLock` exclusively; trials on that machine train
in shared slots that pause between epochs (see `searchspace.device_lock`). The budget is therefore
a latency of the driver's machine: run the driver on the target hardware.

Worker failures: Ray retries a trial whose worker died ``max_failures`` times under the same
Optuna trial (never counted twice), then it is told FAIL; if the driver itself dies, its RUNNING
trials are failed by the next run (`fail_orphaned_trials`; RDB storages also by heartbeat), which
then resumes the study to its total. Pinned: ``ray[tune]==2.60.0`` (the Searcher/Scheduler
hooks and result keys used here).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher
from rich.console import Console
from torch import nn

import dscnn
from dscnn.data import ImageDataset
from dscnn.train import TrainConfig, train_and_evaluate
from searchspace.config import RayConfig, SearchConfig
from searchspace.device_lock import DeviceLock
from searchspace.objective import SearchObjective, trial_seed
from searchspace.quota import BoundedStudy, StudyFull
from searchspace.run import SearchResult, prepare_search, write_outputs
from searchspace.storage import heartbeat_interval, mark_worker, worker_id

METRIC = "accuracy"  # validation accuracy, reported after every epoch
FINISHED_KEY = "repnas_finished"  # present (True) only in the result a trial reports after full training
WORKER_KEY = "repnas_worker"  # "host:pid" of the process that trained the trial
CHECKPOINT_FILE = "model.pt"

#: ``train_model(model, data, train_config, on_epoch) -> final accuracy``; injectable for tests.
RayTrainModel = Callable[[nn.Module, ImageDataset, TrainConfig, Callable[[int, float], None]], float]


def run_ray_search(
    config: SearchConfig, ray_config: RayConfig | None = None, *, console: Console | None = None,
    show_progress: bool = True, train_model: RayTrainModel | None = None,
) -> SearchResult:
    """Run (or resume) the study of ``config`` with Ray Tune trials; write the usual outputs.

    ``ray_config`` defaults to ``config.ray`` (or `RayConfig()` when that is None).
    """
    console = console or Console()
    ray_config = ray_config or config.ray or RayConfig()
    if config.train.device.startswith("cuda") and ray_config.gpus_per_trial <= 0:
        raise ValueError("--device cuda with --backend ray needs --gpus-per-trial > 0 (Ray hides GPUs from trials without)")
    study, data, objective, config = prepare_search(config, console)
    searcher = StudySearcher(study, objective)
    if study.remaining() == 0:
        console.log(f"study {config.study_name!r} already has {config.trials} trials; raise --trials to add more")
        return write_outputs(config, study, 0, console)
    started = not ray.is_initialized()
    if started:
        ray.init(address=ray_config.address, num_cpus=None if ray_config.address else ray_config.num_cpus,
                 include_dashboard=False, log_to_driver=show_progress)
    try:
        with _heartbeats(study, searcher):
            _tuner(config, ray_config, searcher, data, train_model, show_progress).fit()
    finally:
        searcher.fail_unfinished()  # e.g. the driver was interrupted: nothing stays RUNNING
        if started:
            ray.shutdown()
    return write_outputs(config, study, searcher.launched, console)


def _tuner(
    config: SearchConfig, ray_config: RayConfig, searcher: StudySearcher, data: ImageDataset,
    train_model: RayTrainModel | None, show_progress: bool,
) -> tune.Tuner:
    trainable = tune.with_parameters(
        train_trial, data=data, train=config.train, lock_path=config.device_lock, train_model=train_model,
        lock_device=config.latency.device,
    )
    trainable = tune.with_resources(trainable, {"cpu": ray_config.cpus_per_trial, "gpu": ray_config.gpus_per_trial})
    scheduler = StudyPrunerASHA(
        searcher, metric=METRIC, mode="max", time_attr="training_iteration", max_t=config.train.epochs,
        grace_period=min(ray_config.grace_period, config.train.epochs), reduction_factor=ray_config.reduction_factor,
    )
    storage_path = ray_config.storage_path or str((config.out_dir / "ray").resolve())
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=-1,  # the searcher ends the run (study total)
            max_concurrent_trials=ray_config.concurrency, time_budget_s=config.timeout_s,
            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
            reuse_actors=True,  # a worker process imports torch once, not once per trial
        ),
        run_config=tune.RunConfig(
            name=f"{config.study_name}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage_path,
            verbose=1 if show_progress else 0, callbacks=[CheckpointCopier(searcher)],
            failure_config=tune.FailureConfig(max_failures=ray_config.max_failures),
        ),
    )


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.config['optuna_trial']:04d}"  # the Optuna trial number: unique in the study


class StudySearcher(Searcher):
    """A Ray Tune searcher over our Optuna study (ask/tell), with correct trial states."""

    def __init__(self, study: BoundedStudy, objective: SearchObjective) -> None:
        super().__init__(metric=METRIC, mode="max")
        self.study = study
        self.objective = objective
        self.launched = 0  # trials handed to Ray for training
        self.checkpoints: dict[str, str] = {}  # Ray trial id -> checkpoint copied under <out>/trials
        self._trials: dict[str, optuna.Trial] = {}  # live Ray trial id -> its Optuna trial
        self._latency_ms: dict[str, float] = {}
        self._steps: dict[str, int] = {}  # last epoch reported per Ray trial

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]  # Ray returns FINISHED too
        while True:  # over-budget trials are finished here, without ever reaching Ray
            try:
                trial = self.study.ask()
            except StudyFull:
                return Searcher.FINISHED
            mark_worker(trial)
            _record_heartbeat(self.study, trial)
            try:
                step = self.objective.cost_step(trial)
            except BaseException as exc:
                trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:500])
                self.study.tell(trial, state=TrialState.FAIL)
                raise
            if step.feasible:
                break
            try:
                self.study.tell(trial, self.objective.reject(step))
            except optuna.TrialPruned:
                self.study.tell(trial, state=TrialState.PRUNED)
        self._trials[trial_id] = trial
        self._latency_ms[trial_id] = step.cost.latency_ms
        self.launched += 1
        seed = trial_seed(self.objective.settings.seed, trial.number)
        return {"optuna_trial": trial.number, "arch": step.config.to_json(), "params": dict(trial.params), "seed": seed}

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the study in ``--storage`` is the search's state (rerun to resume)."""

    def __getstate__(self) -> dict[str, Any]:
        # Tuner pickles its configuration for Tuner.restore, which this backend does not use; the
        # study (storage locks, open files) is not picklable, so only the metric/mode go along.
        return {"_metric": self._metric, "_mode": self._mode}

    def fail_unfinished(self) -> None:
        """Tell FAIL every trial Ray never reported complete (the run ended abnormally)."""
        for trial_id in list(self._trials):
            self.on_trial_complete(trial_id, None, error=True)

    def trial_number(self, trial_id: str) -> int | None:
        trial = self._trials.get(trial_id)
        return None if trial is None else trial.number

    def live_trial_ids(self) -> list[int]:
        """Optuna trial ids of the trials Ray is running (for heartbeats)."""
        return [t._trial_id for t in list(self._trials.values())]

    def record(self, trial_id: str, result: dict[str, Any]) -> None:
        """Store an epoch's accuracy as the trial's intermediate value (once per epoch)."""
        trial = self._trials.get(trial_id)
        if trial is None or METRIC not in result or self.objective.settings.pareto:
            return  # Optuna 5 cannot store intermediate values of multi-objective trials
        step = int(result["training_iteration"]) - 1  # epoch index, as the Optuna backend reports it
        if step > self._steps.get(trial_id, -1):
            trial.report(float(result[METRIC]), step)
            self._steps[trial_id] = step

    def should_prune(self, trial_id: str, result: dict[str, Any]) -> bool:
        """The study's own pruner (Ray's OptunaSearch forces NopPruner) on this epoch's result."""
        self.record(trial_id, result)
        trial = self._trials.get(trial_id)
        if trial is None or result.get(FINISHED_KEY) or self.objective.settings.pareto:
            return False
        return trial.should_prune()

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.record(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id not in self._trials:
            return
        if result:
            self.record(trial_id, result)
        trial = self._trials.pop(trial_id)
        latency_ms = self._latency_ms.pop(trial_id)
        self._steps.pop(trial_id, None)
        if error:
            trial.set_user_attr("fail_reason", "the Ray trial raised or its worker died (see the Ray trial logs)")
            self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        elif result and result.get(FINISHED_KEY):
            accuracy = float(result[METRIC])
            trial.set_user_attr("accuracy", accuracy)
            trial.set_user_attr("trained_by", str(result.get(WORKER_KEY, "")))
            if trial_id in self.checkpoints:
                trial.set_user_attr("checkpoint", self.checkpoints.pop(trial_id))
            values = (accuracy, latency_ms) if self.objective.settings.pareto else accuracy
            self.study.tell(trial, values, skip_if_finished=True)
        else:  # stopped by ASHA or the pruner: its truncated score is not a result
            self.study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)


class StudyPrunerASHA(ASHAScheduler):
    """ASHA that also stops a trial when the study's Optuna pruner would prune it."""

    def __init__(self, searcher: StudySearcher, **asha: Any) -> None:
        super().__init__(**asha)
        self._searcher = searcher

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.CONTINUE and self._searcher.should_prune(trial.trial_id, result):
            return TrialScheduler.STOP
        return decision


class CheckpointCopier(tune.Callback):
    """Copies each trial's final checkpoint to ``<out>/trials/trial_NNNN.pt`` (before the trial is told)."""

    def __init__(self, searcher: StudySearcher) -> None:
        self._searcher = searcher

    def on_checkpoint(self, iteration: int, trials: list[Any], trial: Any, checkpoint: Any, **info: Any) -> None:
        number = self._searcher.trial_number(trial.trial_id)
        if number is None:
            return
        dest = self._searcher.objective.checkpoint_path(number)
        with checkpoint.as_directory() as folder:
            shutil.copyfile(Path(folder) / CHECKPOINT_FILE, dest)
        out = self._searcher.objective.settings.checkpoint_dir.parent
        self._searcher.checkpoints[trial.trial_id] = dest.relative_to(out).as_posix()  # resolved against --out


def train_trial(
    trial_config: dict[str, Any], *, data: ImageDataset, train: TrainConfig, lock_path: str | None,
    train_model: RayTrainModel | None, lock_device: str = "cpu",
) -> None:
    """The Ray trainable: rebuild the architecture, train it, report every epoch, then the checkpoint.

    Training holds the lock of the device latencies are measured on (``lock_device``), wherever it trains.
    """
    seed = int(trial_config.get("seed", train.seed))
    torch.manual_seed(seed)  # the same initial weights as the driver's cost step built
    train = dataclasses.replace(train, seed=seed)
    model = dscnn.build_model(dscnn.config_from_dict(json.loads(trial_config["arch"])))
    with DeviceLock(lock_path, device=lock_device).training() as slot:
        def on_epoch(epoch: int, accuracy: float) -> None:
            if math.isnan(accuracy):
                raise ValueError("validation accuracy is NaN")
            if epoch + 1 < train.epochs:  # the last epoch is reported below, with the checkpoint
                with slot.paused():  # report() may wait for the driver, which may be measuring
                    tune.report({METRIC: accuracy})

        accuracy = (train_model or _train)(model, data, train, on_epoch)
    with tempfile.TemporaryDirectory() as folder:
        metrics = {"accuracy": accuracy, "trial": trial_config["optuna_trial"]}
        dscnn.save_checkpoint(Path(folder) / CHECKPOINT_FILE, model.cpu(), metrics=metrics)
        tune.report({METRIC: accuracy, FINISHED_KEY: True, WORKER_KEY: worker_id()},
                    checkpoint=tune.Checkpoint.from_directory(folder))


def _train(model: nn.Module, data: ImageDataset, train: TrainConfig, on_epoch: Callable[[int, float], None]) -> float:
    return float(train_and_evaluate(model, data, train, on_epoch=on_epoch).final_accuracy)


def _record_heartbeat(study: optuna.Study, trial: optuna.Trial) -> None:
    if heartbeat_interval(study._storage):
        study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]


@contextmanager
def _heartbeats(study: optuna.Study, searcher: StudySearcher) -> Iterator[None]:
    """On RDB storages, keep the heartbeat of every trial Ray runs alive (ask/tell has no heartbeat thread)."""
    storage: Any = study._storage
    interval = heartbeat_interval(storage)
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            for trial_id in searcher.live_trial_ids():
                storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, name="repnas-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()

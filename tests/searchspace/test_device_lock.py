"""The latency rule under concurrency: a measurement never overlaps training on its machine."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import searchspace.run as run
from searchspace import SearchConfig
from searchspace.device_lock import DeviceLock


def _free(path: Path, mode: int) -> bool:
    """Whether ``mode`` (LOCK_SH / LOCK_EX) could be taken on ``path`` right now."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _wait(event: threading.Event, what: str) -> None:
    assert event.wait(10), what


def test_measurement_waits_for_the_epoch_and_blocks_the_next(tmp_path: Path) -> None:
    lock = DeviceLock(tmp_path / "device.lock")
    log: list[str] = []
    in_epoch, measuring, measured = threading.Event(), threading.Event(), threading.Event()

    def trainer() -> None:
        with lock.training() as slot:
            log.append("epoch 1")
            in_epoch.set()
            _wait(measuring, "no measurement queued")
            time.sleep(0.2)  # the epoch goes on: the measurement must not start yet
            log.append("epoch 1 end")
            with slot.paused():
                pass
            log.append("epoch 2")  # only after the measurement released the device

    def measurer() -> None:
        _wait(in_epoch, "trainer did not start")
        measuring.set()
        with lock.measuring():
            log.append("measure")
            time.sleep(0.2)
            log.append("measure end")
        measured.set()

    threads = [threading.Thread(target=trainer), threading.Thread(target=measurer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert measured.is_set()
    assert log == ["epoch 1", "epoch 1 end", "measure", "measure end", "epoch 2"]


def test_waiting_measurement_is_not_starved_by_new_trainings(tmp_path: Path) -> None:
    lock = DeviceLock(tmp_path / "device.lock")
    log: list[str] = []
    release = threading.Event()

    def measurer() -> None:
        with lock.measuring():
            log.append("measure")
            _wait(release, "test did not release the measurement")

    def late_trainer() -> None:
        with lock.training():
            log.append("late training")

    with lock.training() as first:  # a training holds the device
        measuring = threading.Thread(target=measurer)
        measuring.start()
        time.sleep(0.2)  # the measurer now holds the gate and waits for the device
        assert not _free(lock.gate, fcntl.LOCK_EX) and log == []
        late = threading.Thread(target=late_trainer)
        late.start()
        time.sleep(0.2)
        assert log == []  # compatible with the running training, yet it queues behind the measurement
        first.leave()  # the running training reaches the end of its epoch
        time.sleep(0.2)
        assert log == ["measure"]
    release.set()
    measuring.join(10)
    late.join(10)
    assert log == ["measure", "late training"]


def test_search_objective_measures_exclusively_and_trains_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock_path = tmp_path / "device.lock"
    seen: dict[str, Any] = {}

    def fake_measure(model: Any, settings: Any, cache: Any = None) -> Any:
        seen["measure: training could start"] = _free(lock_path, fcntl.LOCK_SH)
        timing = SimpleNamespace(median_ms=1.0, max_ms=1.0, min_ms=1.0, runtime="eager", runtime_version="",
                                 load=None, busy=False, noisy=False)
        return SimpleNamespace(latency=timing, macs=1, params_train=1, params_deploy=1)

    def fake_train(model: Any, data: Any, config: Any, on_epoch: Any) -> Any:
        seen["train: measurement could start"] = _free(lock_path, fcntl.LOCK_EX)
        on_epoch(0, 0.5)
        return SimpleNamespace(final_accuracy=0.5)

    monkeypatch.setattr(run, "measure_deploy_cost", fake_measure)
    monkeypatch.setattr(run, "train_and_evaluate", fake_train)
    config = dataclasses.replace(SearchConfig(out=str(tmp_path)), device_lock=str(lock_path), cache_path=str(tmp_path / "c"))
    data = SimpleNamespace(num_classes=10, resolution=32)
    data.to = lambda device: data  # already on the (cpu) training device
    objective = run.build_objective(config, data)  # type: ignore[arg-type]
    objective.measure_cost(object())  # type: ignore[arg-type]

    def on_epoch(epoch: int, accuracy: float) -> None:
        seen["between epochs: measurement could start"] = _free(lock_path, fcntl.LOCK_EX)

    assert objective.train_model(object(), on_epoch) == 0.5  # type: ignore[arg-type]
    assert seen == {
        "measure: training could start": False,
        "train: measurement could start": False,
        "between epochs: measurement could start": True,
    }
    assert _free(lock_path, fcntl.LOCK_EX)  # nothing left held


def test_lock_in_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        DeviceLock(tmp_path / "nope" / "device.lock")


def test_a_waiter_is_told_who_holds_the_lock(tmp_path: Path) -> None:
    import getpass
    import os
    import threading

    holder = DeviceLock(tmp_path / "device.lock")
    messages: list[str] = []
    waiter = DeviceLock(tmp_path / "device.lock", on_wait=messages.append)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with holder.measuring():
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait(10)
    threading.Timer(0.3, release.set).start()
    with waiter.training():
        pass
    thread.join()
    assert messages and f"{getpass.getuser()} pid {os.getpid()} (measuring since" in messages[0]
    assert not list((tmp_path / "device.lock.holders").glob("*.json"))  # records leave with their holders
    with DeviceLock(tmp_path / "device.lock", on_wait=messages.append).measuring():
        pass
    assert len(messages) == 1  # a free lock is taken silently


def test_default_locks_are_per_device_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    from searchspace.device_lock import default_lock_path

    monkeypatch.delenv("REPNAS_DEVICE_LOCK", raising=False)
    assert default_lock_path("cpu") != default_lock_path("cuda:0") == default_lock_path("cuda")

"""Honest latency under concurrency: a latency measurement never overlaps training on its machine.

A batch-1 latency taken while another trial trains on the same CPU cores or GPU measures the
contention, not the model, and the budget would then reject (or admit) the wrong architectures.
Trials cannot all be timed on an idle machine before training starts (the sampler proposes each
architecture from the results so far), so the rule is a machine-wide readers-writer lock:

* training holds the lock **shared**, one epoch at a time, and lets go between epochs
  (`TrainingSlot.paused`), so several trials train concurrently;
* a latency measurement holds it **exclusively**: it waits until every training on the machine has
  reached the end of its current epoch, and no training resumes until the timing is done.

Writers are preferred: a measurer first takes the *gate* file, and trainers pass through the gate
before re-taking their shared lock, so a stream of epochs cannot starve a waiting measurement.
The locks are ``flock(2)`` locks on two files (default ``<tmp>/repnas-device.lock`` and
``.gate``; ``$REPNAS_DEVICE_LOCK`` or ``SearchConfig.device_lock`` elsewhere). The kernel drops
them when a process dies, so a killed worker never leaves the machine locked. They cover one
machine; trials training on other machines do not disturb its measurements and are not blocked.

The cost is a wait of at most one epoch per measurement (keep proxy epochs short), paid only
when training runs beside the measurement; a lone worker never waits. A process that has to wait
says so once, naming who holds the lock (user, pid, what, since when: each holder leaves a small
record in ``<lock>.holders/``). The default lock is per device kind (``repnas-device-cpu.lock``,
``repnas-device-cuda.lock``): a GPU search and a CPU search on one machine do not wait for each
other, and trainings never wait for trainings, only for a measurement on their device.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_ENV = "REPNAS_DEVICE_LOCK"


def default_lock_path(device: str = "cpu") -> Path:
    """``$REPNAS_DEVICE_LOCK`` if set, else ``repnas-device-<cpu|cuda>.lock`` in the system temp folder."""
    env = os.environ.get(LOCK_ENV)
    kind = device.split(":")[0]
    return Path(env) if env else Path(tempfile.gettempdir()) / f"repnas-device-{kind}.lock"


Waiting = Callable[[str], None]  # told once, with who holds the lock, before a blocking wait


@contextmanager
def _flock(path: Path, mode: int, on_wait: Waiting | None = None) -> Iterator[None]:
    # A fresh open file description per acquisition: flock locks on separate descriptions of one
    # file conflict even within a process, which keeps threads and processes under the same rule.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _acquire(fd, mode, path, on_wait)
        yield
    finally:
        os.close(fd)  # closing the description releases its lock


def _acquire(fd: int, mode: int, path: Path, on_wait: Waiting | None) -> None:
    if on_wait is None:
        fcntl.flock(fd, mode)
        return
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        on_wait(f"waiting for the device lock {path}: held by {holders_text(path)}")
        fcntl.flock(fd, mode)


def _holders_dir(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".gate") + ".holders")


def holders_text(path: Path) -> str:
    """Who holds the lock now, from the holders' records (dead processes skipped)."""
    found = []
    folder = _holders_dir(path)
    for record in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            info = json.loads(record.read_text())
            os.kill(int(info["pid"]), 0)
        except (OSError, ValueError, KeyError):
            continue
        found.append(f"{info['user']} pid {info['pid']} ({info['what']} since {info['since']})")
    return "; ".join(found) or "another process (no record)"


@contextmanager
def _holder_record(path: Path, what: str) -> Iterator[None]:
    folder = _holders_dir(path)
    record = folder / f"{os.getpid()}-{threading.get_ident()}-{what}.json"
    try:
        folder.mkdir(mode=0o777, exist_ok=True)
        record.write_text(json.dumps({"user": getpass.getuser(), "pid": os.getpid(), "what": what,
                                      "since": time.strftime("%H:%M:%S")}))
    except OSError:
        pass  # the record is for messages only; the lock itself is the flock
    try:
        yield
    finally:
        record.unlink(missing_ok=True)


class DeviceLock:
    """The machine-wide lock shared by latency measurement (exclusive) and training (shared)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, device: str = "cpu",
                 on_wait: Waiting | None = None) -> None:
        self.path = Path(path) if path else default_lock_path(device)
        self.on_wait = on_wait
        if not self.path.parent.is_dir():
            raise ValueError(f"device lock {str(self.path)!r}: directory {str(self.path.parent)!r} does not exist")
        self.gate = self.path.with_name(self.path.name + ".gate")

    @contextmanager
    def measuring(self) -> Iterator[None]:
        """Hold the device alone: waits for running epochs to end and keeps new ones out."""
        with _flock(self.gate, fcntl.LOCK_EX, self.on_wait), _flock(self.path, fcntl.LOCK_EX, self.on_wait):
            with _holder_record(self.path, "measuring"):
                yield

    @contextmanager
    def training(self) -> Iterator[TrainingSlot]:
        """Hold a shared slot for a training run; call `TrainingSlot.paused` between epochs."""
        slot = TrainingSlot(self)
        slot.enter()
        try:
            with _holder_record(self.path, "training"):
                yield slot
        finally:
            slot.leave()


class TrainingSlot:
    """One training run's shared hold on the device lock."""

    def __init__(self, lock: DeviceLock) -> None:
        self._lock = lock
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def enter(self) -> None:
        if self._fd is not None:
            raise RuntimeError("training slot entered twice")
        with _flock(self._lock.gate, fcntl.LOCK_EX, self._lock.on_wait):  # queue behind a waiting measurement
            pass
        fd = os.open(self._lock.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _acquire(fd, fcntl.LOCK_SH, self._lock.path, self._lock.on_wait)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def leave(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Let go of the device (between epochs, or while blocked on a report), then take it back.

        Anything that may wait on a measuring process (e.g. Ray Tune's ``report``, which waits for
        the driver) must run inside ``paused()``, or the two would wait on each other.
        """
        self.leave()
        try:
            yield
        finally:
            self.enter()

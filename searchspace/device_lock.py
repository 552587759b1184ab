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
when training runs beside the measurement; a lone worker never waits.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_ENV = "REPNAS_DEVICE_LOCK"


def default_lock_path() -> Path:
    """``$REPNAS_DEVICE_LOCK`` if set, else ``repnas-device.lock`` in the system temp folder."""
    env = os.environ.get(LOCK_ENV)
    return Path(env) if env else Path(tempfile.gettempdir()) / "repnas-device.lock"


@contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    # A fresh open file description per acquisition: flock locks on separate descriptions of one
    # file conflict even within a process, which keeps threads and processes under the same rule.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing the description releases its lock


class DeviceLock:
    """The machine-wide lock shared by latency measurement (exclusive) and training (shared)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else default_lock_path()
        if not self.path.parent.is_dir():
            raise ValueError(f"device lock {str(self.path)!r}: directory {str(self.path.parent)!r} does not exist")
        self.gate = self.path.with_name(self.path.name + ".gate")

    @contextmanager
    def measuring(self) -> Iterator[None]:
        """Hold the device alone: waits for running epochs to end and keeps new ones out."""
        with _flock(self.gate, fcntl.LOCK_EX), _flock(self.path, fcntl.LOCK_EX):
            yield

    @contextmanager
    def training(self) -> Iterator[TrainingSlot]:
        """Hold a shared slot for a training run; call `TrainingSlot.paused` between epochs."""
        slot = TrainingSlot(self)
        slot.enter()
        try:
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
        with _flock(self._lock.gate, fcntl.LOCK_EX):  # queue behind a waiting measurement
            pass
        fd = os.open(self._lock.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
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

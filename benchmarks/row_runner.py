"""One benchmark row in a child process under a resident-memory cap, so rows cannot pile memory up.

The parent runs a command that writes the row, a JSON object, to a path it is given
(`write_row`), polls the child's RSS every ``RSS_POLL_S`` and kills it past the cap (in GiB,
2**30 bytes). It caps RSS, not RLIMIT_AS: torch reserves address space far beyond what it touches
(about 3.3 GiB of it for 0.65 GiB resident on a tiny resnet20 row) and CUDA's context reserves far
more. A child that dies comes back as a one-line reason instead of a row, so the caller can record
it and go on. The child never outlives `run_in_child`: however the wait ends (an exception, or
SIGTERM under `sigterm_raises`), a child still running is killed and reaped.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

RSS_POLL_S = 0.1  # how often the parent reads the child's RSS


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (2**20 bytes; Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_row(path: str | Path, row: dict[str, Any]) -> None:
    """The child's side: hand ``row`` back to `run_in_child`."""
    Path(path).write_text(json.dumps(row))


def _rss_gib(pid: int) -> float:
    """Resident memory of process ``pid`` in GiB (0 where /proc cannot tell: not Linux, or already gone)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def _watch(proc: subprocess.Popen[bytes], max_rss_gib: float) -> float | None:
    """Wait for ``proc``, killing it once its RSS passes ``max_rss_gib``; the RSS (GiB) it was killed at, or None."""
    while True:
        try:
            proc.wait(timeout=RSS_POLL_S)
            return None
        except subprocess.TimeoutExpired:
            rss_gib = _rss_gib(proc.pid)
        if rss_gib > max_rss_gib:
            proc.kill()
            proc.wait()
            return rss_gib


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within this block SIGTERM raises ``SystemExit(143)`` (main thread only), then the previous handler is back.

    Python's default lets SIGTERM end the process on the spot, skipping ``finally`` blocks, so a
    parent stopped by ``timeout`` or a scheduler would leave its row's child running (and loading
    the CPU after the caller's benchmark lock is released); raised instead, `run_in_child` kills it.
    """
    def handler(signum: int, frame: FrameType | None) -> NoReturn:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:  # None: a handler not installed from Python, which Python cannot put back; the default is closest
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _failure(returncode: int, stderr: str, killed_at_gib: float | None, cap: str) -> str:
    if killed_at_gib is not None:
        return f"killed at {killed_at_gib:.2f} GiB RSS ({cap})"
    if returncode < 0:  # SIGKILL from outside: most likely the kernel's OOM killer
        return f"killed by {signal.Signals(-returncode).name}"
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "no error output")
    return f"exit {returncode}: {last[:300]}" if returncode else "exited without writing its row"


def run_in_child(command: Callable[[Path], Sequence[str]], max_rss_gib: float, *,
                 cap_flag: str = "--max-rss-gb") -> dict[str, Any] | str:
    """Run ``command(row_path)`` and return the row it wrote to ``row_path``, or why it has none.

    Args:
        command: the child's command line, given the path it must write its row to (`write_row`).
        max_rss_gib: the child is killed once its resident memory passes this many GiB (2**30 bytes).
        cap_flag: how the caller's users set the cap, named in the reason when it is hit.

    Returns:
        The row, or a one-line reason: ``killed at X.XX GiB RSS (<cap_flag> N)``, ``killed by SIGKILL``
        (most likely the OOM killer), ``exit N: <last stderr line>`` or ``exited without writing its row``.
    """
    with tempfile.TemporaryDirectory(prefix="row_runner-") as tmp:
        row_file, err_file = Path(tmp) / "row.json", Path(tmp) / "stderr.txt"
        with err_file.open("wb") as err:  # a file, not a pipe: the parent is busy polling, not reading
            proc = subprocess.Popen(list(command(row_file)), stderr=err)
            try:
                killed_at_gib = _watch(proc, max_rss_gib)
            finally:  # the wait ended by an exception (SIGTERM under sigterm_raises, Ctrl-C): no orphan child
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        stderr = err_file.read_text(errors="replace")
        sys.stderr.write(stderr)  # the child's warnings and traceback, not swallowed
        if proc.returncode == 0 and killed_at_gib is None and row_file.is_file():
            row: dict[str, Any] = json.loads(row_file.read_text())
            return row
    return _failure(proc.returncode, stderr, killed_at_gib, f"{cap_flag} {max_rss_gib:g}")

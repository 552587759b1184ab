"""Search progress on the terminal (rich): trial i/N, current phase, best so far, elapsed and ETA."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class SearchProgress:
    """A one-line live display; disabled (a no-op) in tests and when ``enabled`` is False."""

    def __init__(self, total_trials: int = 0, *, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.best: float | None = None
        self._progress = Progress(
            TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not enabled,
        )
        self._task = self._progress.add_task("starting", total=total_trials)

    def __enter__(self) -> SearchProgress:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def phase(self, trial_number: int, phase: str, accuracy: float | None = None) -> None:
        """Show what trial ``trial_number`` is doing now (measure / train epoch e / evaluate)."""
        detail = f" acc {accuracy:.3f}" if accuracy is not None else ""
        best = f" | best {self.best:.3f}" if self.best is not None else ""
        self._progress.update(self._task, description=f"trial {trial_number}: {phase}{detail}{best}")

    def trial_finished(self, finished: int, best: float | None) -> None:
        self.best = best
        self._progress.update(self._task, completed=finished)

    def log(self, message: str) -> None:
        if self.enabled:
            self._progress.console.log(message)

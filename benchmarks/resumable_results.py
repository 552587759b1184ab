"""A grid benchmark's rows in one JSON document that survives a stopped run and can be resumed.

The document is rewritten atomically after every row (a kill mid-write leaves the previous file
whole), so a run stopped by a timeout or a crash keeps what it measured. Resuming keeps the rows of
the earlier file whose key fields match a grid point and that did not fail, keeps rows outside the
grid too, and records the earlier runs' provenance under ``earlier_runs``. Every row added gets
its run's index under ``run``: 0 for the first run, ``earlier_runs[i]`` for run ``i`` and the
top-level fields for the latest, so a table that mixes runs says where each row came from. Resuming
can also refuse a file made elsewhere (another machine, library or commit: ``same``). A row with a
``failed`` key is a failure: measured again on resume, and the document is ``complete`` only
without any.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dscnn.checkpoint import write_text_atomic


class ResumeMismatch(ValueError):
    """The file to resume does not fit this run (a one-line message)."""


class ProvenanceMismatch(ResumeMismatch):
    """The file to resume was made on another machine, library or commit (``same``); a caller may allow that."""


def _field(doc: Mapping[str, Any], dotted: str) -> Any:
    """``doc["a"]["b"]`` for ``"a.b"``; None where a level is missing or not an object."""
    value: Any = doc
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _check_same(path: Path, doc: Mapping[str, Any], same: Mapping[str, Any]) -> None:
    for name, value in same.items():
        earlier = _field(doc, name)
        if earlier != value:  # a file from before the field was recorded (None) cannot show it matches
            raise ProvenanceMismatch(f"{path} records {name} {earlier!r}, this run {value!r}")


def _load(path: Path, settings: Mapping[str, Any], assumed: Mapping[str, Any]) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
        rows = doc["results"]
        if not all(isinstance(r, dict) for r in rows):
            raise TypeError("a row is not an object")
    except (ValueError, KeyError, TypeError):
        raise ResumeMismatch(f"{path} is not this script's JSON") from None
    for name, value in settings.items():
        earlier = doc.get(name, assumed.get(name))  # a file from before the setting was recorded
        if earlier != value:
            raise ResumeMismatch(f"{path} was made with {name} {earlier}, not {value}")
    return doc


class ResumableResults:
    """The rows of one grid, kept in ``path``.

    Args:
        path: the JSON document (its folder is created).
        key_fields: the fields that make two rows the same row, e.g. model, input size, batch.
        grid: this run's points, each a mapping holding at least ``key_fields``.
        settings: run-wide settings written into the document; resuming refuses a file made with
            other values.
        resume: keep the rows of an existing ``path`` (else it is overwritten).
        assumed: the value of a setting that an older file does not record.
        provenance: the top-level fields of an earlier file kept under ``earlier_runs``.
        same: fields of the earlier file, as dotted paths into it (``"environment.torch"``), that
            must hold these values for it to be resumed (write them with `save`'s ``fields``).

    Raises:
        ProvenanceMismatch: ``resume`` and a ``same`` field of ``path`` differs or is missing.
        ResumeMismatch: ``resume`` and ``path`` is not such a document or has other settings.
    """

    def __init__(self, path: Path, key_fields: Sequence[str], grid: Sequence[Mapping[str, Any]],
                 settings: Mapping[str, Any], *, resume: bool, assumed: Mapping[str, Any] | None = None,
                 provenance: Sequence[str] = ("command", "environment"), same: Mapping[str, Any] | None = None) -> None:
        self.path, self.key_fields, self.settings = path, tuple(key_fields), dict(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        earlier = _load(path, settings, assumed or {}) if resume and path.is_file() else {}
        if earlier:
            _check_same(path, earlier, same or {})
        self.rows = {self.key(r): r for r in earlier.get("results", [])}  # every earlier row stays in the file
        self.earlier_runs = [*earlier.get("earlier_runs", []), *([{k: earlier.get(k) for k in provenance}] if earlier else [])]
        self.run = len(self.earlier_runs)  # this run's index, stamped on the rows it adds
        self.grid = [self.key(p) for p in grid]
        self.to_measure = tuple(k for k in self.grid if k not in self.rows or "failed" in self.rows[k])

    def key(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(row.get(k) for k in self.key_fields)

    def kept(self, point: Mapping[str, Any]) -> bool:
        """Whether ``point``'s row was kept from the earlier file (not to be measured again)."""
        return self.key(point) not in self.to_measure

    def add(self, row: dict[str, Any]) -> None:
        """Record ``row`` with this run's index under ``run``, replacing any row with the same key; `save` writes it."""
        self.rows[self.key(row)] = {**row, "run": self.run}

    def grid_rows(self) -> list[dict[str, Any]]:
        """The rows of the grid's points there are, in grid order."""
        return [self.rows[k] for k in self.grid if k in self.rows]

    def complete(self) -> bool:
        return all(k in self.rows and "failed" not in self.rows[k] for k in self.grid)

    def any_failed(self) -> bool:
        return any("failed" in r for r in self.grid_rows())

    def save(self, command: str, fields: Mapping[str, Any]) -> None:
        """Write the document: command, settings, ``complete``, ``fields``, ``earlier_runs``, rows."""
        doc = {"command": command, **self.settings, "complete": self.complete(), **fields,
               **({"earlier_runs": self.earlier_runs} if self.earlier_runs else {}), "results": list(self.rows.values())}
        write_text_atomic(self.path, json.dumps(doc, indent=2) + "\n")  # a kill mid-write leaves the previous file whole

"""An on-disk cache of latency measurements, shared by every process on a machine.

A search times thousands of candidate graphs and many are the same deploy graph (same config, or
configs that fuse to the same plain network); the cache makes each one cost a single measurement
across all worker processes. It is one SQLite file: SQLite's own file locking makes concurrent
readers and writers from several processes safe (do not put it on a network file system).

Keys combine the architecture (`architecture_key`: the module tree as printed, every parameter
and buffer shape, the config hash when there is one), every `LatencySettings` field (the runtime
included), the runtime's version and settings (`dscnn.runtimes`: an onnxruntime upgrade is another
key), and the hardware (`dscnn.environment.hardware_id`). Code changes that keep the module tree but
change a forward do not change the key: `clear()` the cache (or point REPNAS_CACHE elsewhere) after those.

Each entry may carry a ``source``: how to rebuild the timed graph (``{"config": ArchConfig JSON}``
or ``{"bench": name, ...}``), which `python -m dscnn.bench --recheck` uses to time it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from dscnn.config import ArchConfig
from dscnn.environment import hardware_id
from dscnn.latency import LatencySettings
from dscnn.runtimes import get_runtime

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS latency (key TEXT PRIMARY KEY, arch TEXT, settings TEXT, "
    "hardware TEXT, value TEXT NOT NULL, created REAL, source TEXT)"
)


@dataclass(frozen=True)
class CacheEntry:
    """One stored measurement, as `MeasureCache.entries` lists it."""

    arch_key: str
    settings: LatencySettings
    hardware: str
    value: dict[str, Any]  # LatencyResult.to_dict()
    created: float  # time.time() when stored
    source: dict[str, Any] | None  # how to rebuild the graph; None = not recorded


class CacheUnusable(OSError):
    """The latency cache file cannot be opened or written (a folder, a read-only place, not SQLite)."""


def default_cache_path() -> Path:
    """``$REPNAS_CACHE/latency.sqlite`` if the variable is set (the folder of every repnas cache,
    `dscnn.data.cache`), else ``~/.cache/repnas/latency.sqlite``."""
    env = os.environ.get("REPNAS_CACHE")
    if env and env.endswith((".sqlite", ".db")):
        raise CacheUnusable(f"REPNAS_CACHE={env!r} names a file; it is the folder of every repnas cache "
                            "(latency.sqlite and datasets/ go inside it): give a folder, or --cache FILE")
    return (Path(env) if env else Path.home() / ".cache" / "repnas") / "latency.sqlite"


def architecture_key(model: nn.Module) -> str:
    """A hash that differs whenever the graph to be timed differs.

    The module tree's repr covers layer types, kernel sizes, strides, groups and activations; the
    state_dict shapes cover widths (pruned variants of one config never collide); the config hash
    (registry models) covers choices that the module tree does not print.
    """
    config = getattr(model, "config", None)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    text = json.dumps(
        {"config": config.arch_hash() if isinstance(config, ArchConfig) else None, "modules": repr(model),
         "shapes": shapes},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class MeasureCache:
    """Latency results keyed by (architecture, settings, hardware) in one SQLite file."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as conn:
                conn.execute(_SCHEMA)
                columns = {row[1] for row in conn.execute("PRAGMA table_info(latency)")}
                if "source" not in columns:  # a cache file written before entries recorded their source
                    conn.execute("ALTER TABLE latency ADD COLUMN source TEXT")
        except (OSError, sqlite3.Error) as exc:
            raise CacheUnusable(f"latency cache {str(self.path)!r} is not usable ({exc}): give another --cache "
                                "file or REPNAS_CACHE folder") from None

    def _connect(self) -> closing[sqlite3.Connection]:
        # One short-lived connection per call: safe across fork and across processes; the timeout
        # makes a writer wait for another process's transaction instead of failing.
        conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        return closing(conn)

    @staticmethod
    def key(arch_key: str, settings: LatencySettings) -> str:
        info = get_runtime(settings.runtime).info(settings)
        payload = {"arch": arch_key, "settings": settings.to_dict(), "hardware": hardware_id(settings.device),
                   "runtime": {"version": info.version, "settings": info.settings}}
        # entries keyed before runtimes existed (no "runtime" anywhere) are never found again: they
        # may have been timed under load, which nothing recorded then
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def get(self, arch_key: str, settings: LatencySettings) -> dict[str, Any] | None:
        """The stored result for this architecture and settings on this hardware, or None."""
        with self._connect() as conn:
            row = conn.execute("SELECT value FROM latency WHERE key = ?", (self.key(arch_key, settings),)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, arch_key: str, settings: LatencySettings, value: dict[str, Any],
            source: dict[str, Any] | None = None) -> None:
        """Store ``value`` (JSON-serialisable); a later put for the same key replaces it."""
        with self._connect() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO latency (key, arch, settings, hardware, value, created, source) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.key(arch_key, settings), arch_key, json.dumps(settings.to_dict(), sort_keys=True),
                 hardware_id(settings.device), json.dumps(value), time.time(),
                 None if source is None else json.dumps(source, sort_keys=True)),
            )

    def entries(self) -> list[CacheEntry]:
        """Every stored measurement, oldest first; rows whose settings this code cannot read are skipped."""
        with self._connect() as conn:
            rows = conn.execute("SELECT arch, settings, hardware, value, created, source FROM latency "
                                "ORDER BY created").fetchall()
        out = []
        for arch, settings, hardware, value, created, source in rows:
            try:
                parsed = LatencySettings(**json.loads(settings))
            except (TypeError, ValueError):  # written by another version of LatencySettings
                continue
            out.append(CacheEntry(arch, parsed, hardware, json.loads(value), created or 0.0,
                                  json.loads(source) if source else None))
        return out

    def __len__(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM latency").fetchone()[0])

    def clear(self) -> None:
        """Forget every measurement (after a code change that the keys cannot see)."""
        with self._connect() as conn:
            conn.execute("DELETE FROM latency")

"""``python -m dscnn.bench --recheck``: time cached latencies (or a study's trials) again and report drift.

A cached number is only as good as the machine was quiet when it was taken (`dscnn.machine_load`).
This re-measures, with the stored settings, every cache entry whose graph can be rebuilt (entries
carry a ``source``: an `ArchConfig` or a bench model name) or, with ``--study``, the deploy form of
every trial of a study that recorded an architecture (settings from the study's definition; warm-up
and run counts are the protocol's). Drift = new / old - 1; beyond `DRIFT_TOLERANCE` an entry is
flagged. ``--update`` replaces a cache entry with the new timing when that one is trusted (quiet,
repeats agreeing).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from dscnn.complexity import deploy_copy
from dscnn.environment import environment, hardware_id
from dscnn.latency import NOISE_TOLERANCE, LatencyResult, LatencySettings, measure_latency_ms
from dscnn.measure_cache import CacheEntry, CacheUnusable, MeasureCache, architecture_key, default_cache_path

DRIFT_TOLERANCE = NOISE_TOLERANCE  # the same 20% that makes repeats noisy


@dataclass(frozen=True)
class Recheck:
    """One re-timed graph: what was recorded and what it measures now."""

    label: str  # model name or "trial 12, 14"
    arch_key: str
    runtime: str
    old_ms: float
    old_busy: bool | None  # as recorded; None = not recorded
    new: LatencyResult | None  # None = not re-timed (see ``skipped``)
    skipped: str = ""  # why not re-timed

    @property
    def drift(self) -> float | None:
        return None if self.new is None else self.new.median_ms / self.old_ms - 1

    @property
    def drifted(self) -> bool:
        return self.drift is not None and abs(self.drift) > DRIFT_TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drift": self.drift, "drifted": self.drifted}


def rebuild(source: dict[str, Any]) -> Any:
    """The deploy form an entry's ``source`` describes (fresh weights: latency does not depend on them)."""
    from dscnn._registry import build_model, config_from_dict
    from dscnn.external import create_bench_model, deploy_function

    if "bench" in source:
        model = create_bench_model(source["bench"], resolution=source["resolution"], num_classes=source["num_classes"])
        return deploy_function(source["bench"])(model)
    return deploy_copy(build_model(config_from_dict(source["config"])))


def recheck_cache(cache: MeasureCache, limit: int | None = None, update: bool = False,
                  log: Console | None = None) -> list[Recheck]:
    """Re-time every rebuildable entry of ``cache`` measured on this hardware (oldest first, at most ``limit``)."""
    out: list[Recheck] = []
    for entry in cache.entries():
        if limit is not None and sum(r.new is not None for r in out) >= limit:
            break
        out.append(_recheck_entry(cache, entry, update, log))
    return out


def _recheck_entry(cache: MeasureCache, entry: CacheEntry, update: bool, log: Console | None) -> Recheck:
    old = LatencyResult.from_dict(entry.value)
    label = _label(entry.source)
    row = functools.partial(Recheck, label, entry.arch_key, entry.settings.runtime, old.median_ms,
                            old.busy if "busy" in entry.value else None)
    why = _why_not(entry.settings, entry.hardware, entry.source)
    if why or entry.source is None:
        return row(None, why)
    deploy = rebuild(entry.source)
    if architecture_key(deploy) != entry.arch_key:
        return row(None, "rebuilt graph differs (code changed since)")
    if log is not None:
        log.print(f"re-timing {label} ({entry.settings.runtime}) ...")
    new = measure_latency_ms(deploy, entry.settings)
    if update and new.trusted:
        cache.put(entry.arch_key, entry.settings, new.to_dict(), source=entry.source)
    return row(new)


def recheck_study(storage: str, study_name: str, limit: int | None = None, log: Console | None = None) -> list[Recheck]:
    """Re-time the deploy form of every trial of the study that recorded ``arch`` and ``latency_ms``."""
    settings = _study_settings(storage, study_name)
    out: list[Recheck] = []
    for arch_json, trials, old_ms, old_busy in _study_archs(storage, study_name):
        if limit is not None and len(out) >= limit:
            break
        label = "trial " + ", ".join(str(t) for t in trials)
        why = _why_not(settings, hardware_id(settings.device), {"config": arch_json})
        if why:
            out.append(Recheck(label, "", settings.runtime, old_ms, old_busy, None, why))
            continue
        deploy = rebuild({"config": arch_json})
        if log is not None:
            log.print(f"re-timing {label} ...")
        out.append(Recheck(label, architecture_key(deploy), settings.runtime, old_ms, old_busy,
                           measure_latency_ms(deploy, settings)))
    return out


def _load_study(storage: str, study_name: str) -> Any:
    """The study, read with Optuna directly (dscnn stands below searchspace and never imports it):
    a journal file for a plain path, an RDB URL otherwise."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if "://" not in storage and not Path(storage).is_file():
        raise ValueError(f"--study {storage!r}: no such journal file")
    backend = storage if "://" in storage else JournalStorage(JournalFileBackend(storage))
    try:
        return optuna.load_study(study_name=study_name, storage=backend)
    except KeyError:
        raise ValueError(f"no study {study_name!r} in {storage!r}") from None


def _study_settings(storage: str, study_name: str) -> LatencySettings:
    study = _load_study(storage, study_name)
    d = study.user_attrs.get("definition")
    if not isinstance(d, dict):
        raise ValueError(f"study {study_name!r} in {storage!r} records no definition: its latency settings are unknown")
    return LatencySettings(device=d["device"], batch=d["latency_batch"], resolution=d["resolution"], threads=d["threads"],
                           precision=d["precision"], runtime=d.get("runtime", "eager"))


def _study_archs(storage: str, study_name: str) -> Iterator[tuple[dict[str, Any], list[int], float, bool | None]]:
    """(arch, trial numbers, first recorded latency, recorded busy) per distinct architecture of the study."""
    study = _load_study(storage, study_name)
    seen: dict[str, tuple[dict[str, Any], list[int], float, bool | None]] = {}
    for trial in study.get_trials(deepcopy=False):
        arch, ms = trial.user_attrs.get("arch"), trial.user_attrs.get("latency_ms")
        if not isinstance(arch, str) or not isinstance(ms, (int, float)):
            continue
        busy = trial.user_attrs.get("latency_busy", trial.user_attrs.get("busy"))
        if arch in seen:
            seen[arch][1].append(trial.number)
        else:
            seen[arch] = (json.loads(arch), [trial.number], float(ms), busy if isinstance(busy, bool) else None)
    yield from seen.values()


def _why_not(settings: LatencySettings, hardware: str, source: dict[str, Any] | None) -> str:
    if source is None:
        return "no source recorded (train form, or cached before sources were)"
    if settings.device == "cuda" and not torch.cuda.is_available():
        return "measured on cuda; this machine has no CUDA GPU"
    here = hardware_id(settings.device)
    return "" if hardware == here else f"measured on {hardware}; this machine is {here}"


def _label(source: dict[str, Any] | None) -> str:
    if source is None:
        return "?"
    if "bench" in source:
        return str(source["bench"])
    config = source.get("config", {})
    return f"{config.get('family', '?')} ({json.dumps(config, sort_keys=True)[:40]}...)"


def render(rows: list[Recheck], title: str) -> Table:
    table = Table(title=title, caption=f"drift = new / old - 1; '!' beyond {DRIFT_TOLERANCE:.0%}; "
                  "busy = timed on a busy machine (dscnn.machine_load)")
    for header in ("Graph", "Runtime", "Old (ms)", "Old busy", "New (ms)", "New busy", "Drift", "Note"):
        table.add_column(header, justify="left" if header in ("Graph", "Runtime", "Note") else "right")
    for r in rows:
        new = r.new
        table.add_row(r.label, r.runtime, f"{r.old_ms:.3f}", _yes_no(r.old_busy),
                      "-" if new is None else f"{new.median_ms:.3f}", "-" if new is None else _yes_no(new.busy),
                      "-" if r.drift is None else f"{r.drift:+.1%}" + (" !" if r.drifted else ""), r.skipped)
    return table


def _yes_no(value: bool | None) -> str:
    return "?" if value is None else ("yes" if value else "no")


def main(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    a = parser.parse_args(argv)
    if a.study_name and not a.study:
        parser.error("--study-name needs --study (the storage, e.g. studies.db)")
    if a.limit is not None and a.limit < 1:
        parser.error(f"--limit must be >= 1, got {a.limit}")
    log = Console(stderr=True)
    try:
        if a.study:
            if a.update:
                parser.error("--update re-writes cache entries; with --study, give --cache instead")
            rows = recheck_study(a.study, a.study_name or "repnas", a.limit, log)
            title = f"recheck of study {a.study_name or 'repnas'!r} in {a.study}"
        else:
            path = Path(a.cache) if a.cache else default_cache_path()
            if not path.is_file():
                parser.error(f"--cache {str(path)!r}: no such file")
            rows = recheck_cache(MeasureCache(path), a.limit, a.update, log)
            title = f"recheck of {path}"
    except (KeyError, ValueError, CacheUnusable) as exc:  # unknown study, missing definition, unavailable runtime
        parser.error(str(exc).strip("'\""))
    Console(width=None if sys.stdout.isatty() else 200).print(render(rows, title))
    timed = [r for r in rows if r.new is not None]
    log.print(f"{len(timed)} re-timed, {sum(r.drifted for r in timed)} drifted beyond {DRIFT_TOLERANCE:.0%}, "
              f"{len(rows) - len(timed)} skipped")
    if a.json:
        doc = {"command": ["python", "-m", "dscnn.bench", *argv], "title": title,
               "environment": environment(a.device, a.threads), "rows": [r.to_dict() for r in rows]}
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0

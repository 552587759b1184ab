"""What a search is: `SearchConfig` (and `RayConfig` for the Ray Tune backend), validated on creation.

The flat settings a user writes, as ``search.py`` flags (``--budget-ms 2``) or as keys of a study
file (``budget_ms = 2``), are the same names: `SETTINGS` maps each to the config field it sets (and
describes it, for ``search.py --help``), and
`SearchConfig.from_mapping` merges any number of such tables (a study file's, then the flags) into
one config. The dataclass defaults are the single source of every default (`default_of` reads them
for help texts).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import torch

from dscnn.data import DATASETS, DataConfig
from dscnn.latency import LatencySettings
from dscnn.runtimes import RUNTIMES
from dscnn.train import OPTIMIZERS, TrainConfig
from dscnn.units import parse_macs
from searchspace.baselines import BASELINES
from searchspace.space import SPACES

__all__ = ["SETTINGS", "InvalidSetting", "RayConfig", "SearchConfig", "Setting", "default_of", "read_study_table"]


class InvalidSetting(ValueError):
    """A config field with a bad value; ``field`` names it so callers can name the flag instead."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name} {problem}")
        self.field = field_name
        self.problem = problem


@dataclass(frozen=True)
class RayConfig:
    """How the search runs on Ray Tune (`searchspace.ray_backend`)."""

    address: str | None = None  # None = start Ray on this machine; "auto" or "HOST:PORT" = join a cluster
    num_cpus: int | None = None  # CPUs of a Ray started here; None = all (ignored with an address)
    cpus_per_trial: float = 1.0  # CPUs reserved by each training trial
    gpus_per_trial: float = 0.0  # GPUs (fractions allowed) reserved by each trial; > 0 for --device cuda
    concurrency: int = 2  # trials training at the same time
    grace_period: int = 1  # ASHA: epochs before a trial may be stopped
    reduction_factor: int = 2  # ASHA: keep the best 1/reduction_factor at each rung
    max_failures: int = 1  # retries of a trial whose worker died, before it is FAIL
    storage_path: str | None = None  # Ray's results/checkpoints; None = <out>/ray (multi-node: shared or s3://)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise InvalidSetting("concurrency", f"must be >= 1, got {self.concurrency}")
        if not self.cpus_per_trial > 0:
            raise InvalidSetting("cpus_per_trial", f"must be > 0, got {self.cpus_per_trial}")
        if not self.gpus_per_trial >= 0:
            raise InvalidSetting("gpus_per_trial", f"must be >= 0, got {self.gpus_per_trial}")
        if self.grace_period < 1 or self.reduction_factor < 2 or self.max_failures < 0:
            raise ValueError("grace_period must be >= 1, reduction_factor >= 2, max_failures >= 0")


@dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs; written to ``<out>/search_config.json`` beside the results."""

    study_name: str = "repnas"  # Optuna study name inside the storage (no path separators)
    storage: str = "studies.db"  # journal file path, or an RDB URL (sqlite:///..., postgresql://...)
    out: str = ""  # output folder; "" = runs/<study_name>
    space: str = "full"  # search space name (searchspace.space.SPACES)
    budget_ms: float | None = None  # hard latency budget of the deploy form, ms; None = none
    # the budget is this baseline's deploy latency, timed when the study starts (searchspace.budget_of); the
    # search then sets budget_ms to that timing (a budget_ms given with it is replaced)
    budget_of: str | None = None
    budget_macs: float | None = None  # hard deploy-MACs budget; None = none
    trials: int = 20  # total trials in the study (baselines included)
    timeout_s: float | None = None  # stop starting new trials after this many seconds
    seed: int = 0  # sampler seed
    pareto: bool = False  # multi-objective (accuracy up, latency down) instead of constrained accuracy
    baselines: tuple[str, ...] = tuple(BASELINES)  # hand-designed models enqueued first
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    latency: LatencySettings = field(default_factory=LatencySettings)
    cache_path: str | None = None  # latency cache file; None = the default cache location
    device_lock: str | None = None  # measurement/training lock file; None = $REPNAS_DEVICE_LOCK or <tmp>/repnas-device.lock
    ray: RayConfig | None = None  # None = trials run in this process (Optuna); else on Ray Tune

    def __post_init__(self) -> None:
        object.__setattr__(self, "baselines", tuple(self.baselines))  # JSON round trips give lists
        if not self.study_name or any(c in self.study_name for c in "/\\") or self.study_name in (".", ".."):
            raise InvalidSetting("study_name", f"must be a plain name without path separators, got {self.study_name!r}")
        if not self.storage:
            raise InvalidSetting("storage", "must be a journal file path or an RDB URL, got ''")
        if self.space not in SPACES:
            raise InvalidSetting("space", f"must be one of {', '.join(sorted(SPACES))}, got {self.space!r}")
        _positive_finite("budget_ms", self.budget_ms, "a positive number of milliseconds")
        _positive_finite("budget_macs", self.budget_macs, "a positive MAC count")
        _positive_finite("timeout_s", self.timeout_s, "a positive number of seconds")
        if not isinstance(self.trials, int) or self.trials < 1:
            raise InvalidSetting("trials", f"must be >= 1, got {self.trials}")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise InvalidSetting("baselines", f"unknown: {', '.join(unknown)}; valid: {', '.join(BASELINES)}")
        if self.budget_of is not None and self.budget_of not in self.baselines:
            raise InvalidSetting("budget_of", f"must be one of the baselines the study trains "
                                 f"({', '.join(self.baselines) or 'none'}), got {self.budget_of!r}")
        if self.ray is not None and self.train.device.startswith("cuda") and self.ray.gpus_per_trial <= 0:
            raise InvalidSetting("gpus_per_trial", "must be > 0 with --device cuda and --backend ray")

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"runs/{self.study_name}")

    @property
    def latency_cache(self) -> Path | None:
        """The latency cache trials use: ``cache_path``; with ``budget_of`` and none given, one of this
        study's own (``<out>/latency.sqlite``), so no trial is judged by a timing from a day the machine
        ran at another speed than the fresh timing that made the budget; None = the shared default."""
        if self.cache_path:
            return Path(self.cache_path)
        return self.out_dir / "latency.sqlite" if self.budget_of else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, *tables: Mapping[str, Any]) -> SearchConfig:
        """One config from flat settings tables (see `SETTINGS`); later tables win.

        ``SearchConfig.from_mapping(study_file_table, flags)``. Raises ValueError naming the
        setting as the user wrote it (``--budget-ms must be ...``) for unknown keys and bad values.
        """
        values: dict[str, Any] = {}
        for table in tables:
            values.update({k: v for k, v in table.items() if v is not None})
        unknown = sorted(set(values) - set(SETTINGS))
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(SETTINGS))}")
        try:
            return _build(values)
        except InvalidSetting as exc:
            where = next(((k, v.section) for k, v in SETTINGS.items() if v.field == exc.field and k in values), None)
            if where is None or where[1] == "ray":  # Ray's knobs: named as RayConfig's fields, like its docs
                raise ValueError(f"--backend ray: {exc}" if where else str(exc)) from None
            raise ValueError(f"--{where[0].replace('_', '-')} {exc.problem}") from None


@dataclass(frozen=True)
class Setting:
    """One flat setting: where it lands in the config, and how a command line offers it."""

    section: str  # "" = SearchConfig itself, "data", "train", "latency", "ray"; "*" = handled in `_build`
    field: str  # the field it sets
    kind: type | None  # value type on a command line; None = a switch
    group: str  # help section
    help: str
    choices: tuple[str, ...] | None = None


def _s(section: str, name: str, kind: type | None, group: str, text: str, choices: tuple[str, ...] | None = None) -> Setting:
    return Setting(section, name, kind, group, text, choices)


BACKENDS = ("optuna", "ray")
DEVICES = ("auto", "cpu", "cuda")
#: every flat setting (a ``search.py`` flag, underscored = a study-file key), in help order
SETTINGS: dict[str, Setting] = {
    "budget_ms": _s("", "budget_ms", float, "budget", "hard latency budget of the deploy form, ms (batch --latency-batch)"),
    "budget_of": _s("", "budget_of", str, "budget", "instead of --budget-ms: the budget is this baseline's deploy "
                    "latency on --device, timed once when the study is created and stored (resumes and other "
                    "workers use that number); one of --baselines",
                    tuple(BASELINES)),
    "budget_flops": _s("*", "budget_macs", str, "budget", "hard budget on deploy MACs, e.g. 0.3G or 300M"),
    "dataset": _s("data", "name", str, "data", "data set (embedded: a CIFAR-10 subset shipped inside)", DATASETS),
    "data_dir": _s("data", "data_dir", str, "data", "folder holding the data set (None: $REPNAS_DATA)"),
    "train_per_class": _s("data", "train_per_class", int, "data", "class-balanced training subset per class (0 = all)"),
    "val_per_class": _s("data", "val_per_class", int, "data", "class-balanced validation subset per class (0 = all)"),
    "holdout_per_class": _s("data", "holdout_per_class", int, "data",
                            "validation = this many per class held out of the training split; the data set's own "
                            "held-out split becomes a test split never used to choose (0 = validate on it)"),
    "test_per_class": _s("data", "test_per_class", int, "data", "class-balanced test subset per class (0 = all)"),
    "resolution": _s("data", "resolution", int, "data", "input size models are built, timed and trained at (0 = native)"),
    "space": _s("", "space", str, "search", "search space", tuple(sorted(SPACES))),
    "trials": _s("", "trials", int, "search", "total trials in the study, baselines included"),
    "timeout": _s("", "timeout_s", float, "search", "stop starting new trials after this many seconds"),
    "seed": _s("", "seed", int, "search", "sampler and training seed"),
    "pareto": _s("", "pareto", None, "search", "multi-objective: accuracy up, latency down"),
    "baselines": _s("*", "baselines", str, "search", "hand-designed models enqueued first, comma-separated "
                    f"({', '.join(BASELINES)})"),
    "no_baselines": _s("*", "baselines", None, "search", "do not enqueue the hand-designed models"),
    "epochs": _s("train", "epochs", int, "proxy training", "training epochs per trial"),
    "batch_size": _s("train", "batch_size", int, "proxy training", "training batch size"),
    "optimizer": _s("train", "optimizer", str, "proxy training", "optimizer", OPTIMIZERS),
    "lr": _s("train", "lr", float, "proxy training", "peak learning rate"),
    "device": _s("*", "device", str, "device and measurement", "where models are timed (and trained)", DEVICES),
    "train_device": _s("*", "train_device", str, "device and measurement",
                       "where models are trained when not where they are timed (e.g. a CPU budget, GPU training)",
                       DEVICES),
    "runtime": _s("latency", "runtime", str, "device and measurement",
                  "runtime the deploy form is timed in: what you ship with", RUNTIMES),
    "latency_batch": _s("latency", "batch", int, "device and measurement", "batch size of the latency measurement"),
    "threads": _s("latency", "threads", int, "device and measurement", "CPU threads during latency measurement"),
    "cache": _s("", "cache_path", str, "device and measurement",
                "latency cache file (None: latency.sqlite in $REPNAS_CACHE or ~/.cache/repnas; with --budget-of, "
                "<out>/latency.sqlite)"),
    "device_lock": _s("", "device_lock", str, "device and measurement", "lock file shared by measurements on this machine"),
    "storage": _s("", "storage", str, "storage and outputs", "journal file or RDB URL; processes sharing it share the study"),
    "study_name": _s("", "study_name", str, "storage and outputs", "study name in the storage"),
    "out": _s("", "out", str, "storage and outputs", "output folder ('': runs/<study-name>)"),
    "backend": _s("*", "backend", str, "distributed", "optuna: trials run here; ray: trials train on Ray Tune (ASHA)", BACKENDS),
    "ray_address": _s("ray", "address", str, "distributed", "Ray cluster to join: auto or HOST:PORT (None: start Ray here)"),
    "cpus_per_trial": _s("ray", "cpus_per_trial", float, "distributed", "Ray: CPUs reserved by each trial"),
    "gpus_per_trial": _s("ray", "gpus_per_trial", float, "distributed", "Ray: GPUs reserved by each trial, fractions allowed"),
    "concurrency": _s("ray", "concurrency", int, "distributed", "Ray: trials training at the same time"),
    "ray_storage": _s("ray", "storage_path", str, "distributed", "Ray: results/checkpoint folder (None: <out>/ray)"),
}
_SECTIONS: dict[str, type] = {"": SearchConfig, "data": DataConfig, "train": TrainConfig,
                              "latency": LatencySettings, "ray": RayConfig}


def default_of(key: str) -> Any:
    """The default of a flat setting, read from its dataclass (for help texts)."""
    special = {"budget_flops": None, "baselines": "all", "no_baselines": False, "device": "auto", "backend": "optuna",
               "train_device": "the --device"}
    if key in special:
        return special[key]
    setting = SETTINGS[key]
    f = next(f for f in dataclasses.fields(_SECTIONS[setting.section]) if f.name == setting.field)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def read_study_table(path: str | Path) -> dict[str, Any]:
    """The search settings of a study file: its top level, or its ``[search]`` table (`studies.run` files)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--study {str(path)!r}: no such file")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--study {str(path)!r}: not valid TOML ({exc})") from None
    return dict(doc["search"]) if isinstance(doc.get("search"), dict) else doc


def _positive_finite(name: str, value: float | None, what: str) -> None:
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise InvalidSetting(name, f"must be {what}, got {value}")


def _build(values: dict[str, Any]) -> SearchConfig:
    backend = values.get("backend", "optuna")
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    ray_given = [k for k in values if SETTINGS[k].section == "ray"]
    if backend != "ray" and ray_given:
        raise ValueError(f"--{ray_given[0].replace('_', '-')} needs --backend ray")
    if "budget_ms" in values and "budget_of" in values:
        raise ValueError("--budget-ms and --budget-of: give one (--budget-of times the baseline and makes that the budget)")
    device = _resolve_device(values.get("device", "auto"))
    parts: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for key, value in values.items():
        setting = SETTINGS[key]
        if setting.section != "*":
            parts[setting.section][setting.field] = value
    try:
        if "budget_flops" in values:
            parts[""]["budget_macs"] = parse_macs(values["budget_flops"])
    except ValueError as exc:
        raise ValueError(f"--budget-flops: {exc}") from None
    if "baselines" in values:
        parts[""]["baselines"] = _baseline_list(values["baselines"])
    if values.get("no_baselines"):
        if values.get("baselines"):
            raise ValueError("--baselines and --no-baselines: give one")
        parts[""]["baselines"] = ()
    if "seed" in values:
        parts["train"]["seed"] = values["seed"]  # one seed for the sampler and the training
    for key, value in values.items():  # inf / nan are never meant (and Infinity is not JSON)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{key.replace('_', '-')} must be a finite number, got {value}")
    for key in ("epochs", "batch_size", "latency_batch", "threads"):
        if key in values and not (isinstance(values[key], int) and values[key] >= 1):
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {values[key]}")
    return SearchConfig(
        data=DataConfig(**parts["data"]),
        train=TrainConfig(device=_resolve_device(values.get("train_device", device)), **parts["train"]),
        latency=LatencySettings(device=device, **parts["latency"]),
        ray=RayConfig(**parts["ray"]) if backend == "ray" else None, **parts[""],
    )


def _baseline_list(value: Any) -> tuple[str, ...]:
    """``"a,b"`` (a flag) or ``["a", "b"]`` (a study file) -> ``("a", "b")``; unknown names fail in SearchConfig."""
    names = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise ValueError(f"--baselines: a comma-separated list of names, got {value!r}")
    names = [n.strip() for n in names if n.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"--baselines: {value!r} names a baseline twice")
    return tuple(names)


def _resolve_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible to PyTorch (use --device cpu)")
    return device

"""A study file, parsed and checked before anything runs: `load_plan(path) -> StudyPlan`.

A study file has a ``[search]`` table (the keys of ``search.py``'s flags, underscored; checked by
`searchspace.SearchConfig.from_mapping`), and ``[retrain]``, ``[prune]``, ``[export]`` tables.
Overrides (``python -m studies.run FILE --set search.trials=2 --set out=runs/x``) replace single
keys of the file before it is checked, exactly as if the file said so; values are TOML values
(``2``, ``0.5``, ``true``, ``"text"``; a bare word is taken as a string).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from pruning.targets import parse_latency_target, parse_target
from searchspace import SearchConfig


class StudyError(ValueError):
    """A study that cannot run as written (bad file, nothing feasible found, a failed export check)."""


STAGES = ("search", "stage2", "retrain", "prune", "export", "report")
PRUNE_METHODS = ("resrep", "csgd", "magnitude")


@dataclass(frozen=True)
class StudyPlan:
    """A parsed study file. Tables other than [search] are checked here, before anything runs."""

    path: Path
    out: Path  # every artifact of the study
    search: dict[str, Any]  # search.py flags (underscored)
    retrain_epochs: int = 10  # final training of the winner, from scratch
    prune_method: str = "resrep"  # the first of prune_methods: the one exported when only one runs
    target_flops: str = "0.5x"  # 0.3G, 300M or 0.5x of the winner's deploy MACs ("" with target_latency)
    prune_epochs: int = 2  # training with the pruning regularizer
    finetune_epochs: int = 1  # plain training after pruning
    prune_options: dict[str, Any] = field(default_factory=dict)  # the method's own knobs (lasso, ...)
    prune_methods: tuple[str, ...] = ()  # every method run on the winner at equal epochs; () = (prune_method,)
    target_latency: str | None = None  # instead of target_flops: "3ms" or "0.6x" of the winner's measured latency
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # [prune.<method>] tables
    torchscript: bool = True  # also export TorchScript beside ONNX
    stage2: Any = None  # studies.stage2.Stage2Config when the file has a [stage2] table, else None

    @property
    def storage(self) -> str:
        return str(self.search.get("storage", self.out / "studies.db"))

    @property
    def methods(self) -> tuple[str, ...]:
        return self.prune_methods or (self.prune_method,)

    def options_of(self, method: str) -> dict[str, Any]:
        """A method's knobs: its own [prune.<method>] table; the flat [prune] keys when it runs alone."""
        flat = self.prune_options if len(self.methods) == 1 else {}
        return {**flat, **self.method_options.get(method, {})}

    def stage_dir(self, stage: str) -> Path:
        return self.out / stage

    def search_config(self) -> SearchConfig:
        """The [search] table as a `SearchConfig`; the study's folder, storage and name are its defaults."""
        defaults = {"out": str(self.stage_dir("search")), "storage": self.storage, "study_name": self.path.stem}
        try:
            return SearchConfig.from_mapping(defaults, self.search)
        except ValueError as exc:
            raise StudyError(f"{self.path}: [search] {exc}") from None


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``"search.trials=2"`` -> (("search", "trials"), 2); a `StudyError` for anything else."""
    key, sep, raw = text.partition("=")
    parts = tuple(p.strip() for p in key.split("."))
    if not sep or not all(parts) or len(parts) > 2:
        raise StudyError(f"--set {text!r}: expected TABLE.KEY=VALUE or KEY=VALUE, e.g. search.trials=2")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word: a string
    return parts, value


def apply_overrides(doc: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``doc`` with each ``TABLE.KEY=VALUE`` / ``KEY=VALUE`` of ``overrides`` set (a copy)."""
    doc = {k: dict(v) if isinstance(v, dict) else v for k, v in doc.items()}
    for text in overrides:
        parts, value = parse_override(text)
        if len(parts) == 1:
            doc[parts[0]] = value
        else:
            table = doc.setdefault(parts[0], {})
            if not isinstance(table, dict):
                raise StudyError(f"--set {text!r}: {parts[0]!r} is not a table")
            table[parts[1]] = value
    return doc


def load_plan(path: str | Path, overrides: Sequence[str] = ()) -> StudyPlan:
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file {str(path)!r} does not exist")
    try:
        doc = apply_overrides(tomllib.loads(path.read_text()), overrides)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"study file {str(path)!r} is not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - {"out", "search", "stage2", "retrain", "prune", "export"})
    if unknown:
        raise StudyError(f"study file {str(path)!r}: unknown table(s)/key(s) {', '.join(unknown)}")
    retrain, prune, export = doc.get("retrain", {}), dict(doc.get("prune", {})), doc.get("export", {})
    methods = _methods(path, prune)
    method_options = {m: dict(prune.pop(m)) for m in PRUNE_METHODS if isinstance(prune.get(m), dict)}
    unused = sorted(set(method_options) - set(methods))
    if unused:  # knobs that would silently do nothing
        raise StudyError(f"{path}: [prune.{unused[0]}] is given but {unused[0]!r} is not among the methods {list(methods)}")
    target_latency = prune.pop("target_latency", None)
    target_flops = prune.pop("target_flops", "" if target_latency is not None else "0.5x")
    if target_latency is not None and target_flops:
        raise StudyError(f"{path}: [prune] give target_flops or target_latency, not both")
    if len(methods) > 1 and prune and set(prune) - {"epochs", "finetune_epochs"}:
        raise StudyError(f"{path}: [prune] with several methods, put each method's knobs in its own table "
                         f"([prune.resrep] ...), not {', '.join(sorted(prune))}")
    plan = StudyPlan(
        path=path, out=Path(doc.get("out", f"runs/{path.stem}")), search=dict(doc.get("search", {})),
        retrain_epochs=int(retrain.get("epochs", 10)), prune_method=methods[0],
        target_flops=str(target_flops), prune_epochs=int(prune.pop("epochs", 2)),
        finetune_epochs=int(prune.pop("finetune_epochs", 1)), prune_options=prune,
        prune_methods=methods, target_latency=None if target_latency is None else str(target_latency),
        method_options=method_options,
        torchscript=bool(export.get("torchscript", True)), stage2=_stage2(path, doc.get("stage2")),
    )
    if plan.retrain_epochs < 1 or plan.prune_epochs < 1 or plan.finetune_epochs < 0:
        raise StudyError(f"{path}: [retrain] epochs and [prune] epochs must be >= 1, finetune_epochs >= 0")
    try:  # a bad target fails now, not after the search
        if plan.target_latency is not None:
            parse_latency_target(plan.target_latency)
        else:
            parse_target(plan.target_flops)
    except ValueError as exc:
        which = "target_latency" if plan.target_latency is not None else "target_flops"
        raise StudyError(f"{path}: [prune] {which}: {exc}") from None
    plan.search_config()  # so does a bad [search] table
    return plan


def _methods(path: Path, prune: dict[str, Any]) -> tuple[str, ...]:
    """``method = "resrep"`` or ``methods = ["resrep", "csgd", "magnitude"]`` (popped from ``prune``)."""
    if "method" in prune and "methods" in prune:
        raise StudyError(f"{path}: [prune] give method or methods, not both")
    raw = prune.pop("methods", None)
    methods = (prune.pop("method", "resrep"),) if raw is None else tuple(raw) if isinstance(raw, list) else (raw,)
    for method in methods:
        if method not in PRUNE_METHODS:
            raise StudyError(f"{path}: [prune] method {method!r}: valid methods are {', '.join(PRUNE_METHODS)}")
    if not methods or len(set(methods)) != len(methods):
        raise StudyError(f"{path}: [prune] methods must name each method once, got {list(methods)}")
    return methods


def _stage2(path: Path, table: dict[str, Any] | None) -> Any:
    if table is None:
        return None
    from studies.stage2 import Stage2Config

    try:
        return Stage2Config(**table)
    except TypeError as exc:
        raise StudyError(f"{path}: [stage2]: {exc}") from None

"""A study file, parsed and checked before anything runs: `load_plan(path) -> StudyPlan`.

A study file has a ``[search]`` table (the keys of ``search.py``'s flags, underscored; checked by
`searchspace.SearchConfig.from_mapping`), and ``[retrain]``, ``[prune]``, ``[export]`` tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from pruning.targets import parse_target
from searchspace import SearchConfig


class StudyError(ValueError):
    """A study that cannot run as written (bad file, nothing feasible found, a failed export check)."""


STAGES = ("search", "retrain", "prune", "export", "report")
PRUNE_METHODS = ("resrep", "csgd")


@dataclass(frozen=True)
class StudyPlan:
    """A parsed study file. Tables other than [search] are checked here, before anything runs."""

    path: Path
    out: Path  # every artifact of the study
    search: dict[str, Any]  # search.py flags (underscored)
    retrain_epochs: int = 10  # final training of the winner, from scratch
    prune_method: str = "resrep"  # resrep | csgd
    target_flops: str = "0.5x"  # 0.3G, 300M or 0.5x of the winner's deploy MACs
    prune_epochs: int = 2  # training with the pruning regularizer
    finetune_epochs: int = 1  # plain training after pruning
    prune_options: dict[str, Any] = field(default_factory=dict)  # the method's own knobs (lasso, ...)
    torchscript: bool = True  # also export TorchScript beside ONNX

    @property
    def storage(self) -> str:
        return str(self.search.get("storage", self.out / "studies.db"))

    def stage_dir(self, stage: str) -> Path:
        return self.out / stage

    def search_config(self) -> SearchConfig:
        """The [search] table as a `SearchConfig`; the study's folder, storage and name are its defaults."""
        defaults = {"out": str(self.stage_dir("search")), "storage": self.storage, "study_name": self.path.stem}
        try:
            return SearchConfig.from_mapping(defaults, self.search)
        except ValueError as exc:
            raise StudyError(f"{self.path}: [search] {exc}") from None


def load_plan(path: str | Path) -> StudyPlan:
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file {str(path)!r} does not exist")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"study file {str(path)!r} is not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - {"out", "search", "retrain", "prune", "export"})
    if unknown:
        raise StudyError(f"study file {str(path)!r}: unknown table(s)/key(s) {', '.join(unknown)}")
    retrain, prune, export = doc.get("retrain", {}), dict(doc.get("prune", {})), doc.get("export", {})
    method = prune.pop("method", "resrep")
    if method not in PRUNE_METHODS:
        raise StudyError(f"[prune] method {method!r}: valid methods are {', '.join(PRUNE_METHODS)}")
    plan = StudyPlan(
        path=path, out=Path(doc.get("out", f"runs/{path.stem}")), search=dict(doc.get("search", {})),
        retrain_epochs=int(retrain.get("epochs", 10)), prune_method=method,
        target_flops=str(prune.pop("target_flops", "0.5x")), prune_epochs=int(prune.pop("epochs", 2)),
        finetune_epochs=int(prune.pop("finetune_epochs", 1)), prune_options=prune,
        torchscript=bool(export.get("torchscript", True)),
    )
    if plan.retrain_epochs < 1 or plan.prune_epochs < 1 or plan.finetune_epochs < 0:
        raise StudyError(f"{path}: [retrain] epochs and [prune] epochs must be >= 1, finetune_epochs >= 0")
    try:
        parse_target(plan.target_flops)  # a bad target fails now, not after the search
    except ValueError as exc:
        raise StudyError(f"{path}: [prune] target_flops: {exc}") from None
    plan.search_config()  # so does a bad [search] table
    return plan

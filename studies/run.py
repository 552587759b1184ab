"""Run a whole study: search under the budget -> retrain the winner -> prune -> export -> report.

    python -m studies.run studies/tiny_e2e.toml

A study file has a ``[search]`` table (the keys of ``search.py``'s flags, underscored), and
``[retrain]``, ``[prune]``, ``[export]`` tables (see `StudyPlan`). Every artifact goes under one
folder (``out``, default ``runs/<file stem>``). Each finished stage leaves ``<stage>/done.json``;
running the same command again skips finished stages and resumes the unfinished one (the search
resumes its Optuna study), so a killed run never redoes finished work.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

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


def load_plan(path: str | Path) -> StudyPlan:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"study file {str(path)!r} does not exist")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"study file {str(path)!r} is not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - {"out", "search", "retrain", "prune", "export"})
    if unknown:
        raise ValueError(f"study file {str(path)!r}: unknown table(s)/key(s) {', '.join(unknown)}")
    retrain, prune, export = doc.get("retrain", {}), dict(doc.get("prune", {})), doc.get("export", {})
    method = prune.pop("method", "resrep")
    if method not in PRUNE_METHODS:
        raise ValueError(f"[prune] method {method!r}: valid methods are {', '.join(PRUNE_METHODS)}")
    plan = StudyPlan(
        path=path, out=Path(doc.get("out", f"runs/{path.stem}")), search=dict(doc.get("search", {})),
        retrain_epochs=int(retrain.get("epochs", 10)), prune_method=method,
        target_flops=str(prune.pop("target_flops", "0.5x")), prune_epochs=int(prune.pop("epochs", 2)),
        finetune_epochs=int(prune.pop("finetune_epochs", 1)), prune_options=prune,
        torchscript=bool(export.get("torchscript", True)),
    )
    if plan.retrain_epochs < 1 or plan.prune_epochs < 1 or plan.finetune_epochs < 0:
        raise ValueError(f"{path}: [retrain] epochs and [prune] epochs must be >= 1, finetune_epochs >= 0")
    from pruning.targets import parse_target

    parse_target(plan.target_flops)  # a bad target fails now, not after the search
    return plan


def run_study(plan: StudyPlan, *, console: Console | None = None, stop_after: str | None = None) -> dict[str, Any]:
    """Run the unfinished stages of ``plan`` in order; returns every stage's record."""
    from studies import stages

    console = console or Console()
    plan.out.mkdir(parents=True, exist_ok=True)
    steps: dict[str, Callable[[StudyPlan, dict[str, Any], Console], dict[str, Any]]] = {
        "search": stages.search, "retrain": stages.retrain, "prune": stages.prune,
        "export": stages.export, "report": stages.report,
    }
    records: dict[str, Any] = {}
    for stage in STAGES:
        marker = plan.stage_dir(stage) / "done.json"
        if marker.is_file():
            records[stage] = json.loads(marker.read_text())
            console.log(f"[dim]{stage}: done earlier, skipped ({marker})")
        else:
            console.rule(f"{plan.path.stem}: {stage}")
            started = time.time()
            plan.stage_dir(stage).mkdir(parents=True, exist_ok=True)
            record = steps[stage](plan, records, console)
            record["seconds"] = round(time.time() - started, 1)
            records[stage] = record
            _write_atomic(marker, json.dumps(record, indent=2, default=str))
        if stage == stop_after:
            break
    return records


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help="study file (TOML) with [search], [retrain], [prune], [export] tables")
    parser.add_argument("--stop-after", choices=STAGES, help="stop after this stage (the rest runs next time)")
    args = parser.parse_args(argv)
    console = Console()
    try:
        plan = load_plan(args.study)
        records = run_study(plan, console=console, stop_after=args.stop_after)
    except ValueError as exc:  # bad study file, data, checkpoint or target: a message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "report" in records:
        console.print(f"report: {records['report']['report']}")
    console.print(f"artifacts: {plan.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

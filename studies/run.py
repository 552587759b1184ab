"""Run a whole study: search under the budget -> retrain the winner -> prune -> export -> report.

    python -m studies.run studies/tiny_e2e.toml
    python -m studies.run studies/tiny_e2e.toml --set search.trials=2 --set out=runs/quick

``--set TABLE.KEY=VALUE`` (repeatable) overrides one key of the file, as if the file said so (see
`studies.plan.apply_overrides`); the override is part of the study, so give the same ones on a rerun.

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
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console

from dscnn.checkpoint import CheckpointError, write_text_atomic
from dscnn.data import DataError
from dscnn.environment import git_revision
from dscnn.measure_cache import CacheUnusable
from searchspace.identity import SearchError
from searchspace.storage import JournalDamaged
from studies import stages
from studies.plan import STAGES, StudyError, StudyPlan, load_plan

#: The stage whose record's checkpoint each stage reads (a study with stage 2: retrain names the stage-2 run).
READS_CHECKPOINT_OF = {"prune": "retrain", "export": "prune"}

#: A stage record's finish time (seconds since the epoch): a stage that finished before an earlier stage
#: did (that stage was run again since) is out of date and runs again.
FINISHED_AT = "finished_at"

__all__ = ["FINISHED_AT", "READS_CHECKPOINT_OF", "STAGES", "StudyError", "StudyPlan", "load_plan", "main",
           "run_study", "stale_stages"]


def stale_stages(planned: Sequence[str], stored: dict[str, Any]) -> dict[str, str]:
    """The planned stages that must run, with why: not finished, or finished before an earlier stage
    last finished (its inputs changed since), and every stage after the first of those (they read
    what it will write). Records without a finish time (written before it was recorded) are never
    out of date: a clean checkout's file times say nothing about the order the stages ran in."""
    reasons: dict[str, str] = {}
    latest: tuple[float, str] | None = None  # the last finish time among the earlier stages, and whose
    for stage in planned:
        record = stored.get(stage)
        finished = record.get(FINISHED_AT) if record is not None else None
        if reasons:
            reasons[stage] = f"an earlier stage ({next(iter(reasons))}) runs again"
        elif record is None:
            reasons[stage] = "it is not finished"
        elif latest is not None and finished is not None and float(finished) < latest[0]:
            reasons[stage] = f"{latest[1]} finished after it"
        if finished is not None and (latest is None or float(finished) > latest[0]):
            latest = (float(finished), stage)
    return reasons

def run_study(plan: StudyPlan, *, console: Console | None = None, stop_after: str | None = None) -> dict[str, Any]:
    """Run the unfinished stages of ``plan`` in order; returns every stage's record."""
    console = console or Console()
    plan.out.mkdir(parents=True, exist_ok=True)
    steps: dict[str, Callable[[StudyPlan, dict[str, Any], Console], dict[str, Any]]] = {
        "search": stages.search, "stage2": stages.stage2, "retrain": stages.retrain, "prune": stages.prune,
        "export": stages.export, "report": stages.report,
    }
    records: dict[str, Any] = {}
    planned = STAGES[:STAGES.index(stop_after) + 1] if stop_after else STAGES
    stored_records = {s: json.loads(m.read_text()) for s in planned if (m := plan.stage_dir(s) / "done.json").is_file()}
    reasons = stale_stages(planned, stored_records)
    # checkpoints are not committed: a clean checkout of a finished study has the records only. A finished
    # stage runs again only when a stage that will run reads the checkpoint it made (and it is gone)
    will_run = set(reasons)
    for stage in reversed(planned):
        source = READS_CHECKPOINT_OF.get(stage)
        if stage in will_run and source in stored_records and source not in will_run \
                and stages.lost_checkpoint(stored_records[source]):
            will_run.add(source)
            reasons[source] = f"its checkpoint {stored_records[source]['checkpoint']} is missing"
    for stage in planned:
        marker = plan.stage_dir(stage) / "done.json"
        stored = stored_records.get(stage)
        if stored is not None and stage not in will_run:
            records[stage] = stored
            console.log(f"[dim]{stage}: done earlier, skipped ({marker})")
        else:
            if stored is not None:
                console.log(f"{stage}: done earlier, but {reasons[stage]}: running it again")
            console.rule(f"{plan.path.stem}: {stage}")
            started, revision = time.time(), git_revision()  # at the start: the stage imports its code now
            plan.stage_dir(stage).mkdir(parents=True, exist_ok=True)
            record = steps[stage](plan, records, console)
            record["seconds"] = round(time.time() - started, 1)
            record.setdefault("git", revision)  # stages run at different times, maybe on other code
            record[FINISHED_AT] = time.time()
            records[stage] = record
            write_text_atomic(marker, json.dumps(record, indent=2, default=str))
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help="study file (TOML) with [search], [retrain], [prune], [export] tables")
    parser.add_argument("--stop-after", choices=STAGES, help="stop after this stage (the rest runs next time)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="TABLE.KEY=VALUE",
                        help="override one key of the study file, e.g. search.trials=2 or out=runs/x (repeatable)")
    args = parser.parse_args(argv)
    console = Console()
    try:
        plan = load_plan(args.study, args.overrides)
        records = run_study(plan, console=console, stop_after=args.stop_after)
    except (StudyError, DataError, CheckpointError, SearchError, JournalDamaged, CacheUnusable) as exc:  # the input, not a bug
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "report" in records:
        console.print(f"report: {records['report']['report']}")
    console.print(f"artifacts: {plan.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

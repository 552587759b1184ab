"""Run a whole study: search under the budget -> retrain the winner -> prune -> export -> report.

    python -m studies.run studies/tiny_e2e.toml
    python -m studies.run studies/tiny_e2e.toml --set search.trials=2 --set out=runs/quick

``--set TABLE.KEY=VALUE`` (repeatable) overrides one key of the file, as if the file said so (see
`studies.plan.apply_overrides`); the override is part of the study, so give the same ones on a rerun.

A study file has a ``[search]`` table (the keys of ``search.py``'s flags, underscored), and
``[retrain]``, ``[prune]``, ``[export]`` tables (see `StudyPlan`). Every artifact goes under one
folder (``out``, default ``runs/<file stem>``). Each finished stage leaves ``<stage>/done.json``;
running the same command again skips finished stages and resumes the unfinished one (the search
resumes its Optuna study), so a killed run never redoes finished work. A stage that finished before an
earlier stage last did (that one was run again) is redone, and so is every stage after one whose
record came out changed (`run_study`); ``--redo STAGE`` runs a finished stage again.
"""

from __future__ import annotations

import argparse
import json
import math
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
from studies.stages import FINISHED_AT

#: The stage whose record's checkpoint each stage reads (a study with stage 2: retrain names the stage-2 run).
READS_CHECKPOINT_OF = {"prune": "retrain", "export": "prune"}

#: Which stage reads each stage's checkpoint (the inverse of `READS_CHECKPOINT_OF`).
CHECKPOINT_READER = {source: reader for reader, source in READS_CHECKPOINT_OF.items()}

__all__ = ["FINISHED_AT", "READS_CHECKPOINT_OF", "STAGES", "StudyError", "StudyPlan", "load_plan", "main",
           "run_study", "stale_stages"]


def stale_stages(planned: Sequence[str], stored: dict[str, Any]) -> dict[str, str]:
    """The planned stages whose own record says they must run, with why: not finished, or finished
    before an earlier stage last did (that stage ran again since, maybe with ``--stop-after``).

    A record without a finish time was written before the time was recorded, so it is older than any
    record that has one; records that all lack it (a clean checkout of a study finished before then)
    are never out of date: their file times say nothing about the order the stages ran in.
    """
    reasons: dict[str, str] = {}
    latest: tuple[float, str] | None = None  # the last finish time among the earlier stages, and whose
    for stage in planned:
        record = stored.get(stage)
        if record is None:
            reasons[stage] = "it is not finished"
            continue
        finished = float(record.get(FINISHED_AT, -math.inf))
        if latest is not None and finished < latest[0]:
            reasons[stage] = f"{latest[1]} finished after it"
        if latest is None or finished > latest[0]:
            latest = (finished, stage)
    return reasons


def run_study(plan: StudyPlan, *, console: Console | None = None, stop_after: str | None = None,
              redo: Sequence[str] = ()) -> dict[str, Any]:
    """Run the stages of ``plan`` that are unfinished or out of date, in order, and every stage after
    one whose record came out changed; returns every stage's record.

    ``redo`` names finished stages to run again. A stage that runs again and produces the record it
    had (`stages.record_digest`: up to its time, revision and restore details) changes nothing
    downstream and keeps its finish time: ``redo=("search",)`` on a finished search reruns nothing
    else. A stage whose done.json was deleted has no record to compare with: everything after it runs.
    """
    console = console or Console()
    planned = STAGES[:STAGES.index(stop_after) + 1] if stop_after else STAGES
    unknown = sorted(set(redo) - set(STAGES))
    if unknown:
        raise StudyError(f"--redo {', '.join(unknown)}: not a stage (stages: {', '.join(STAGES)})")
    beyond = [s for s in STAGES if s in redo and s not in planned]
    if beyond:
        raise StudyError(f"--redo {', '.join(beyond)}: after --stop-after {stop_after}, so it would not run")
    plan.out.mkdir(parents=True, exist_ok=True)
    steps: dict[str, Callable[[StudyPlan, dict[str, Any], Console], dict[str, Any]]] = {
        "search": stages.search, "stage2": stages.stage2, "retrain": stages.retrain, "prune": stages.prune,
        "export": stages.export, "report": stages.report,
    }
    records: dict[str, Any] = {}
    stored_records = {s: json.loads(m.read_text()) for s in planned if (m := plan.stage_dir(s) / "done.json").is_file()}
    reasons = stale_stages(planned, stored_records)
    for stage in planned:
        if stage in redo and stage not in reasons:
            reasons[stage] = "it was asked to be redone (--redo)"
    changed: list[str] = []  # stages run this time whose record is new or not the one stored

    def needed(stage: str) -> str | None:
        """Why ``stage`` runs now (None: it is skipped), given what has changed so far."""
        if stage in reasons:
            return reasons[stage]
        if changed:
            return f"{changed[0]} changed"
        # checkpoints are not committed: a clean checkout of a finished study has the records only. A finished
        # stage runs again only when a stage that will run reads the checkpoint it made (and it is gone)
        reader = CHECKPOINT_READER.get(stage)
        record = stored_records.get(stage)
        if reader in planned and record is not None and stages.lost_checkpoint(record) and needed(reader):
            return f"its checkpoint {record['checkpoint']} is missing and {reader} reads it"
        return None

    for stage in planned:
        marker = plan.stage_dir(stage) / "done.json"
        stored = stored_records.get(stage)
        reason = needed(stage)
        if reason is None:
            records[stage] = stored
            console.log(f"[dim]{stage}: done earlier, skipped ({marker})")
            continue
        if stored is not None:
            console.log(f"{stage}: done earlier, but {reason}: running it again")
        console.rule(f"{plan.path.stem}: {stage}")
        started, revision = time.time(), git_revision()  # at the start: the stage imports its code now
        plan.stage_dir(stage).mkdir(parents=True, exist_ok=True)
        record = steps[stage](plan, records, console)
        record["seconds"] = round(time.time() - started, 1)
        record.setdefault("git", revision)  # stages run at different times, maybe on other code
        earlier = max((float(r.get(FINISHED_AT, -math.inf)) for r in records.values()), default=-math.inf)
        if stored is not None and stages.record_digest(record) == stages.record_digest(stored):
            finished = max(float(stored.get(FINISHED_AT, -math.inf)), earlier + 1e-3)  # not out of date now
        else:
            changed.append(stage)
            finished = max(time.time(), earlier + 1e-3)  # after every earlier stage, whatever the clocks say
        if finished > -math.inf:  # an unchanged record from before finish times were recorded stays without one
            record[FINISHED_AT] = finished
        records[stage] = record
        write_text_atomic(marker, json.dumps(record, indent=2, default=str))
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help="study file (TOML) with [search], [retrain], [prune], [export] tables")
    parser.add_argument("--stop-after", choices=STAGES, help="stop after this stage (the rest runs next time)")
    parser.add_argument("--redo", action="append", default=[], choices=STAGES, metavar="STAGE",
                        help="run this finished stage again (repeatable); the stages after it run again only if "
                             "its record comes out changed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="TABLE.KEY=VALUE",
                        help="override one key of the study file, e.g. search.trials=2 or out=runs/x (repeatable)")
    args = parser.parse_args(argv)
    console = Console()
    try:
        plan = load_plan(args.study, args.overrides)
        records = run_study(plan, console=console, stop_after=args.stop_after, redo=args.redo)
    except (StudyError, DataError, CheckpointError, SearchError, JournalDamaged, CacheUnusable) as exc:  # the input, not a bug
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "report" in records:
        console.print(f"report: {records['report']['report']}")
    console.print(f"artifacts: {plan.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A stage that finished before an earlier stage ran again is out of date and runs again (studies.run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from studies.plan import STAGES
from studies.run import FINISHED_AT, load_plan, run_study, stale_stages


def _done(*times: float | None) -> dict[str, Any]:
    return {s: ({} if t is None else {FINISHED_AT: t}) for s, t in zip(STAGES, times)}


def test_a_finished_study_in_order_has_nothing_to_run() -> None:
    assert stale_stages(STAGES, _done(1, 2, 3, 4, 5, 6)) == {}


def test_a_stage_older_than_an_earlier_one_runs_again_with_everything_after_it() -> None:
    reasons = stale_stages(STAGES, _done(1, 2, 7, 4, 5, 6))  # retrain ran again after prune had used it
    assert list(reasons) == ["prune", "export", "report"]
    assert reasons["prune"] == "retrain finished after it"
    assert reasons["report"] == "an earlier stage (prune) runs again"


def test_an_unfinished_stage_reruns_every_later_one() -> None:
    stored = _done(1, 2, 3, 4, 5, 6)
    del stored["stage2"]
    assert list(stale_stages(STAGES, stored)) == ["stage2", "retrain", "prune", "export", "report"]


def test_records_without_a_finish_time_are_never_out_of_date() -> None:
    """Studies committed before the time was recorded: a clean checkout must not rerun hours of work."""
    assert stale_stages(STAGES, _done(None, None, None, None, None, None)) == {}
    assert stale_stages(STAGES, _done(5, None, None, 4, None, None)) == {"prune": "search finished after it",
                                                                       "export": "an earlier stage (prune) runs again",
                                                                       "report": "an earlier stage (prune) runs again"}


def test_the_runner_reruns_what_an_upstream_rerun_made_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import studies.stages

    study_file = tmp_path / "s.toml"
    study_file.write_text(f'out = "{tmp_path / "study"}"\n[search]\nstudy_name = "x"\n')
    plan = load_plan(study_file)
    ran: list[str] = []
    for stage in STAGES:
        monkeypatch.setattr(studies.stages, stage, lambda plan, records, console, stage=stage: ran.append(stage) or {})
    run_study(plan)
    assert ran == list(STAGES)
    ran.clear()
    run_study(plan)
    assert ran == []  # all finished, in order
    (plan.stage_dir("prune") / "done.json").unlink()  # the user reruns the prune stage ...
    run_study(plan, stop_after="prune")
    assert ran == ["prune"]
    ran.clear()
    run_study(plan)  # ... and the export and report made from the old pruned model are redone
    assert ran == ["export", "report"]
    record = json.loads((plan.stage_dir("report") / "done.json").read_text())
    assert record[FINISHED_AT] >= json.loads((plan.stage_dir("prune") / "done.json").read_text())[FINISHED_AT]

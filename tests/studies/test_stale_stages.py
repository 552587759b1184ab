"""A stage that finished before an earlier stage ran again is out of date and runs again (studies.run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from studies.plan import STAGES
from studies.run import FINISHED_AT, StudyError, load_plan, run_study, stale_stages


def _done(*times: float | None) -> dict[str, Any]:
    return {s: ({} if t is None else {FINISHED_AT: t}) for s, t in zip(STAGES, times)}


def test_a_finished_study_in_order_has_nothing_to_run() -> None:
    assert stale_stages(STAGES, _done(1, 2, 3, 4, 5, 6)) == {}


def test_a_stage_older_than_an_earlier_one_is_out_of_date() -> None:
    reasons = stale_stages(STAGES, _done(1, 2, 7, 4, 5, 6))  # retrain ran again after prune had used it
    assert reasons == {s: "retrain finished after it" for s in ("prune", "export", "report")}
    stored = _done(1, 2, 3, 4, 5, 6)
    del stored["stage2"]
    assert stale_stages(STAGES, stored) == {"stage2": "it is not finished"}  # what follows depends on its record


def test_records_without_a_finish_time_are_older_than_any_with_one() -> None:
    """Studies committed before the time was recorded: a clean checkout must not rerun hours of work,
    but a stage of such a study run again since makes the old records after it out of date."""
    assert stale_stages(STAGES, _done(None, None, None, None, None, None)) == {}
    assert stale_stages(STAGES, _done(None, None, None, 4, None, None)) == {"export": "prune finished after it",
                                                                           "report": "prune finished after it"}
    assert list(stale_stages(STAGES, _done(5, None, None, 4, None, None))) == list(STAGES[1:])


def test_the_runner_reruns_what_an_upstream_rerun_made_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import studies.stages

    study_file = tmp_path / "s.toml"
    study_file.write_text(f'out = "{tmp_path / "study"}"\n[search]\nstudy_name = "x"\n')
    plan = load_plan(study_file)
    ran: list[str] = []
    outputs: dict[str, dict[str, Any]] = {stage: {} for stage in STAGES}  # what each fake stage's record holds
    for stage in STAGES:
        monkeypatch.setattr(studies.stages, stage, lambda plan, records, console, stage=stage: ran.append(stage) or
                            dict(outputs[stage]))
    run_study(plan)
    assert ran == list(STAGES)
    ran.clear()
    run_study(plan)
    assert ran == []  # all finished, in order
    run_study(plan, stop_after="prune", redo=["prune"])  # the user redoes the prune stage: the same record ...
    assert ran == ["prune"]
    run_study(plan)
    assert ran == ["prune"]  # ... leaves nothing after it out of date
    ran.clear()
    outputs["prune"] = {"chosen": "resrep"}  # redone again, it comes out otherwise
    run_study(plan, stop_after="prune", redo=["prune"])
    assert ran == ["prune"]
    ran.clear()
    run_study(plan)  # ... and the export and report made from the old pruned model are redone
    assert ran == ["export", "report"]
    record = json.loads((plan.stage_dir("report") / "done.json").read_text())
    assert record[FINISHED_AT] >= json.loads((plan.stage_dir("prune") / "done.json").read_text())[FINISHED_AT]
    ran.clear()
    run_study(plan, redo=["search"])  # a finished search redone, with the same record ...
    assert ran == ["search"]  # ... changes nothing downstream
    run_study(plan)
    assert ran == ["search"]  # and leaves nothing out of date
    ran.clear()
    (plan.stage_dir("search") / "done.json").unlink()  # deleted: nothing to compare with, so all of it runs
    run_study(plan)
    assert ran == list(STAGES)
    ran.clear()
    outputs["search"] = {"best": 7}  # a search that came out otherwise: everything after it runs again
    run_study(plan, redo=["search"])
    assert ran == list(STAGES)
    with pytest.raises(StudyError, match="--redo bogus: not a stage"):
        run_study(plan, redo=["bogus"])
    with pytest.raises(StudyError, match="--redo export: after --stop-after prune, so it would not run"):
        run_study(plan, stop_after="prune", redo=["export"])


def test_the_record_digest_ignores_volatile_fields_and_treats_nan_as_itself() -> None:
    from studies.stages import record_digest

    a = {"best": float("nan"), "trials": [1, 2], "seconds": 3.0, "git": "abc", FINISHED_AT: 1.0}
    assert record_digest(a) == record_digest({"trials": (1, 2), "best": float("nan"), "restored": {"x": 1}})
    assert record_digest(a) != record_digest({**a, "trials": [1, 3]})

"""The study's prune stage: several methods on the winner at equal epochs, each resumable, one exported."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from rich.console import Console

import dscnn
from studies import stages, timing_drift
from studies.plan import StudyError, StudyPlan, load_plan
from studies.study_report import _methods_section, _pruning_section
from tests.pruning.tiny import tiny_overrides

SEARCH = ('[search]\ndevice = "cpu"\ntrain_per_class = 4\nval_per_class = 2\nbatch_size = 20\nthreads = 1\n'
          "no_baselines = true\n")


def _plan(tmp_path: Path, prune: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(f'out = "{tmp_path / "run"}"\n{SEARCH}[prune]\n{prune}')
    return path


def test_methods_and_their_own_tables_are_parsed(tmp_path: Path) -> None:
    plan = load_plan(_plan(tmp_path, 'methods = ["resrep", "magnitude"]\ntarget_latency = "0.6x"\nepochs = 3\n'
                                      "finetune_epochs = 2\n[prune.resrep]\nlasso = 1e-4\n"))
    assert plan.methods == ("resrep", "magnitude") and plan.target_latency == "0.6x" and plan.target_flops == ""
    assert plan.options_of("resrep") == {"lasso": 1e-4} and plan.options_of("magnitude") == {}
    single = load_plan(_plan(tmp_path, 'method = "csgd"\nepochs = 1\nsteps = 2\n'))
    assert single.methods == ("csgd",) and single.options_of("csgd") == {"steps": 2}  # flat knobs: one method


@pytest.mark.parametrize(
    "prune, message",
    [
        ('method = "resrep"\nmethods = ["csgd"]\n', "method or methods"),
        ('methods = ["resrep", "resrep"]\n', "each method once"),
        ('methods = ["resrep", "pruneall"]\n', "method 'pruneall'"),
        ('target_latency = "0.6x"\ntarget_flops = "0.5x"\n', "not both"),
        ('target_latency = "0ms"\n', "target_latency"),
        ('methods = ["resrep", "csgd"]\nlasso = 1e-4\n', "its own table"),
        ('methods = ["resrep"]\n[prune.csgd]\nsteps = 2\n', "not among the methods"),
    ],
)
def test_bad_prune_tables_fail_before_anything_runs(tmp_path: Path, prune: str, message: str) -> None:
    with pytest.raises(StudyError, match=message):
        load_plan(_plan(tmp_path, prune))


def test_every_method_runs_at_equal_epochs_resumes_and_the_best_on_validation_is_exported(tmp_path: Path) -> None:
    winner = tmp_path / "winner.pt"
    dscnn.save_checkpoint(winner, dscnn.create_model("dscnn_t0", **tiny_overrides("dscnn_t0")))
    plan = load_plan(_plan(tmp_path, 'methods = ["resrep", "magnitude"]\ntarget_flops = "0.6x"\nepochs = 1\n'
                                      "finetune_epochs = 0\n[prune.resrep]\nmask_interval = 1\nwarmup_epochs = 0\n"))
    records = {"retrain": {"checkpoint": str(winner)}}
    console = Console(quiet=True)
    record = stages.prune(plan, records, console)
    runs = record["methods"]
    assert set(runs) == {"resrep", "magnitude"} and all(r["met_target"] for r in runs.values())
    assert runs["resrep"]["epochs"] == {"regularized": 1, "finetune": 0}
    assert runs["magnitude"]["epochs"] == {"regularized": 0, "finetune": 1}  # the same total
    for run in runs.values():
        assert run["report"]["after"]["macs"] <= 0.6 * run["report"]["before"]["macs"]
        assert Path(run["checkpoint"]).is_file()
    assert record["chance"] == 0.1  # 10 classes
    top1 = {m: r["report"]["after"]["accuracy"] for m, r in runs.items()}
    assert {m: r["collapsed"] for m, r in runs.items()} == {m: top1[m] <= stages.COLLAPSED * 0.1 for m in runs}
    usable = [m for m in runs if not runs[m]["collapsed"]]  # a tiny untrained winner: maybe none is
    assert record["collapsed"] == (len(usable) < len(runs))
    best = max(usable, key=top1.__getitem__) if usable else None
    assert record["chosen"] == best and record["exported"] == ("pruned" if usable else "unpruned")
    assert record["checkpoint"] == (runs[best]["checkpoint"] if best else str(winner))
    stamps = {m: (plan.stage_dir("prune") / m / "record.json").stat().st_mtime_ns for m in runs}
    stored = json.loads(json.dumps(runs, default=str))
    assert stages.prune(plan, records, console)["methods"] == stored  # resumed from the stored records
    assert stamps == {m: (plan.stage_dir("prune") / m / "record.json").stat().st_mtime_ns for m in runs}
    Path(runs["magnitude"]["checkpoint"]).unlink()  # a clean checkout: the records are committed, no *.pt
    again = stages.prune(plan, records, console)["methods"]
    assert Path(again["magnitude"]["checkpoint"]).is_file() and again["resrep"] == stored["resrep"]
    assert (plan.stage_dir("prune") / "magnitude" / "record.json").stat().st_mtime_ns != stamps["magnitude"]
    assert (plan.stage_dir("prune") / "resrep" / "record.json").stat().st_mtime_ns == stamps["resrep"]
    table = "\n".join(_methods_section(record))
    assert "| magnitude" in table and "0 + 1" in table
    assert (f"| {best} (exported) |" in table) if best else ("(exported) |" not in table and "none was exported" in table)


def test_a_fractional_latency_target_is_resolved_once_for_every_method(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from dscnn import latency

    winner = tmp_path / "winner.pt"
    dscnn.save_checkpoint(winner, dscnn.create_model("dscnn_t0", **tiny_overrides("dscnn_t0")))
    console = Console(quiet=True)
    timed: list[str] = []

    def fake(median_ms: float, busy: bool = False) -> None:
        def measure(model: object, settings: latency.LatencySettings) -> latency.LatencyResult:
            timed.append(f"{settings.device}/{settings.runtime}/{settings.resolution}")
            return latency.LatencyResult(median_ms, median_ms, median_ms, (median_ms,), 1.0, None, 1, False, busy=busy)
        monkeypatch.setattr(latency, "measure_latency_ms", measure)

    plan = load_plan(_plan(tmp_path, 'methods = ["csgd", "magnitude"]\ntarget_latency = "0.6x"\n'))
    fake(5.0)
    assert stages._shared_latency_target(plan, str(winner), console) == "3ms"  # 0.6 x the one measurement
    assert timed == ["cpu/eager/32"]  # the runs' own settings, at the model's resolution
    fake(99.0)
    assert stages._shared_latency_target(plan, str(winner), console) == "3ms"  # a resumed stage keeps its target
    assert len(timed) == 1
    half = load_plan(_plan(tmp_path, 'methods = ["csgd", "magnitude"]\ntarget_latency = "0.5x"\n'))
    fake(4.0)
    assert stages._shared_latency_target(half, str(winner), console) == "2ms"  # another target: measured again
    fake(10.0, busy=True)
    assert stages._shared_latency_target(plan, str(winner), console) == "6ms"
    fake(5.0)
    assert stages._shared_latency_target(plan, str(winner), console) == "3ms"  # a busy number was never stored
    absolute = load_plan(_plan(tmp_path, 'method = "csgd"\ntarget_latency = "3ms"\n'))
    assert stages._shared_latency_target(absolute, str(winner), console) == "3ms"

    # a machine slowed as a whole: 9 ms against the 5 ms stage 2 timed side by side, then 5.5 ms
    machine = iter([9.0, 5.5])
    monkeypatch.setattr(latency, "measure_latency_ms", lambda model, settings: latency.LatencyResult(
        *(lambda ms: (ms, ms, ms, (ms,), 1.0, None, 1, False))(next(machine))))
    monkeypatch.setattr(timing_drift, "TIMING_PAUSE_S", 0.0)
    (plan.stage_dir("prune") / "latency_target.json").unlink()
    assert stages._shared_latency_target(plan, str(winner), console, reference_ms=5.0) == "3.3ms"
    assert (plan.stage_dir("prune") / "latency_target.json").is_file()
    (plan.stage_dir("prune") / "latency_target.json").unlink()
    machine = iter([9.0] * timing_drift.TIMING_ATTEMPTS)  # slowed in every try: used for this run, never stored
    assert stages._shared_latency_target(plan, str(winner), console, reference_ms=5.0) == "5.4ms"
    assert not (plan.stage_dir("prune") / "latency_target.json").exists()
    machine = iter([9.0])  # stage 2 timed another batch: no reference, one timing
    batched = dataclasses.replace(plan.search_config(), latency=plan.search_config().latency.replace(batch=8))
    monkeypatch.setattr(type(plan), "search_config", lambda self: batched)
    assert stages._shared_latency_target(plan, str(winner), console, reference_ms=5.0) == "5.4ms"
    records = {"retrain": {"from_stage2": "trial 3"},
               "stage2": {"summary": {"rows": [{"label": "resnet20", "latency_ms": 1.0},
                                               {"label": "trial 3", "latency_ms": 5.0}]}}}
    assert stages._stage2_latency_ms(records) == 5.0 and stages._stage2_latency_ms({}) is None


def test_the_epochs_recorded_are_the_reports_and_must_match_the_planned_split() -> None:
    magnitude = {"regularized": 0, "finetune": 3}
    assert stages.epochs_run("magnitude", {"epochs": magnitude}, magnitude) == magnitude
    csgd = {"regularized": 2, "finetune": 1}
    with pytest.raises(StudyError, match=r"^prune: csgd ran 2 regularised \+ 0 fine-tuning epochs, not the .* 2 \+ 1$"):
        stages.epochs_run("csgd", {"epochs": {"regularized": 2, "finetune": 0}}, csgd)
    with pytest.raises(StudyError, match=r"csgd ran 0 regularised \+ 3 fine-tuning epochs, not the .* 2 \+ 1$"):
        stages.epochs_run("csgd", {"epochs": magnitude}, csgd)  # the right total, the wrong split
    with pytest.raises(StudyError, match="does not state the epochs"):
        stages.epochs_run("resrep", {"method": "resrep"}, csgd)  # a report without epochs cannot vouch for the budget


class _Report:
    """What the prune stage reads of a `pruning.report.PruneReport`, stating ``epochs``."""

    latency = None
    output = "pruned.pt"

    def __init__(self, epochs: dict[str, int]) -> None:
        self.epochs = epochs

    def print(self, console: Console) -> None:
        pass

    def to_dict(self) -> dict[str, object]:
        return {"method": "magnitude", "epochs": self.epochs, "after": {"accuracy": 0.5}}


@pytest.mark.parametrize(
    "method, reported, planned",
    [
        ("magnitude", {"regularized": 0, "finetune": 1}, "0 + 3"),  # short of the budget
        ("csgd", {"regularized": 0, "finetune": 3}, "2 + 1"),  # the budget, but a regularised method never regularised
    ],
)
def test_a_report_off_the_planned_split_stops_the_stage_and_is_not_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, reported: dict[str, int], planned: str) -> None:
    from pruning import run

    plan = load_plan(_plan(tmp_path, f'method = "{method}"\nepochs = 2\nfinetune_epochs = 1\n'))
    monkeypatch.setattr(run, "run_pruning", lambda *a, **k: (None, _Report(reported)))
    ran = f"{reported['regularized']} regularised \\+ {reported['finetune']} fine-tuning"
    with pytest.raises(StudyError, match=f"{method} ran {ran} epochs, not the .* {planned.replace('+', chr(92) + '+')}$"):
        stages.prune(plan, {"retrain": {"checkpoint": str(tmp_path / "winner.pt")}}, Console(quiet=True))
    assert not (plan.stage_dir("prune") / method / "record.json").exists()  # a resume does not accept it


def test_a_stored_method_pruned_from_another_winner_is_pruned_again(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The retrain stage ran again (another winner, or another recipe): its methods' records are not reused."""
    from pruning import run
    from pruning.algorithm import PruningError

    calls: list[int] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise PruningError("not this time")

    monkeypatch.setattr(run, "run_pruning", refuse)
    plan = load_plan(_plan(tmp_path, 'method = "magnitude"\nepochs = 1\nfinetune_epochs = 1\n'))
    folder = plan.stage_dir("prune") / "magnitude"
    folder.mkdir(parents=True)
    source = stages.record_digest({"checkpoint": "winner.pt", "accuracy": 0.5, "seconds": 3.0})
    stored = {"method": "magnitude", "target": "0.5x", "met_target": True, "source": source,
              "report": {"epochs": {"regularized": 0, "finetune": 2}}}
    (folder / "record.json").write_text(json.dumps(stored))
    console = Console(quiet=True)
    same = stages.record_digest({"checkpoint": "winner.pt", "accuracy": 0.5, "seconds": 9.0, "restored": {}})
    assert stages._prune_one(plan, "magnitude", "winner.pt", same, None, console) == stored and calls == []
    other = stages.record_digest({"checkpoint": "winner.pt", "accuracy": 0.6})
    assert stages._prune_one(plan, "magnitude", "winner.pt", other, None, console)["error"] == "not this time"
    assert calls == [1]



@pytest.mark.parametrize(("method", "stored_split", "same", "other"), [
    ("magnitude", (0, 3), (2, 1), (2, 2)),  # another total: 4 epochs planned, 3 stored
    ("csgd", (2, 1), (2, 1), (1, 2)),  # the same 3 epochs split otherwise
])
def test_a_stored_method_run_off_the_planned_split_is_pruned_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, stored_split: tuple[int, int],
        same: tuple[int, int], other: tuple[int, int]) -> None:
    from pruning import run
    from pruning.algorithm import PruningError

    calls: list[int] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise PruningError("not this time")

    def plan_of(epochs: tuple[int, int]) -> StudyPlan:
        return load_plan(_plan(tmp_path, f'method = "{method}"\nepochs = {epochs[0]}\nfinetune_epochs = {epochs[1]}\n'))

    monkeypatch.setattr(run, "run_pruning", refuse)
    plan = plan_of(same)
    folder = plan.stage_dir("prune") / method
    folder.mkdir(parents=True)
    epochs = {"regularized": stored_split[0], "finetune": stored_split[1]}
    stored = {"method": method, "target": "0.5x", "met_target": True, "report": {"epochs": epochs}}
    (folder / "record.json").write_text(json.dumps(stored))
    assert stages._prune_one(plan, method, "winner.pt", "", None, Console(quiet=True)) == stored  # planned split: kept
    assert calls == []
    assert stages._prune_one(plan_of(other), method, "winner.pt", "", None,
                             Console(quiet=True))["error"] == "not this time"
    assert calls == [1]  # pruned again, not reused


def _faked(method: str, accuracy: float, met: bool = True, measured_ms: float = 2.5) -> dict[str, object]:
    """A method's record as `stages._prune_one` returns it, without training: a 3 ms latency target,
    ``measured_ms`` the pruned model's latency."""
    stats = {"params": 1_000, "macs": 1e6, "latency_ms": measured_ms, "accuracy": accuracy}
    report = {"method": method, "target": "3ms", "target_macs": 2e6, "before": {**stats, "params": 2_000, "macs": 2e6,
              "latency_ms": 4.0, "accuracy": 0.6}, "after": stats, "widths": {"stem.0.conv": [8, 4]},
              "macs_reduction": 0.5, "accuracy_after_prune": accuracy, "accuracy_before_prune": 0.6, "algorithm": {},
              "latency": {"after": {"median_ms": measured_ms}, "target_ms": 3.0, "met": met},
              "epochs": {"regularized": 0, "finetune": 1}}
    return {"method": method, "checkpoint": f"{method}.pt", "report": report, "met_target": met,
            "epochs": {"regularized": 0, "finetune": 1}, "test_accuracy": accuracy, "target": "3ms"}


def _fake_methods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runs: dict[str, dict[str, object]]) -> Path:
    """A tiny unpruned winner on disk (its class count sets chance: 10) and ``runs`` as the methods' outcomes."""
    winner = tmp_path / "winner.pt"
    dscnn.save_checkpoint(winner, dscnn.create_model("dscnn_t0", **tiny_overrides("dscnn_t0")))
    monkeypatch.setattr(stages, "_prune_one", lambda plan, method, *args: runs[method])
    return winner


def test_a_collapsed_model_that_met_the_target_is_not_exported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from studies.study_report import _collapse_warning

    runs = {"resrep": _faked("resrep", 0.11), "magnitude": _faked("magnitude", 0.45), "csgd": _faked("csgd", 0.5, False, 3.3)}
    winner = _fake_methods(tmp_path, monkeypatch, runs)
    plan = load_plan(_plan(tmp_path, 'methods = ["resrep", "magnitude", "csgd"]\ntarget_latency = "3ms"\n'))
    record = stages.prune(plan, {"retrain": {"checkpoint": str(winner)}}, Console(quiet=True))
    assert record["chosen"] == "magnitude" and record["exported"] == "pruned"  # csgd is more accurate but missed
    assert record["checkpoint"] == "magnitude.pt" and record["report"] == runs["magnitude"]["report"]
    assert record["collapsed"] and record["methods"]["resrep"]["collapsed"]  # the flag: a model met it at chance
    assert not record["methods"]["magnitude"]["collapsed"]
    assert record["reason"] == ("resrep: met the target but collapsed (top-1 0.1100, chance 0.1000); magnitude: met "
                                "the target (top-1 0.4500); csgd: missed the target by 10.0%: 3.3 ms measured, target "
                                "3 ms (top-1 0.5000)")
    json.dumps(record)  # the stage's done.json
    warning = "\n".join(_collapse_warning(record))
    assert "resrep met the target at chance" in warning and "not exported" in warning
    table = "\n".join(_methods_section(record))
    assert "| magnitude (exported) |" in table and "| resrep | 0 + 1 | yes, but collapsed (at chance) |" in table
    section = "\n".join(_pruning_section(record, {"accuracy": 0.6}))
    assert section.startswith("## Before and after pruning (magnitude, latency target 3 ms)")
    assert "| pruned (magnitude) | 1,000 |" in section and warning in section and "widths.png" in section
    assert "unpruned" not in section


@pytest.mark.parametrize("outcomes, reason", [
    ({"resrep": _faked("resrep", 0.1), "magnitude": _faked("magnitude", 0.12)},  # every one that met it collapsed
     "resrep: met the target but collapsed (top-1 0.1000, chance 0.1000); magnitude: met the target but collapsed"),
    ({"resrep": {"method": "resrep", "met_target": False, "missed": True,
                 "error": "resrep: the pruned model runs in 3.3 ms (measured), above the latency target 3 ms"},
      "magnitude": _faked("magnitude", 0.4, met=False, measured_ms=3.6)},  # none met it
     "resrep: missed the target (resrep: the pruned model runs in 3.3 ms (measured), above the latency target 3 ms); "
     "magnitude: missed the target by 20.0%: 3.6 ms measured, target 3 ms (top-1 0.4000)"),
], ids=["all-collapsed", "none-met"])
def test_without_a_usable_pruned_model_the_unpruned_winner_is_exported_and_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcomes: dict[str, dict[str, object]], reason: str) -> None:
    import functools

    from dscnn import export
    from studies import study_report
    from studies.run import run_study

    winner = _fake_methods(tmp_path, monkeypatch, outcomes)
    monkeypatch.setattr(study_report, "_dashboard_screenshot", lambda *args: False)  # no browser here
    # the export's checks on two images, without timing: the stage runs for real, in seconds
    monkeypatch.setattr(export, "ExportConfig", functools.partial(export.ExportConfig, latency=None, num_real=1,
                                                                  num_random=1))
    plan = load_plan(_plan(tmp_path, 'methods = ["resrep", "magnitude"]\ntarget_latency = "3ms"\n'
                                      "[export]\ntorchscript = false\n"))
    done = {"search": {"out": str(tmp_path), "finished_trials": 2, "study_name": "s", "storage": "s.db", "device": "cpu",
                       "threads": 1, "arch": {"family": "dscnn"}, "best_trial": "trial 1", "best_accuracy": 0.5,
                       "budget_ms": 4.0, "budget_macs": None},
            "stage2": {"skipped": True}, "retrain": {"checkpoint": str(winner), "accuracy": 0.55, "epochs": 1}}
    for stage, stored in done.items():  # the stages before pruning, finished earlier
        plan.stage_dir(stage).mkdir(parents=True)
        (plan.stage_dir(stage) / "done.json").write_text(json.dumps(stored))
    records = run_study(plan, console=Console(quiet=True))  # no StudyError: export and report run
    prune = records["prune"]
    assert prune["chosen"] is None and prune["exported"] == "unpruned" and "report" not in prune
    assert prune["checkpoint"] == str(winner) and prune["reason"].startswith(reason)
    assert set(prune["methods"]) == {"resrep", "magnitude"}  # every method's run kept
    assert records["export"]["ok"] and records["export"]["checkpoint"] == str(winner)
    assert records["export"]["form"] == "train"  # the unpruned winner, fused by the export
    text = (plan.stage_dir("report") / "report.md").read_text()
    pruning = text[text.index("## Pruning"):text.index("## Export")]
    assert pruning.startswith("## Pruning (latency target 3ms): the unpruned winner is exported\n\n**Warning: no pruned "
                              "model met the target without collapsing; the exported model is the unpruned winner.** "
                              + reason)
    assert "| retrained winner (exported, unpruned) | 2,000 |" in pruning and "| magnitude | 0 + 1 |" in pruning
    assert "(exported) |" not in pruning and "none was exported" in pruning
    assert "Before and after" not in text and "widths.png" not in text
    assert not (plan.stage_dir("report") / "widths.png").exists()

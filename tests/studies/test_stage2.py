"""Stage 2: selection by stage-1 validation only, test accuracy reported, resumable, table from stored results."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

import dscnn
import studies.stage2 as stage2
from dscnn.data import DataConfig
from searchspace import SearchConfig, open_storage
from searchspace.budget_of import BUDGET_OF_ATTR
from searchspace.report import TrialRow
from studies import timing_drift
from studies.plan import StudyError
from studies.stage2 import Stage2Config, run_stage2, select_candidates
from studies.stage2_table import markdown, verdict, winner
from tests.searchspace.tiny import tiny_search_config

ARCH = json.dumps({"family": "resnet_cifar", "depth": 8, "num_classes": 10, "resolution": 32})


def _row(number: int, label: str, accuracy: float | None, feasible: bool = True) -> TrialRow:
    arch = json.dumps({**json.loads(ARCH), "depth": 8 + 6 * number})  # one architecture per trial
    return TrialRow(number, label, "COMPLETE" if accuracy is not None else "PRUNED", feasible, accuracy, 1.0,
                    1, 1, "resnet_cifar", arch, None)


def test_selection_takes_top_k_searched_by_validation_and_every_fitting_baseline() -> None:
    rows = [_row(0, "fasternet_t0", 0.30), _row(1, "falconnet", None, feasible=False), _row(2, "trial 2", 0.50),
            _row(3, "trial 3", 0.70), _row(4, "trial 4", 0.60), _row(5, "fasternet_t0", 0.31)]  # 5: a re-run
    chosen = select_candidates(rows, top_k=2)
    assert [c.label for c in chosen] == ["trial 3", "trial 4", "fasternet_t0"]
    assert chosen[0].stage1_val_accuracy == 0.70


def test_an_architecture_sampled_twice_takes_one_of_the_top_k_places() -> None:
    other = json.dumps({"family": "resnet_cifar", "depth": 14, "num_classes": 10, "resolution": 32})
    twin = json.dumps(json.loads(ARCH), indent=1)  # the same architecture, written differently
    rows = [dataclasses.replace(_row(2, "trial 2", 0.70), arch=ARCH),
            dataclasses.replace(_row(3, "trial 3", 0.69), arch=twin), dataclasses.replace(_row(4, "trial 4", 0.50), arch=other)]
    assert [c.label for c in select_candidates(rows, top_k=2)] == ["trial 2", "trial 4"]


def _search(tmp_path: Path) -> SearchConfig:
    """A finished stage-1 study of tiny CIFAR ResNets (cheap to retrain), as a search records it."""
    config = tiny_search_config(
        tmp_path, study_name="s2", trials=3, budget_macs=None, budget_ms=1e6, baselines=("fasternet_t0_w0.5",),
        data=DataConfig(train_per_class=6, holdout_per_class=2, test_per_class=2),
    )
    study = optuna.create_study(study_name="s2", storage=open_storage(config.storage), direction="maximize")
    for label, widths, accuracy in [("fasternet_t0_w0.5", (4, 8, 8), 0.2), (None, (4, 4, 8), 0.4),
                                    (None, (8, 8, 8), 0.3)]:
        arch = dscnn.create_model("resnet20", num_classes=10, resolution=32, depth=8, widths=widths).config
        attrs = {"arch": arch.to_json(), "family": arch.family, "feasible": True, "accuracy": accuracy,
                 "latency_ms": 1.0, "macs": 1}
        if label:
            attrs["baseline"] = label
        study.add_trial(optuna.trial.create_trial(value=accuracy, user_attrs=attrs))
    return config


def test_stage2_reports_test_accuracy_resumes_and_never_lets_test_choose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    search = _search(tmp_path)
    config = Stage2Config(top_k=1, seeds=(0, 1), epochs=1)
    calls: list[tuple[str, int]] = []
    real = stage2._train_one

    def crash_after_two(candidate: Any, seed: int, *args: Any) -> dict[str, Any]:
        if len(calls) == 2:
            raise RuntimeError("killed")
        calls.append((candidate.label, seed))
        return real(candidate, seed, *args)

    monkeypatch.setattr(stage2, "_train_one", crash_after_two)
    with pytest.raises(RuntimeError, match="killed"):
        run_stage2(search, config, tmp_path / "stage2")
    monkeypatch.setattr(stage2, "_train_one", lambda c, s, *a: (calls.append((c.label, s)), real(c, s, *a))[1])
    summary = run_stage2(search, config, tmp_path / "stage2")
    assert len(calls) == 4 and len(set(calls)) == 4  # the two finished runs were not trained again
    labels = [r["label"] for r in summary["rows"]]
    assert sorted(labels) == ["fasternet_t0_w0.5", "trial 1"]  # top-1 searched by stage-1 validation + the baseline
    for r in summary["rows"]:
        assert len(r["test"]) == 2 and 0.0 <= r["test_mean"] <= 1.0 and r["latency_ms"] > 0

    # The table is built from the stored per-run results, nothing else:
    stored = tmp_path / "stage2" / "runs" / "fasternet_t0_w0.5-s0.json"
    doc = json.loads(stored.read_text())
    doc["test_accuracy"] = 0.987654
    stored.write_text(json.dumps(doc))
    (tmp_path / "stage2" / "stage2.json").unlink()
    again = run_stage2(search, config, tmp_path / "stage2")
    assert "0.9877" in markdown(again) and "0.9877" in (tmp_path / "stage2" / "stage2.md").read_text()

    # Scrambling the test split changes test accuracies, never which models are compared:
    real_load = stage2.load_dataset

    def scrambled(cfg: DataConfig) -> Any:
        data = real_load(cfg)
        return dataclasses.replace(data, test_labels=torch.flip(data.test_labels, [0]))

    monkeypatch.setattr(stage2, "load_dataset", scrambled)
    other = run_stage2(search, config, tmp_path / "stage2-scrambled")
    assert sorted(r["label"] for r in other["rows"]) == sorted(labels)


def test_stage2_needs_a_test_split_apart_from_validation(tmp_path: Path) -> None:
    search = tiny_search_config(tmp_path, study_name="x", trials=1)
    with pytest.raises(StudyError, match="holdout_per_class"):
        run_stage2(search, Stage2Config(), tmp_path / "s")
    with pytest.raises(StudyError, match="two different seeds"):
        Stage2Config(seeds=(0,))


def test_the_study_runner_runs_stage2_and_retrain_takes_its_winner_by_validation(tmp_path: Path) -> None:
    from studies.run import load_plan, run_study

    study_file = tmp_path / "two_stage.toml"
    study_file.write_text(
        f'out = "{tmp_path / "study"}"\n[search]\nstudy_name = "s2"\nstorage = "{tmp_path / "studies.db"}"\n'
        f'cache = "{tmp_path / "latency.sqlite"}"\ndevice_lock = "{tmp_path / "device.lock"}"\n'
        'device = "cpu"\nbudget_ms = 1e6\ntrain_per_class = 6\nholdout_per_class = 2\ntest_per_class = 2\n'
        'epochs = 1\nbatch_size = 20\nspace = "dscnn"\n'
        '[stage2]\ntop_k = 1\nseeds = [0, 1]\nepochs = 1\n'
    )
    plan = load_plan(study_file)
    search = _search(tmp_path)  # the stage-1 study, as if the search stage had run ...
    (plan.stage_dir("search")).mkdir(parents=True)
    (plan.stage_dir("search") / "done.json").write_text(json.dumps({"study_name": "s2", "out": search.out}))
    records = run_study(plan, stop_after="retrain")  # ... so the runner resumes at stage 2
    assert not records["stage2"]["skipped"] and records["retrain"]["from_stage2"] == "trial 1"
    assert Path(records["retrain"]["checkpoint"]).is_file()
    assert (plan.stage_dir("stage2") / "done.json").is_file()


def test_a_clean_checkout_trains_the_missing_winner_checkpoint_again_for_the_stages_still_to_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import studies.stages
    from studies.run import load_plan, run_study

    test_the_study_runner_runs_stage2_and_retrain_takes_its_winner_by_validation(tmp_path)
    plan = load_plan(tmp_path / "two_stage.toml")
    retrain = json.loads((plan.stage_dir("retrain") / "done.json").read_text())
    checkpoint = Path(retrain["checkpoint"])
    stored_run = json.loads(checkpoint.with_suffix(".json").read_text())
    for pt in plan.out.rglob("*.pt"):  # what a clean checkout of the finished study has: no model files
        pt.unlink()
    assert run_study(plan, stop_after="retrain")["retrain"] == retrain  # nothing after it to run: nothing trained
    assert not checkpoint.exists()
    seen: list[bool] = []
    monkeypatch.setattr(studies.stages, "prune", lambda plan, records, console: seen.append(
        Path(records["retrain"]["checkpoint"]).is_file()) or {"checkpoint": records["retrain"]["checkpoint"]})
    records = run_study(plan, stop_after="prune")
    assert seen == [True] and checkpoint.is_file()  # trained again, as stored, before the prune stage ran
    restored = records["retrain"]["restored"]
    assert records["retrain"]["checkpoint"] == retrain["checkpoint"] and records["retrain"]["seed"] == retrain["seed"]
    assert 0.0 <= restored["val_accuracy"] <= 1.0 and restored["seconds"] > 0
    assert json.loads(checkpoint.with_suffix(".json").read_text()) == stored_run  # the study's numbers stay
    assert json.loads((plan.stage_dir("retrain") / "done.json").read_text())["restored"] == restored
    # later stages that do not read the winner's checkpoint never retrain it (the export reads the prune stage's)
    pruned = tmp_path / "pruned.pt"
    pruned.write_bytes(b"model")
    (plan.stage_dir("prune") / "done.json").write_text(json.dumps({"checkpoint": str(pruned), "finished_at": time.time()}))
    checkpoint.unlink()
    ran: list[str] = []
    monkeypatch.setattr(studies.stages, "export", lambda plan, records, console: ran.append("export") or {})
    monkeypatch.setattr(studies.stages, "report", lambda plan, records, console: ran.append("report") or {})
    run_study(plan)
    assert ran == ["export", "report"] and seen == [True] and not checkpoint.exists()


def _srow(label: str, *, baseline: bool, val: float, test: float, latency: float, fits: bool = True,
          std: float = 0.002, trial: int = 0) -> dict[str, Any]:
    return {"label": label, "baseline": baseline, "val_mean": val, "test_mean": test, "test_std": std,
            "test": [test - std, test + std], "latency_ms": latency, "latency_noisy": False, "latency_busy": False,
            "fits": fits, "trial": trial, "test_images": 10_000, "stage1_val_accuracy": None, "diverged_seeds": []}


def test_the_verdict_takes_the_searched_winner_by_validation_and_the_strongest_baseline_by_test() -> None:
    rows = [_srow("trial 1", baseline=False, val=0.70, test=0.700, latency=3.0, trial=1),
            _srow("trial 2", baseline=False, val=0.69, test=0.760, latency=3.0, trial=2),  # better on test only
            _srow("trial 3", baseline=False, val=0.90, test=0.800, latency=9.0, fits=False, trial=3),
            _srow("resnet20", baseline=True, val=0.99, test=0.680, latency=4.0),
            _srow("fasternet_t0", baseline=True, val=0.50, test=0.685, latency=4.5)]
    v = verdict(rows)
    assert winner(rows)["label"] == "trial 1" and v["best_searched"] == "trial 1"  # not trial 2 (test), not 3 (over)
    assert v["best_baseline"] == "fasternet_t0"  # the strongest on test, though resnet20 validates better
    assert v["gain_points"] == 1.5 and v["goal_met"] and v["at_most_baseline_latency"]
    assert 1.0 < v["noise_points"] < 1.5 and v["beyond_noise"]
    assert [a["baseline"] for a in v["against"]] == ["resnet20", "fasternet_t0"]
    assert "**met**" in markdown({"seeds": [0, 1], "epochs": 8, "rows": rows, "verdict": v})


def test_the_goal_needs_one_point_at_no_more_latency() -> None:
    small = [_srow("trial 1", baseline=False, val=0.7, test=0.705, latency=3.0),
             _srow("resnet20", baseline=True, val=0.7, test=0.700, latency=4.0)]
    assert verdict(small)["gain_points"] == 0.5 and not verdict(small)["goal_met"]
    slower = [_srow("trial 1", baseline=False, val=0.7, test=0.75, latency=5.0),
              _srow("resnet20", baseline=True, val=0.7, test=0.70, latency=4.0)]
    v = verdict(slower)
    assert v["gain_points"] == 5.0 and not v["at_most_baseline_latency"] and not v["goal_met"]
    assert "slower than it" in markdown({"seeds": [0, 1], "epochs": 8, "rows": slower, "verdict": v})
    over = [_srow("trial 1", baseline=False, val=0.7, test=0.75, latency=9.0, fits=False),
            _srow("resnet20", baseline=True, val=0.7, test=0.70, latency=4.0)]
    assert verdict(over) == {"comparable": False, "reason": "no searched model within the budget"}


def test_a_diverged_run_is_a_row_kept_on_resume_and_a_changed_recipe_retrains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    search = _search(tmp_path)
    config = Stage2Config(top_k=1, seeds=(0, 1), epochs=1)
    real = stage2.train_and_evaluate
    calls: list[int] = []

    def diverge_on_baseline_seed1(model: Any, data: Any, recipe: Any, **kw: Any) -> Any:
        calls.append(recipe.seed)
        if recipe.seed == 1 and sum(p.numel() for p in model.parameters()) > 2_000:  # the baseline's seed 1
            raise stage2.TrainingDiverged(0, 3)
        return real(model, data, recipe, **kw)

    monkeypatch.setattr(stage2, "train_and_evaluate", diverge_on_baseline_seed1)
    out = tmp_path / "stage2"
    summary = run_stage2(search, config, out)
    rows = {r["label"]: r for r in summary["rows"]}
    diverged = [r for r in rows.values() if r["diverged_seeds"]]
    assert len(diverged) == 1 and diverged[0]["diverged_seeds"] == [1] and len(diverged[0]["test"]) == 1
    assert "diverged: seed 1" in (out / "stage2.md").read_text()
    assert json.loads((out / "memory_format.json").read_text())["memory_format"] in ("channels_last", "contiguous")
    n = len(calls)
    run_stage2(search, config, out)
    assert len(calls) == n  # nothing retrained, the divergence included
    run_stage2(search, dataclasses.replace(config, epochs=2), out)
    assert len(calls) == n + 4  # every run was stored with one epoch: all trained again


def test_a_busy_side_by_side_timing_is_measured_again_on_resume(tmp_path: Path) -> None:
    search = _search(tmp_path)
    config = Stage2Config(top_k=1, seeds=(0, 1), epochs=1)
    out = tmp_path / "stage2"
    run_stage2(search, config, out)
    path = out / "latency.json"
    doc = json.loads(path.read_text())
    for r in doc["results"].values():
        r["median_ms"], r["busy"] = 123.0, True
    path.write_text(json.dumps(doc))
    again = run_stage2(search, config, out)
    assert all(r["latency_ms"] != 123.0 for r in again["rows"])


def test_a_baseline_near_the_budget_is_timed_side_by_side_and_that_timing_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [_row(0, "resnet20", 0.3), _row(1, "fasternet_t0", None, feasible=False), _row(2, "falconnet", None, feasible=False),
            _row(3, "trial 3", 0.5)]
    rows[1] = dataclasses.replace(rows[1], latency_ms=5.3)  # 6% over a 5 ms budget in stage 1: timed again
    rows[2] = dataclasses.replace(rows[2], latency_ms=6.6)  # far over: left out
    assert [c.label for c in select_candidates(rows, top_k=1, budget_ms=5.0)] == ["trial 3", "resnet20", "fasternet_t0"]
    assert [c.label for c in select_candidates(rows, top_k=1)] == ["trial 3", "resnet20"]
    assert [c.label for c in select_candidates(rows, top_k=1, budget_ms=5.0, budget_macs=0.5)] == [
        "trial 3", "resnet20"]  # over the MACs budget too: latency was not its only miss

    search = dataclasses.replace(_search(tmp_path), budget_ms=1.0)
    study = optuna.load_study(study_name="s2", storage=open_storage(search.storage))
    arch = dscnn.create_model("resnet20", num_classes=10, resolution=32, depth=8, widths=(8, 4, 8)).config
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={
        "arch": arch.to_json(), "family": arch.family, "feasible": False, "latency_ms": 1.05, "macs": 1,
        "baseline": "resnet20"}))  # 5% over in stage 1, never trained there
    real = stage2.measure_side_by_side
    trained: list[str] = []
    real_train = stage2._train_one

    def slow_baseline(models: dict[str, Any], settings: Any, **kw: Any) -> Any:
        results = real(models, settings, **kw)
        return {k: dataclasses.replace(v, median_ms=2.0 if k == "fasternet_t0_w0.5" else 0.5) for k, v in results.items()}

    monkeypatch.setattr(stage2, "measure_side_by_side", slow_baseline)
    monkeypatch.setattr(stage2, "_train_one", lambda c, s, *a: (trained.append(c.label), real_train(c, s, *a))[1])
    summary = run_stage2(search, Stage2Config(top_k=1, seeds=(0, 1), epochs=1), tmp_path / "stage2")
    assert set(trained) == {"trial 1", "resnet20"}  # not the baseline the side-by-side run timed over the budget
    assert summary["excluded_baselines"] == [{"label": "fasternet_t0_w0.5", "latency_ms": 2.0, "timed": "side by side"}]
    assert summary["verdict"]["best_baseline"] == "resnet20"  # the near-budget rival that fitted side by side
    assert "fasternet_t0_w0.5 2.000 ms (side by side)" in (tmp_path / "stage2" / "stage2.md").read_text()


@pytest.mark.parametrize(("timed_ms", "calls", "kept_ms", "is_slowed"), [
    ((0.5,), 1, 0.5, False),  # faster than stage 1 (1.0 ms each): the better measurement, kept
    ((1.6, 1.05), 2, 1.05, False),  # slowed as a whole, then not: the second run is the table's
    ((1.6, 1.3, 1.9, 1.7), 4, 1.3, True),  # slowed in every run: the least slowed is kept, and said so
])
def test_a_side_by_side_run_slower_as_a_whole_than_stage1_is_timed_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, timed_ms: tuple[float, ...], calls: int, kept_ms: float,
        is_slowed: bool) -> None:
    search = _search(tmp_path)  # every stage-1 trial timed 1.0 ms
    runs: list[float] = []
    real = stage2.measure_side_by_side

    def machine(models: dict[str, Any], settings: Any, **kw: Any) -> Any:
        ms = timed_ms[min(len(runs), len(timed_ms) - 1)]
        runs.append(ms)
        # never busy: whether the real tiny timing was flagged busy on a shared machine is not this test's subject
        return {k: dataclasses.replace(v, median_ms=ms, busy=False) for k, v in real(models, settings, **kw).items()}

    monkeypatch.setattr(stage2, "measure_side_by_side", machine)
    monkeypatch.setattr(timing_drift, "TIMING_PAUSE_S", 0.0)
    out = tmp_path / "stage2"
    summary = run_stage2(search, Stage2Config(top_k=1, seeds=(0, 1), epochs=1), out)
    assert len(runs) == calls and {r["latency_ms"] for r in summary["rows"]} == {kept_ms}
    assert summary["timing"] == {"slowdown": kept_ms, "slowdown_attempts": list(timed_ms[:calls]), "slowed": is_slowed}
    table = (out / "stage2.md").read_text()
    assert f"ran at {kept_ms:.2f}x their stage-1 latency (median) in the run kept, of {calls} run(s)" in table
    assert ("decided on a slowed machine" in table) == is_slowed
    run_stage2(search, Stage2Config(top_k=1, seeds=(0, 1), epochs=1), out)
    assert len(runs) == calls + (calls if is_slowed else 0)  # a slowed timing is not reused by a resumed stage


def test_the_stored_timing_and_layout_are_kept_only_for_the_same_settings(tmp_path: Path) -> None:
    search = _search(tmp_path)
    config = Stage2Config(top_k=1, seeds=(0, 1), epochs=1)
    out = tmp_path / "stage2"
    (out).mkdir()
    (out / "memory_format.json").write_text(json.dumps({"memory_format": "contiguous"}))
    run_stage2(search, config, out)
    assert {json.loads(p.read_text())["memory_format"] for p in (out / "runs").glob("*.json")} == {"contiguous"}
    doc = json.loads((out / "latency.json").read_text())
    assert doc["settings"]["repeats"] == 15 and search.latency.repeats == 1  # the fit decision: more than stage 1's
    assert all(len(r["repeat_medians_ms"]) == 15 for r in doc["results"].values())
    for r in doc["results"].values():
        r["median_ms"] = 123.0
    (out / "latency.json").write_text(json.dumps(doc))
    same = run_stage2(search, config, out)
    assert all(r["latency_ms"] == 123.0 for r in same["rows"])  # same settings: the stored timing stands
    other = dataclasses.replace(search, latency=search.latency.replace(runs=search.latency.runs + 1))
    again = run_stage2(other, config, out)
    assert all(r["latency_ms"] != 123.0 for r in again["rows"])  # other settings: timed again
    for r in doc["results"].values():
        r["median_ms"] = 123.0
    (out / "latency.json").write_text(json.dumps(doc))
    fewer = run_stage2(search, dataclasses.replace(config, timing_repeats=5), out)
    assert all(r["latency_ms"] != 123.0 for r in fewer["rows"])  # other repeats: timed again
    assert json.loads((out / "latency.json").read_text())["settings"]["repeats"] == 5
    with pytest.raises(StudyError, match="timing_repeats must be an integer >= 1"):
        Stage2Config(timing_repeats=0)


def test_one_finished_seed_has_no_spread_to_claim_and_an_exact_point_meets_the_goal() -> None:
    one = [_srow("trial 1", baseline=False, val=0.7, test=0.75, latency=3.0), _srow("resnet20", baseline=True,
           val=0.7, test=0.70, latency=4.0)]
    one[0] = {**one[0], "test_std": None, "test": [0.75]}
    v = verdict(one)
    assert v["spread_points"] is None and not v["beyond_noise"] and v["seeds"] == [1, 2]
    assert "Seeds finished: 1 and 2" in markdown({"seeds": [0, 1], "epochs": 8, "rows": one, "verdict": v})
    exact = [_srow("trial 1", baseline=False, val=0.7, test=0.6003, latency=3.0),
             _srow("resnet20", baseline=True, val=0.7, test=0.5903, latency=4.0)]
    assert 100 * (0.6003 - 0.5903) < 1.0 and verdict(exact)["goal_met"]  # +1.00 points, rounding aside


def test_runs_another_study_trained_under_the_same_key_are_reused_not_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    search = _search(tmp_path)
    config = Stage2Config(top_k=1, seeds=(0, 1), epochs=1)
    first = run_stage2(search, config, tmp_path / "a")
    real = stage2._train_one
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(stage2, "_train_one", lambda c, s, *a: (calls.append((c.label, s)), real(c, s, *a))[1])
    reusing = dataclasses.replace(config, reuse_runs=(str(tmp_path / "a" / "runs"),))
    again = run_stage2(search, reusing, tmp_path / "b")
    assert calls == []
    assert [(r["label"], r["test"]) for r in again["rows"]] == [(r["label"], r["test"]) for r in first["rows"]]
    record = json.loads((tmp_path / "b" / "runs" / "fasternet_t0_w0.5-s1.json").read_text())
    assert record["reused_from"] == str(tmp_path / "a" / "runs" / "fasternet_t0_w0.5-s1.json")
    assert (tmp_path / "b" / "runs" / record["checkpoint"]).is_file()

    run_stage2(search, dataclasses.replace(reusing, epochs=2), tmp_path / "c")  # another recipe: another key
    assert len(calls) == 4
    with pytest.raises(StudyError, match="reuse_runs: .* is not a folder"):
        run_stage2(search, dataclasses.replace(config, reuse_runs=(str(tmp_path / "nowhere"),)), tmp_path / "d")
    with pytest.raises(StudyError, match="reuse_runs must be a list"):
        Stage2Config(reuse_runs=("",))


def test_with_budget_of_the_references_side_by_side_latency_decides_what_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    search = dataclasses.replace(_search(tmp_path), budget_ms=None, budget_of="fasternet_t0_w0.5",
                                 baselines=("fasternet_t0_w0.5", "resnet20"))
    study = optuna.load_study(study_name="s2", storage=open_storage(search.storage))
    with pytest.raises(StudyError, match="no timing of its budget_of baseline"):
        run_stage2(search, Stage2Config(top_k=2, seeds=(0, 1), epochs=1), tmp_path / "none")
    study.set_user_attr(BUDGET_OF_ATTR, {"baseline": "fasternet_t0_w0.5", "cost": {
        "latency_ms": 1.0, "latency_spread_ms": 0.0, "macs": 1.0, "params_train": 1, "params_deploy": 1, "device": "cpu"}})
    arch = dscnn.create_model("resnet20", num_classes=10, resolution=32, depth=8, widths=(8, 4, 8)).config
    study.add_trial(optuna.trial.create_trial(value=0.1, user_attrs={
        "arch": arch.to_json(), "family": arch.family, "feasible": True, "latency_ms": 0.9, "macs": 1,
        "accuracy": 0.1, "baseline": "resnet20"}))  # fit the stage-1 timing, the reference's
    real = stage2.measure_side_by_side
    slow_day = {"fasternet_t0_w0.5": 2.0, "resnet20": 2.1, "trial 1": 1.9, "trial 2": 2.2}  # all about 2x stage 1

    def machine(models: dict[str, Any], settings: Any, **kw: Any) -> Any:
        return {k: dataclasses.replace(v, median_ms=slow_day[k]) for k, v in real(models, settings, **kw).items()}

    monkeypatch.setattr(stage2, "measure_side_by_side", machine)
    monkeypatch.setattr(timing_drift, "TIMING_PAUSE_S", 0.0)  # the 2x day is retried as a slowed run: no waiting
    summary = run_stage2(search, Stage2Config(top_k=2, seeds=(0, 1), epochs=1), tmp_path / "stage2")
    assert summary["budget_ms"] == 2.0 and summary["budget_of"] == "fasternet_t0_w0.5"
    assert {r["label"]: r["fits"] for r in summary["rows"]} == {"fasternet_t0_w0.5": True, "trial 1": True,
                                                                "trial 2": False}
    assert summary["excluded_baselines"] == [{"label": "resnet20", "latency_ms": 2.1, "timed": "side by side"}]

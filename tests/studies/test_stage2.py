"""Stage 2: selection by stage-1 validation only, test accuracy reported, resumable, table from stored results."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

import dscnn
import studies.stage2 as stage2
from dscnn.data import DataConfig
from searchspace import SearchConfig, open_storage
from searchspace.report import TrialRow
from studies.plan import StudyError
from studies.stage2 import Stage2Config, run_stage2, select_candidates
from tests.searchspace.tiny import tiny_search_config

ARCH = json.dumps({"family": "resnet_cifar", "depth": 8, "num_classes": 10, "resolution": 32})


def _row(number: int, label: str, accuracy: float | None, feasible: bool = True) -> TrialRow:
    return TrialRow(number, label, "COMPLETE" if accuracy is not None else "PRUNED", feasible, accuracy, 1.0,
                    1, 1, "resnet_cifar", ARCH, None)


def test_selection_takes_top_k_searched_by_validation_and_every_fitting_baseline() -> None:
    rows = [_row(0, "fasternet_t0", 0.30), _row(1, "falconnet", None, feasible=False), _row(2, "trial 2", 0.50),
            _row(3, "trial 3", 0.70), _row(4, "trial 4", 0.60), _row(5, "fasternet_t0", 0.31)]  # 5: a re-run
    chosen = select_candidates(rows, top_k=2)
    assert [c.label for c in chosen] == ["trial 3", "trial 4", "fasternet_t0"]
    assert chosen[0].stage1_val_accuracy == 0.70


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
    assert "0.9877" in stage2.markdown(again) and "0.9877" in (tmp_path / "stage2" / "stage2.md").read_text()

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

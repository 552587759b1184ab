"""End-to-end search on the embedded data: cost first, resume, storage, CLI errors."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from optuna_dashboard._storage_url import guess_storage_from_url

import search
from searchspace import SearchConfig, run_search
from searchspace.storage import WORKER_ATTR, fail_orphaned_trials, open_storage
from tests.searchspace.tiny import load_study, tiny_search_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _config(tmp_path: Path, **overrides: object) -> SearchConfig:
    return tiny_search_config(tmp_path, **{"study_name": "t", "trials": 2, **overrides})  # type: ignore[arg-type]


def _study(config: SearchConfig) -> optuna.Study:
    return load_study(config)


def test_search_trains_feasible_trials_and_writes_outputs(tmp_path: Path) -> None:
    config = _config(tmp_path, budget_ms=1e6, budget_macs=None, trials=2, baselines=("fasternet_t0_w0.5",))
    result = run_search(config, show_progress=False)
    study = _study(config)
    assert result.finished_trials == 2 and len(study.trials) == 2
    assert study.trials[0].user_attrs["baseline"] == "fasternet_t0_w0.5"
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete, [t.state for t in study.trials]
    for t in complete:
        assert t.user_attrs["latency_ms"] > 0 and t.user_attrs["macs"] > 0 and t.user_attrs["feasible"] is True
        assert t.constraints == {"latency_ms": pytest.approx(t.user_attrs["latency_ms"] - 1e6)}
        assert 0.0 <= t.value <= 1.0
    out = Path(config.out_dir)
    best = json.loads((out / "best.json").read_text())
    assert best["accuracy"] == max(t.value for t in complete)
    for name in ("best.pt", "best_deploy.pt", "pareto.png", "pareto.html", "search_config.json"):
        assert (out / name).stat().st_size > 0, name
    import dscnn

    model, info = dscnn.load_checkpoint(out / "best_deploy.pt")
    assert info.form == "deploy" and dscnn.is_deploy_form(model)
    # optuna-dashboard's own loader opens the journal file as a bare path
    storage = guess_storage_from_url(config.storage)
    summaries = optuna.get_all_study_summaries(storage)
    assert [s.study_name for s in summaries] == ["t"]


def test_impossible_budget_trains_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path, budget_ms=1e-6, trials=3)
    result = run_search(config, show_progress=False)
    study = _study(config)
    assert result.trained_trials == 0
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 3
    assert all(t.user_attrs["feasible"] is False and t.constraints["latency_ms"] > 0 for t in study.trials)
    assert not list((Path(config.out_dir) / "trials").iterdir())
    assert not (Path(config.out_dir) / "best.json").exists()


def test_pareto_mode_completes_infeasible_with_penalty(tmp_path: Path) -> None:
    config = _config(tmp_path, budget_ms=1e-6, trials=2, pareto=True)
    run_search(config, show_progress=False)
    study = _study(config)
    for t in study.trials:
        assert t.state == TrialState.COMPLETE and t.values[0] == 0.0 and t.user_attrs["feasible"] is False
        assert "accuracy" not in t.user_attrs  # never a real score


def test_rerun_resumes_instead_of_restarting(tmp_path: Path) -> None:
    config = _config(tmp_path, budget_ms=1e-6, trials=2)
    run_search(config, show_progress=False)
    first = [(t.number, t.params) for t in _study(config).trials]
    run_search(config, show_progress=False)  # same total: nothing new
    assert [(t.number, t.params) for t in _study(config).trials] == first
    run_search(dataclasses.replace(config, trials=3), show_progress=False)
    trials = _study(config).trials
    assert len(trials) == 3 and [(t.number, t.params) for t in trials[:2]] == first


def test_orphaned_running_trial_is_failed(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "studies.db"))
    study = optuna.create_study(study_name="o", storage=storage)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan, live = study.ask(), study.ask()
    study._storage.set_trial_system_attr(orphan._trial_id, WORKER_ATTR, f"{os.uname().nodename}:{dead.pid}")
    study._storage.set_trial_system_attr(live._trial_id, WORKER_ATTR, f"{os.uname().nodename}:{os.getpid()}")
    assert fail_orphaned_trials(study) == [orphan.number]
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.RUNNING]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--budget-ms", "-1"], "--budget-ms must be a positive"),
        (["--budget-flops", "lots"], "cannot parse 'lots'"),
        (["--dataset", "mnist"], "invalid choice: 'mnist'"),
        (["--space", "nope"], "invalid choice: 'nope'"),
        (["--trials", "0"], "--trials must be >= 1"),
        (["--study", "/nonexistent.toml"], "no such file"),
        (["--budget-ms", "2", "--budget-of", "resnet20"], "--budget-ms and --budget-of: give one"),
        (["--budget-of", "vgg16"], "invalid choice: 'vgg16'"),
        (["--budget-of", "resnet20", "--baselines", "dscnn_t0"], "must be one of the baselines the study trains"),
    ],
)
def test_bad_flags_are_rejected_clearly(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        search.config_from_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_study_file_supplies_defaults_and_flags_override(tmp_path: Path) -> None:
    study = tmp_path / "s.toml"
    study.write_text('budget_ms = 3.0\ntrials = 7\nspace = "falconnet"\nepochs = 2\n')
    config = search.config_from_args(["--study", str(study), "--trials", "9", "--device", "cpu"])
    assert (config.budget_ms, config.trials, config.space, config.train.epochs) == (3.0, 9, "falconnet", 2)
    study.write_text("budget_mss = 3.0\n")
    with pytest.raises(SystemExit):
        search.config_from_args(["--study", str(study)])


def test_the_cli_ends_with_the_comparison_and_the_next_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich would shorten names to the captured terminal's 80
    out = tmp_path / "out"
    argv = ["--device", "cpu", "--budget-flops", "30M", "--space", "dscnn", "--trials", "2", "--seed", "4",
            "--baselines", "fasternet_t0_w0.5", "--epochs", "1", "--batch-size", "20", "--train-per-class", "4",
            "--val-per-class", "2", "--storage", str(tmp_path / "studies.db"), "--out", str(out),
            "--cache", str(tmp_path / "latency.sqlite"), "--device-lock", str(tmp_path / "device.lock")]
    assert search.main(argv) == 0
    text = capsys.readouterr().out
    assert "searched vs hand-designed (validation top-1; chance 10.0%)" in text
    assert "fasternet_t0_w0.5" in text and "on 20 validation images, one seed" in text  # 2 per class x 10
    assert f"optuna-dashboard {tmp_path / 'studies.db'}" in text
    assert (f"python -m pruning.resrep {out / 'best.pt'} --target-latency 0.6x --train-per-class 4 "
            "--val-per-class 2") in text  # the search's own data, not the pruning CLI's defaults
    assert f"python -m dscnn.export {out / 'best_deploy.pt'}" in text


def test_next_steps_carry_the_data_set_and_warn_about_a_test_split() -> None:
    config = search.config_from_args(["--device", "cpu", "--dataset", "cifar10", "--data-dir", "/d", "--runtime",
                                      "onnxruntime", "--holdout-per-class", "50"])
    text = search.next_steps(config, has_best=True)
    assert "--target-latency 0.6x --dataset cifar10 --data-dir /d --runtime onnxruntime" in text
    assert "kept as its test split" in text
    assert "pruning.resrep" not in search.next_steps(config, has_best=False)

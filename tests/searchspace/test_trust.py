"""A search's results can be trusted: studies keep their definition and their own folders, runs
reproduce, interruptions lose nothing, bad paths fail before any work (issues 16 and 17)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

import dscnn
import search
import searchspace.run as run
from searchspace import SearchConfig, run_search
from searchspace.identity import SearchError
from searchspace.objective import INTERRUPTED
from searchspace.run import SearchInterrupted
from tests.searchspace.tiny import load_study, tiny_search_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _config(tmp_path: Path, **overrides: Any) -> SearchConfig:
    return tiny_search_config(tmp_path, **{"study_name": "t", "trials": 2, **overrides})


def test_a_study_refuses_a_run_with_another_definition_and_writes_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path, trials=1)
    run_search(config, show_progress=False)
    written = (Path(config.out_dir) / "search_config.json").read_text()
    other = dataclasses.replace(config, trials=2, budget_macs=5e6,
                                data=dataclasses.replace(config.data, train_per_class=6))
    with pytest.raises(SearchError, match=r"defined with .*train_per_class=4 \(now 6\).*budget_macs.*--study-name"):
        run_search(other, show_progress=False)
    assert (Path(config.out_dir) / "search_config.json").read_text() == written  # nothing rewritten
    assert len(load_study(config).trials) == 1
    run_search(dataclasses.replace(config, trials=2), show_progress=False)  # the same definition resumes
    assert len(load_study(config).trials) == 2


def test_two_studies_cannot_share_an_output_folder(tmp_path: Path) -> None:
    first = _config(tmp_path, trials=1)
    run_search(first, show_progress=False)
    second = dataclasses.replace(first, storage=str(tmp_path / "other.db"))  # same name and --out
    with pytest.raises(SearchError, match="holds the outputs of another study"):
        run_search(second, show_progress=False)


def test_best_is_written_only_from_the_matching_checkpoint(tmp_path: Path) -> None:
    config = _config(tmp_path, budget_macs=None, budget_ms=1e6, trials=1, baselines=("fasternet_t0_w0.5",))
    run_search(config, show_progress=False)
    out = Path(config.out_dir)
    trial_file = out / "trials" / "trial_0000.pt"
    impostor = dscnn.create_model("resnet20", num_classes=10, resolution=32)
    dscnn.save_checkpoint(trial_file, impostor, metrics={"trial": 0, "study": "someone-else"})
    (out / "best.pt").unlink()
    study = load_study(config)
    with pytest.raises(SearchError, match="holds trial 0 of study 'someone-else'"):
        run.write_outputs(config, study, 0, run.Console(quiet=True))
    assert not (out / "best.pt").exists()


def test_two_runs_of_one_tiny_study_give_identical_trial_values(tmp_path: Path) -> None:
    values = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        config = _config(tmp_path / name, trials=3, baselines=("fasternet_t0_w0.5",))
        torch.manual_seed(len(name) * 12345 + ord(name))  # the global RNG state must not matter
        run_search(config, show_progress=False)
        trials = load_study(config).trials
        values.append([(t.state, t.value, t.params, t.user_attrs.get("seed")) for t in trials])
    assert values[0] == values[1]
    assert any(state == TrialState.COMPLETE for state, *_ in values[0])


def test_ctrl_c_keeps_finished_work_marks_the_trial_and_reruns_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path, budget_macs=None, budget_ms=1e6, trials=2,
                     baselines=("fasternet_t0_w0.5", "fasternet_t0"))
    real_train = run.train_and_evaluate
    calls = {"n": 0}

    def train_then_interrupt(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(run, "train_and_evaluate", train_then_interrupt)
    with pytest.raises(SearchInterrupted) as info:
        run_search(config, show_progress=False)
    assert info.value.result.best is not None and (Path(config.out_dir) / "best.json").is_file()  # what finished
    lost = load_study(config).trials[1]
    assert lost.state == TrialState.FAIL and lost.system_attrs["fail_reason"] == INTERRUPTED

    monkeypatch.setattr(run, "train_and_evaluate", real_train)
    run_search(config, show_progress=False)  # resumes: the interrupted baseline is trained again
    trials = load_study(config).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].user_attrs["retry_of"] == 1 and trials[2].user_attrs["baseline"] == "fasternet_t0"


def test_ctrl_c_on_the_command_line_is_one_line_and_exit_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupt(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "train_and_evaluate", interrupt)
    code = search.main(_tiny_argv(tmp_path) + ["--budget-ms", "1e6", "--trials", "1"])
    out = capsys.readouterr()
    assert code == 130
    assert "interrupted: 1 trials finished" in out.out and "Traceback" not in out.out + out.err


def _tiny_argv(tmp_path: Path) -> list[str]:
    return ["--storage", str(tmp_path / "s.db"), "--out", str(tmp_path / "out"), "--device", "cpu",
            "--train-per-class", "4", "--val-per-class", "2", "--epochs", "1", "--batch-size", "20",
            "--cache", str(tmp_path / "c.sqlite"), "--device-lock", str(tmp_path / "lock"), "--space", "dscnn"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (lambda p: ["--storage", str(p)], "is a folder"),
        (lambda p: ["--storage", str(p / "missing" / "s.db")], "does not exist"),
        (lambda p: ["--out", str(p / "a_file_with_a_name_long_enough_that_the_message_exceeds_a_terminal_line")], "is a file"),
    ],
)
def test_bad_paths_fail_before_anything_is_written(
    tmp_path: Path, extra: Any, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a_file_with_a_name_long_enough_that_the_message_exceeds_a_terminal_line").write_text("x")
    code = search.main(_tiny_argv(tmp_path) + extra(tmp_path))
    assert code == 2 and message in capsys.readouterr().out
    assert not (tmp_path / "out" / "search_config.json").exists()


def test_when_nothing_fits_the_user_is_told_how_far_and_what_to_change(tmp_path: Path) -> None:
    config = _config(tmp_path, budget_macs=None, budget_ms=1e-6, trials=2)
    console = run.Console(record=True, width=300)
    run_search(config, console=console, show_progress=False)
    text = console.export_text()
    assert "2 of 2 trials were over the budget; the fastest" in text and "--budget-ms" in text
    assert (Path(config.out_dir) / "pareto.png").is_file()  # what was measured is plotted


def test_search_config_json_records_the_latency_resolution_actually_used(tmp_path: Path) -> None:
    config = _config(tmp_path, trials=1)
    run_search(config, show_progress=False)
    recorded = json.loads((Path(config.out_dir) / "search_config.json").read_text())
    assert recorded["latency"]["resolution"] == 32  # the embedded CIFAR-10 subset, not the default 224


def test_a_damaged_journal_is_one_line_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "s.db").write_text('{"op_code": 0, "worker_id": "x"')  # cut mid-record
    code = search.main(_tiny_argv(tmp_path))
    out = capsys.readouterr()
    assert code == 2 and "python -m searchspace.repair" in out.out and "Traceback" not in out.out + out.err


def test_the_runtime_is_a_search_setting_recorded_with_every_trial(tmp_path: Path) -> None:
    config = SearchConfig.from_mapping({"device": "cpu", "runtime": "onnxruntime"})
    assert config.latency.runtime == "onnxruntime"
    with pytest.raises(ValueError, match="runtime"):
        SearchConfig.from_mapping({"device": "cpu", "runtime": "tensorrt"})
    tiny = _config(tmp_path, trials=1)
    run_search(tiny, show_progress=False)
    trial = load_study(tiny).trials[0]
    assert trial.user_attrs["runtime"] == "eager" and "latency_busy" in trial.user_attrs
    assert load_study(tiny).user_attrs["definition"]["runtime"] == "eager"


def test_chance_level_and_other_notes_are_said(tmp_path: Path) -> None:
    assert run._chance_warning(0.12, 10) is not None and "noise" in str(run._chance_warning(0.12, 10))
    assert run._chance_warning(0.40, 10) is None
    config = _config(tmp_path, trials=1, baselines=("fasternet_t0_w0.5",),
                     data=dataclasses.replace(_config(tmp_path).data, data_dir="/somewhere"))
    console = run.Console(record=True, width=300)
    run_search(config, console=console, show_progress=False)
    text = console.export_text()
    assert "--data-dir '/somewhere' is ignored" in text
    assert "nothing will be searched" in text  # --trials no larger than the baselines
    best = json.loads((Path(config.out_dir) / "best.json").read_text())
    assert ("warning" in best) == (run._chance_warning(best["accuracy"], 10) is not None)
    assert ("within 5% of chance" in text) == ("warning" in best)


def test_when_every_trial_diverges_the_summary_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dscnn.train import TrainingDiverged

    def diverge(*args: Any, **kwargs: Any) -> Any:
        raise TrainingDiverged(0, 3)

    monkeypatch.setattr(run, "train_and_evaluate", diverge)
    config = _config(tmp_path, trials=1, budget_macs=None, budget_ms=1e6, baselines=("fasternet_t0_w0.5",))
    console = run.Console(record=True, width=300)
    run_search(config, console=console, show_progress=False)
    assert "1 trials diverged (non-finite loss): lower --lr" in console.export_text()


def test_a_study_resumes_from_another_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    config = _config(tmp_path, trials=1, budget_macs=None, budget_ms=1e6, baselines=("fasternet_t0_w0.5",),
                     storage="studies.db", out="out")  # relative paths, as the README's commands give them
    run_search(config, show_progress=False)
    (tmp_path / "a" / "out" / "best.pt").unlink()
    monkeypatch.chdir(tmp_path / "b")  # the same study, named by absolute paths, from elsewhere
    absolute = dataclasses.replace(config, storage=str(tmp_path / "a" / "studies.db"), out=str(tmp_path / "a" / "out"))
    console = run.Console(record=True, width=300)
    run_search(absolute, console=console, show_progress=False)
    assert "not on this machine" not in console.export_text()
    assert (tmp_path / "a" / "out" / "best.pt").is_file()

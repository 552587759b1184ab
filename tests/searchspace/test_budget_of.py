"""--budget-of: the latency budget is a baseline's deploy latency, timed once when the study starts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest

import dscnn
import searchspace.budget_of
from searchspace import SearchConfig
from searchspace.baselines import get_baseline
from searchspace.budget_of import BUDGET_OF_ATTR, reference_cost, resolve_budget
from searchspace.config import InvalidSetting
from searchspace.identity import SearchError
from searchspace.objective import TrialCost
from searchspace.run import run_search
from tests.searchspace.tiny import load_study, tiny_search_config

REFERENCE = "fasternet_t0_w0.5"  # the smallest baseline: cheap to time and to train


def _cost(latency_ms: float, *, busy: bool = False, noisy: bool = False) -> TrialCost:
    return TrialCost(latency_ms=latency_ms, latency_spread_ms=0.0, macs=1, params_train=1, params_deploy=1,
                     device="cpu", busy=busy, noisy=noisy)


class _Timings:
    """A stand-in for the device: answers the given costs in turn and counts the timings."""

    def __init__(self, *costs: TrialCost) -> None:
        self.costs, self.calls = list(costs), 0

    def __call__(self, model: object) -> TrialCost:
        self.calls += 1
        return self.costs.pop(0)


def _resolve(tmp_path: Path, timings: _Timings, study: optuna.Study, said: list[str] | None = None,
             baseline: str = REFERENCE) -> float | None:
    config = tiny_search_config(tmp_path, study_name="b", trials=2, baselines=(baseline,), budget_of=baseline)
    resolved = resolve_budget(config, study, timings, num_classes=10, resolution=32,
                              say=(said if said is not None else []).append)
    assert resolved.budget_of == baseline
    return resolved.budget_ms


def test_the_reference_is_timed_once_and_every_later_worker_reads_that_timing(tmp_path: Path) -> None:
    study = optuna.create_study()
    timings = _Timings(_cost(1.25), _cost(1.3))
    said: list[str] = []
    assert _resolve(tmp_path, timings, study) == 1.25
    assert _resolve(tmp_path, timings, study, said) == 1.25  # a resumed or second worker: the stored number ...
    assert timings.calls == 2 and said == []  # ... after one check timing, at the same speed: nothing to say
    name, cost = reference_cost(study) or ("", None)
    assert name == REFERENCE and cost is not None and cost.latency_ms == 1.25


@pytest.mark.parametrize(("now", "warned"), [(_cost(1.6), "1.60x as slow, so fewer new trials fit"),
                                             (_cost(0.7), "0.70x as slow, so more new trials fit"),
                                             (_cost(1.19), None), (_cost(3.0, busy=True), None)])
def test_a_resume_at_another_speed_keeps_the_stored_budget_and_says_so(
        tmp_path: Path, now: TrialCost, warned: str | None) -> None:
    study, said = optuna.create_study(), list[str]()
    _resolve(tmp_path, _Timings(_cost(1.0)), study)
    assert _resolve(tmp_path, _Timings(now), study, said) == 1.0  # the trials already judged stay comparable
    if warned is None:  # within DRIFT_FACTOR, or busy (a busy timing says nothing about the speed)
        assert said == []
    else:
        assert len(said) == 1 and warned in said[0] and "stored 1.000 ms" in said[0], said


def test_a_busy_reference_timing_is_retried_and_a_quiet_one_taken(tmp_path: Path) -> None:
    study, said = optuna.create_study(), list[str]()
    timings = _Timings(_cost(0.5, busy=True), _cost(1.0))
    assert _resolve(tmp_path, timings, study, said) == 1.0
    assert timings.calls == 2 and "busy machine; timing again" in said[0]


def test_a_budget_from_a_busy_machine_only_is_refused_and_nothing_stored(tmp_path: Path) -> None:
    study = optuna.create_study()
    timings = _Timings(*[_cost(1.0, busy=True)] * searchspace.budget_of.REFERENCE_RETRIES)
    with pytest.raises(SearchError, match="busy in all 3 timings"):
        _resolve(tmp_path, timings, study)
    assert BUDGET_OF_ATTR not in study.user_attrs


def test_noisy_reference_timings_give_the_fastest_with_a_warning(tmp_path: Path) -> None:
    study, said = optuna.create_study(), list[str]()
    timings = _Timings(_cost(1.4, noisy=True), _cost(1.1, noisy=True), _cost(1.3, noisy=True))
    assert _resolve(tmp_path, timings, study, said) == 1.1
    assert any("noisy in all 3 tries" in s for s in said)


def test_a_study_with_another_reference_is_refused(tmp_path: Path) -> None:
    study = optuna.create_study()
    _resolve(tmp_path, _Timings(_cost(1.0)), study)
    with pytest.raises(SearchError, match="has the latency budget of 'fasternet_t0_w0.5', not 'resnet20'"):
        _resolve(tmp_path, _Timings(_cost(2.0)), study, baseline="resnet20")


def test_the_config_refuses_a_reference_the_study_does_not_train(tmp_path: Path) -> None:
    with pytest.raises(InvalidSetting, match="budget_of"):
        tiny_search_config(tmp_path, study_name="b", trials=2, baselines=(), budget_of="resnet20")


def _stale_cache_entry(config: SearchConfig) -> float:
    """Puts a timing 50x the real one of the reference's deploy form in ``config``'s cache; returns it."""
    from dscnn.cost import measure_deploy_cost
    from dscnn.measure_cache import MeasureCache

    model = dscnn.build_model(get_baseline(REFERENCE).config(num_classes=10, resolution=32))
    settings = config.latency.replace(resolution=32)
    cache = MeasureCache(config.cache_path)
    cached = measure_deploy_cost(model, settings, cache=cache)
    assert cached.latency is not None
    stale = 50 * cached.latency.median_ms
    cache.put(cached.arch_key, settings, {**cached.latency.to_dict(), "median_ms": stale})
    return stale


def test_a_search_judges_every_trial_by_the_references_timing_and_resumes_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_search_config(tmp_path, study_name="rel", trials=3, baselines=("resnet20", REFERENCE),
                                budget_of=REFERENCE, budget_macs=None)
    stale = _stale_cache_entry(config)  # from a day the machine ran 50x slower: not the budget
    result = run_search(config, show_progress=False)
    study = load_study(config)
    name, reference = reference_cost(study) or ("", None)
    assert name == REFERENCE and reference is not None
    assert result.budget_ms == reference.latency_ms and reference.latency_ms < stale / 10
    first = study.trials[0]
    assert first.user_attrs["baseline"] == REFERENCE  # the reference runs first ...
    assert first.user_attrs["latency_ms"] == reference.latency_ms and first.user_attrs["feasible"] is True  # ... at it
    for t in study.trials[1:]:
        assert t.user_attrs["feasible"] == (t.user_attrs["latency_ms"] <= reference.latency_ms)
    assert study.user_attrs["definition"]["budget_ms"] is None
    assert study.user_attrs["definition"]["budget_of"] == REFERENCE

    def no_timing(*args: object) -> TrialCost:
        raise AssertionError("the reference was timed again on resume")

    monkeypatch.setattr(searchspace.budget_of, "_trusted_timing", no_timing)
    again = run_search(dataclasses.replace(config, trials=4), show_progress=False)
    assert again.budget_ms == reference.latency_ms and len(load_study(config).trials) == 4
    with pytest.raises(SearchError, match="was defined with budget_ms=None"):  # an absolute budget: another study
        run_search(dataclasses.replace(config, budget_of=None, budget_ms=reference.latency_ms, trials=5),
                   show_progress=False)


def test_the_reference_is_timed_afresh_and_a_cache_from_another_speed_is_named(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from dscnn.cost import measure_deploy_cost
    from dscnn.measure_cache import MeasureCache
    from searchspace.run import make_measure

    config = tiny_search_config(tmp_path, study_name="f", trials=2, baselines=(REFERENCE,), budget_of=REFERENCE)
    model = dscnn.build_model(get_baseline(REFERENCE).config(num_classes=10, resolution=32))
    settings = config.latency.replace(resolution=32)
    cache = MeasureCache(config.cache_path)
    cached = measure_deploy_cost(model, settings, cache=cache)
    assert cached.latency is not None
    stale = {**cached.latency.to_dict(), "median_ms": 50 * cached.latency.median_ms}  # a far slower day's number
    cache.put(cached.arch_key, settings, stale)
    out = io.StringIO()
    fresh = make_measure(config, 32, Console(file=out, width=400), fresh=True)(model)
    assert fresh.latency_ms < 10 * cached.latency.median_ms  # timed now, not read from the cache
    assert "in the latency cache" in out.getvalue() and "give --cache a new file" in out.getvalue()
    quiet = io.StringIO()  # a resume: resolve_budget judges the drift against the stored budget itself
    make_measure(config, 32, Console(file=quiet, width=400), fresh=True, warn_drift=False)(model)
    assert "latency cache" not in quiet.getvalue()
    left = cache.get(cached.arch_key, settings)
    assert left is not None and left["median_ms"] == stale["median_ms"]  # the cache is left as it was


def test_a_failed_reference_timing_leaves_the_study_unwritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(*args: object) -> TrialCost:
        raise SearchError("the machine was busy in all 3 timings")

    monkeypatch.setattr(searchspace.budget_of, "_trusted_timing", busy)
    config = tiny_search_config(tmp_path, study_name="u", trials=1, baselines=(REFERENCE,), budget_of=REFERENCE)
    with pytest.raises(SearchError, match="busy"):
        run_search(config, show_progress=False)
    study = load_study(config)
    assert study.user_attrs == {} and not study.trials
    assert study._storage.get_study_system_attrs(study._study_id) == {}  # no worker joined
    assert not (config.out_dir / "study.json").exists()  # the folder is not claimed either
    again = run_search(dataclasses.replace(config, budget_of=None, budget_ms=1e6, baselines=()), show_progress=False)
    assert again.finished_trials == 1  # the same name takes another budget: nothing was bound to the first


def test_a_reference_over_the_macs_budget_is_refused(tmp_path: Path) -> None:
    study = optuna.create_study()
    config = tiny_search_config(tmp_path, study_name="m", trials=2, baselines=(REFERENCE,), budget_of=REFERENCE,
                                budget_macs=1e3)
    with pytest.raises(SearchError, match="over --budget-flops"):
        resolve_budget(config, study, _Timings(dataclasses.replace(_cost(1.0), macs=10**9)), num_classes=10, resolution=32,
                       say=print)
    assert BUDGET_OF_ATTR not in study.user_attrs


def test_with_budget_of_trials_use_a_latency_cache_of_the_studys_own(tmp_path: Path) -> None:
    config = tiny_search_config(tmp_path, study_name="c", trials=2, baselines=(REFERENCE,), budget_of=REFERENCE,
                                cache_path=None)
    assert config.latency_cache == config.out_dir / "latency.sqlite"
    assert dataclasses.replace(config, budget_of=None, budget_ms=1.0).latency_cache is None  # the shared default
    assert dataclasses.replace(config, cache_path=str(tmp_path / "x.sqlite")).latency_cache == tmp_path / "x.sqlite"


def test_with_nothing_feasible_the_hint_names_the_budget_of_baseline_not_budget_ms() -> None:
    from searchspace.report import TrialRow, why_no_best

    rows = [TrialRow(0, REFERENCE, "FAIL", True, None, 1.0, 1, 1, "fasternet", None, None, "diverged: loss nan"),
            TrialRow(1, "trial 1", "PRUNED", False, None, 2.0, 1, 1, "dscnn", None, None)]
    relative = why_no_best(rows, 1.0, None, budget_of=REFERENCE)
    assert f"Try a slower --budget-of baseline than {REFERENCE}" in relative and "larger --budget-ms" not in relative
    assert "Try a larger --budget-ms" in why_no_best(rows, 1.0, None)

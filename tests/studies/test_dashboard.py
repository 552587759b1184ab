"""`python -m studies.dashboard`: optuna-dashboard shows a search study's trials in headless chromium."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from searchspace.storage import open_storage
from studies.dashboard import _pick_trial, check_dashboard, find_chromium, main

optuna.logging.set_verbosity(optuna.logging.WARNING)

NOT_LAUNCHED = "/bin/false"  # a browser that is never started: these checks fail before it is needed
ARCH = json.dumps({"family": "dscnn", "depths": [2, 3, 7, 2], "widths": [48, 96, 192, 384], "note": "x" * 200})


def _study(path: Path, with_macs: bool = True) -> dict[int, dict[str, object]]:
    """A 3-trial study whose user attributes come in search.py's order: macs is the 6th line."""
    study = optuna.create_study(study_name="tiny", storage=open_storage(str(path)), direction="maximize")
    attrs: dict[int, dict[str, object]] = {}
    for number, accuracy in enumerate([0.5, 0.9, 0.7]):
        trial = study.ask()
        trial.suggest_int("depth1", 1, 4)
        a: dict[str, object] = {"family": "dscnn", "arch": ARCH, "epochs": 1, "latency_ms": 1.5 + number / 8,
                                "latency_spread_ms": 0.1}
        if with_macs:
            a["macs"] = 2_000_000 + number
        a |= {"params_train": 1000, "params_deploy": 900, "device": "cpu", "feasible": True}
        for key, value in a.items():
            trial.set_user_attr(key, value)
        study.tell(trial, accuracy)
        attrs[number] = a
    return attrs


def test_dashboard_shows_latency_and_macs_in_chromium(tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("chromium is not installed (apt-get install chromium): the dashboard is not checked in a browser")
    attrs = _study(tmp_path / "studies.db")
    shot = tmp_path / "report" / "dashboard.png"
    report = check_dashboard(tmp_path / "studies.db", shot, timeout_s=60)
    assert (report.study_name, report.n_trials, report.trial_number) == ("tiny", 3, 1)  # the best trial
    assert report.attributes_seen == {"latency_ms": "1.625", "macs": str(attrs[1]["macs"])}
    assert report.attributes_in_screenshot == ("latency_ms", "macs")  # macs scrolled into view
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) == (1400, 1000)
    from matplotlib.image import imread  # a dependency already; decodes the PNG

    pixels = imread(shot)[..., :3]
    assert (pixels.min(axis=-1) < 0.9).mean() > 0.02  # not a blank page: text, header bar
    with pytest.raises(urllib.error.URLError):  # the server was stopped
        urllib.request.urlopen(report.url, timeout=2)


def test_unknown_study_is_named(tmp_path: Path) -> None:
    _study(tmp_path / "studies.db")
    with pytest.raises(ValueError, match=r"'nope' not served.*\['tiny'\]"):
        check_dashboard(tmp_path / "studies.db", tmp_path / "x.png", study_name="nope", chromium=NOT_LAUNCHED)


def test_missing_attribute_is_named(tmp_path: Path) -> None:
    _study(tmp_path / "studies.db", with_macs=False)
    with pytest.raises(ValueError, match=r"none of its 3 trials has user attributes \['latency_ms', 'macs'\]"):
        check_dashboard(tmp_path / "studies.db", tmp_path / "x.png", chromium=NOT_LAUNCHED)


def test_cli_rejects_missing_storage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "absent.db")])
    assert exit_.value.code == 1
    assert "absent.db" in capsys.readouterr().err and not (tmp_path / "dashboard.png").exists()


def _api_trial(number: int, state: str, value: float | None, **attrs: object) -> dict[str, object]:
    return {"number": number, "state": state, "values": None if value is None else [value],
            "user_attrs": [{"key": k, "value": str(v)} for k, v in attrs.items()]}


def test_pick_trial_prefers_best_complete_with_the_attributes() -> None:
    trials = [_api_trial(0, "Pruned", None, latency_ms=1, macs=2),
              _api_trial(1, "Complete", 0.2, latency_ms=3, macs=4),
              _api_trial(2, "Complete", 0.9, latency_ms=5),  # best, but no macs
              _api_trial(3, "Complete", 0.5, latency_ms=6, macs=7)]
    assert _pick_trial(trials, ("latency_ms", "macs"), "s", ["maximize"]) == (3, {"latency_ms": "6", "macs": "7"})
    assert _pick_trial(trials, ("latency_ms", "macs"), "s", ["minimize"])[0] == 1
    assert _pick_trial(trials[:1], ("latency_ms", "macs"), "s", ["maximize"])[0] == 0  # no complete one

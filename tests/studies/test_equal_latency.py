"""The stage-2 verdict's equal-latency view: each fitting baseline against the best searched model
(by validation) at no more than its measured latency."""

from __future__ import annotations

from typing import Any

from studies.stage2_table import markdown, verdict
from tests.studies.test_stage2 import _srow


def _rows() -> list[dict[str, Any]]:
    return [_srow("trial 1", baseline=False, val=0.70, test=0.700, latency=3.0, trial=1),  # the winner
            _srow("trial 2", baseline=False, val=0.65, test=0.725, latency=1.5, trial=2),  # small and good on test
            _srow("trial 3", baseline=False, val=0.60, test=0.790, latency=1.4, trial=3),  # best on test: never chosen
            _srow("trial 4", baseline=False, val=0.99, test=0.800, latency=9.0, fits=False, trial=4),
            _srow("resnet20", baseline=True, val=0.5, test=0.705, latency=2.0),
            _srow("fasternet_t0", baseline=True, val=0.5, test=0.690, latency=4.0),
            _srow("dscnn_t0_w0.5", baseline=True, val=0.5, test=0.600, latency=1.0),
            _srow("dscnn_t0", baseline=True, val=0.5, test=0.900, latency=12.0, fits=False)]


def test_each_fitting_baseline_meets_the_best_searched_model_by_validation_at_its_latency() -> None:
    v = verdict(_rows())
    by = {e["baseline"]: e for e in v["equal_latency"]}
    assert [e["baseline"] for e in v["equal_latency"]] == ["resnet20", "fasternet_t0", "dscnn_t0_w0.5"]  # by test
    assert "dscnn_t0" not in by  # over the budget: not a rival
    assert by["resnet20"]["searched"] == "trial 2"  # the winner is slower; trial 3 only tests better
    assert by["resnet20"]["gain_points"] == 2.0 and by["resnet20"]["latency_ratio"] == 0.75 and by["resnet20"]["met"]
    assert 1.0 < by["resnet20"]["noise_points"] < 1.5
    assert by["fasternet_t0"]["searched"] == "trial 1" and by["fasternet_t0"]["gain_points"] == 1.0
    assert by["fasternet_t0"]["met"]  # exactly one point meets it, as in the main verdict
    assert by["dscnn_t0_w0.5"] == {"baseline": "dscnn_t0_w0.5", "baseline_latency_ms": 1.0, "searched": None,
                                   "gain_points": None, "latency_ratio": None, "noise_points": None, "met": False}
    assert not v["goal_met"]  # the main verdict still takes the winner against the strongest fitting baseline


def test_a_gain_below_a_point_at_equal_latency_is_not_met_and_exactly_equal_latency_counts() -> None:
    rows = [_srow("trial 1", baseline=False, val=0.7, test=0.709, latency=1.9, trial=1),
            _srow("resnet20", baseline=True, val=0.5, test=0.700, latency=2.0)]
    (entry,) = verdict(rows)["equal_latency"]
    assert entry["gain_points"] == 0.9 and not entry["met"]
    rows.append(_srow("trial 2", baseline=False, val=0.8, test=0.720, latency=2.0, trial=2))  # at its latency
    rows.append(_srow("trial 3", baseline=False, val=0.8, test=0.730, latency=1.0, trial=3))  # a validation tie
    (entry,) = verdict(rows)["equal_latency"]
    assert entry["searched"] == "trial 2" and entry["met"]  # no slower than it; ties go to the lower trial


def test_the_table_states_the_view_and_a_summary_stored_before_it_renders_as_it_did() -> None:
    rows = _rows()
    v = verdict(rows)
    text = markdown({"seeds": [0, 1], "epochs": 8, "rows": rows, "verdict": v})
    line = next(x for x in text.splitlines() if x.startswith("At equal latency"))
    assert "resnet20 (2.000 ms): trial 2 +2.00 at 0.75x (beyond the +/-1.28 test noise; goal met)" in line
    assert "fasternet_t0 (4.000 ms): trial 1 +1.00 at 0.75x (within the +/-1.30 test noise; goal met)" in line
    assert "dscnn_t0_w0.5 (1.000 ms): none as fast" in line
    old = {k: val for k, val in v.items() if k != "equal_latency"}
    before = markdown({"seeds": [0, 1], "epochs": 8, "rows": rows, "verdict": old})
    assert "At equal latency" not in before and before == text.replace("\n\n" + line, "")

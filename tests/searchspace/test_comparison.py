"""`searchspace.comparison`: the end-of-search table and verdict a newcomer reads."""

from __future__ import annotations

import pytest
from rich.console import Console

from searchspace.comparison import noise_points, print_comparison, verdict
from searchspace.report import TrialRow


def _row(number: int, label: str, accuracy: float | None, latency_ms: float, feasible: bool = True,
         state: str = "COMPLETE") -> TrialRow:
    return TrialRow(number=number, label=label, state=state, feasible=feasible, accuracy=accuracy,
                    latency_ms=latency_ms, macs=10_000_000, params_deploy=1000, family="dscnn", arch=None,
                    checkpoint=None)


def test_noise_is_two_standard_errors_of_a_difference() -> None:
    # p = 0.5, n = 2000: se of one accuracy 1.118 points, of a difference 1.581, two of them 3.162
    assert noise_points(0.5, 2000) == pytest.approx(3.1623, abs=1e-3)
    assert noise_points(0.5, 8000) == pytest.approx(noise_points(0.5, 2000) / 2)


@pytest.mark.parametrize(
    "searched, word",
    [(0.60, "better than"), (0.40, "worse than"), (0.51, "within noise of")],
)
def test_verdict_calls_the_gap_against_the_noise(searched: float, word: str) -> None:
    best = _row(3, "trial 3", searched, 2.0)
    baselines = [_row(0, "fasternet_t0_w0.5", 0.50, 4.0), _row(1, "dscnn_t0_w0.5", 0.45, 1.0)]
    line = verdict(best, baselines, 2000)
    assert f"is {word} the best baseline fasternet_t0_w0.5" in line  # the most accurate baseline, not the first
    assert f"{100 * (searched - 0.50):+.1f} points" in line and "0.50x its latency" in line


def test_verdict_without_a_trained_side_says_so() -> None:
    assert "no searched trial" in verdict(None, [_row(0, "b", 0.5, 1.0)], 100)
    assert "no baseline was trained" in verdict(_row(2, "trial 2", 0.5, 1.0), [], 100)


def test_table_lists_every_baseline_with_why_it_was_not_trained() -> None:
    rows = [_row(0, "fasternet_t0_w0.5", 0.41, 3.0), _row(1, "falconnet", None, 14.5, feasible=False),
            _row(2, "dscnn_t0", None, 5.0, state="PRUNED"), _row(3, "trial 3", 0.47, 2.5),
            _row(4, "trial 4", 0.30, 2.0)]
    console = Console(record=True, width=200)
    print_comparison(rows, console, num_classes=10, val_images=2000)
    text = console.export_text()
    assert "chance 10.0%" in text
    row = {name: next(line for line in text.splitlines() if f" {name} " in line)
           for name in ("trial 3", "falconnet", "dscnn_t0", "fasternet_t0_w0.5")}
    assert "searched (best)" in row["trial 3"] and "47.0%" in row["trial 3"]
    assert "over budget" in row["falconnet"] and "14.50" in row["falconnet"] and "pruned" in row["dscnn_t0"]
    assert "41.0%" in row["fasternet_t0_w0.5"]
    assert "trial 4" not in text  # only the best searched trial
    assert "trial 3 is better than the best baseline fasternet_t0_w0.5: +6.0 points (noise +/-3.1" in text

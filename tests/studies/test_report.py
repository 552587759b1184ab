"""The study report shows what the console warned about, and a width plot that reads."""

from __future__ import annotations

from pathlib import Path

from pruning.csgd import CONVERGED
from studies.study_report import _plot_widths, _pruning_warnings


def test_a_pruning_warning_reaches_the_report() -> None:
    noisy_merge = _pruning_warnings({"algorithm": {"merge_relative_error": 0.88}})
    assert any("merge changed the outputs by 0.88" in line for line in noisy_merge)
    assert _pruning_warnings({"algorithm": {"merge_relative_error": CONVERGED / 10}}) == []
    assert any("forced final mask" in line for line in _pruning_warnings({"algorithm": {"forced_final_mask": True}}))


def test_width_plot_is_drawn_as_kept_fractions(tmp_path: Path) -> None:
    png = tmp_path / "w.png"
    _plot_widths({"stem.0.conv": [16, 8], "stages.0.0.expand.conv": [32, 16], "head.conv": [1280, 1280]}, png)
    assert png.stat().st_size > 1000

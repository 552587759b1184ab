"""The README's first command is the one `benchmarks/quickstart.py` measures, and it parses."""

from __future__ import annotations

import shlex
from pathlib import Path

import search
from benchmarks.quickstart import QUICKSTART

ROOT = Path(__file__).resolve().parents[1]


def test_readme_runs_exactly_the_measured_quickstart() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f".venv/bin/python {QUICKSTART}\n" in readme  # the set-up command ends with it


def test_the_quickstart_flags_are_valid_and_small() -> None:
    config = search.config_from_args([*shlex.split(QUICKSTART)[1:], "--device", "cpu"])
    assert config.data.name == "embedded" and config.budget_ms is not None
    assert len(config.baselines) >= 2 and config.trials <= 8  # a comparison, small enough for minutes

"""benchmarks/pruning_cifar10.py's own checks: bad settings fail before any training, errors are retried."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.scripts import load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("benchmarks/pruning_cifar10.py")


@pytest.mark.parametrize("argv, message", [(["--runtime", "nope"], "unknown runtime"),
                                           (["--markdown", "--out", "/nonexistent.json"], "no results file")])
def test_bad_settings_fail_before_training(bench: ModuleType, argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_resume_keeps_results_and_misses_but_retries_errors(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    args = bench.parse_args(["--out", str(out), "--resume"])
    settings = {k: getattr(args, k) for k in bench.SHARED_SETTINGS}
    rows = {"a/0/resrep@macs": {"accuracy": 0.5}, "a/0/csgd@latency": {"missed": "2.4 > 2.0 ms"},
            "a/0/magnitude@latency": {"error": "no prunable group"}}
    out.write_text(json.dumps({"settings": settings, "rows": rows}))
    assert set(bench.kept_rows(args)) == {"a/0/resrep@macs", "a/0/csgd@latency"}

"""The zoo report: one row per registry model, with counts and the paper's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dscnn
from dscnn import zoo


def test_repvgg_a0_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "zoo" / "rows.json"
    assert zoo.main(["--models", "repvgg_a0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "fvcore" in report["convention"] and "deploy" in report["convention"]
    (row,) = report["models"]
    assert row["model"] == "repvgg_a0" and row["resolution"] == 224 and row["stem_stride"] == 4
    assert row["params_deploy"] == row["params_deploy_224"] == 8_309_384  # official deploy count
    assert row["macs_deploy"] == row["macs_deploy_224"] == 1_361_513_728
    assert 9.0e6 < row["params_train"] < 9.2e6  # docs/design.md section 3: train form about 9.11M
    assert row["paper"]["params"] == 8_309_384 and row["paper"]["params_form"] == "deploy"
    assert row["params_rel_diff"] == 0
    assert row["macs_rel_diff"] == pytest.approx((1_361_513_728 - 1.361e9) / 1.361e9)
    assert "repvgg_a0" in capsys.readouterr().out


def test_paper_counts_name_registered_models() -> None:
    unknown = sorted(set(zoo.PAPER_COUNTS) - set(dscnn.list_models()))
    assert not unknown, f"paper counts for unregistered models: {unknown}"
    for name, paper in zoo.PAPER_COUNTS.items():
        assert paper.params_form in ("train", "deploy"), name


def test_unmatched_pattern_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        zoo.main(["--models", "no_such_*"])
    assert exc.value.code == 2
    assert "no registry model matches 'no_such_*'" in capsys.readouterr().err

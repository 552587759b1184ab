"""The zoo report: one row per registry model, with counts and the paper's numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import dscnn
from dscnn import repmix_sweep, zoo


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


# The zoo's DSCNN and FalconNet rows at 224, 1000 classes: (train params, deploy params, deploy fvcore MACs).
# A change here is a change of architecture: update benchmarks/results/zoo.json and the README with it.
PINNED_ROWS = {
    "dscnn_t0": (3_887_208, 3_719_600, 348_107_840),
    "dscnn_t1": (7_346_368, 7_078_184, 864_485_888),
    "dscnn_t2": (14_169_928, 13_767_624, 1_912_651_520),
    "dscnn_s": (29_024_680, 28_286_056, 4_408_495_104),
    "falconnet": (2_141_000, 1_805_208, 88_924_928),
    "falconnet_l1_r2": (1_908_872, 1_723_368, 69_845_504),
    "falconnet_l2_r4": (2_054_504, 1_763_616, 80_194_304),
}


@pytest.mark.parametrize("name", sorted(PINNED_ROWS))
def test_pinned_rows(name: str) -> None:
    row = zoo.zoo_row(name)
    assert (row["params_train"], row["params_deploy"], row["macs_deploy"]) == PINNED_ROWS[name]
    if name == "falconnet":
        assert row["refco_kernels"]["64->128"] == 16  # docs/design.md 2.2's example: C=64, λ=2, R=2 -> K=16


def test_shape_rms_compares_steps_not_levels() -> None:
    assert repmix_sweep.shape_rms([int(v + 1e6) for v in repmix_sweep.TABLE6_PARAMS]) == 0
    assert repmix_sweep.shape_rms([5, 5, 5, 5]) == pytest.approx(math.sqrt((120e3**2 + 60e3**2 + 60e3**2) / 4))


def test_hidden_split_steps_near_table6() -> None:
    """Train params per r (cheap: no MAC count): the stem-only RepMiX barely moves, "hidden" grows ~45k a step."""
    def sweep(placement: str) -> list[int]:
        return [dscnn.count_params(dscnn.create_model("dscnn_t0", repmix_r=r, repmix_placement=placement))
                for r in (1, 2, 3, 4)]

    assert repmix_sweep.shape_rms(sweep("stem")) > 70_000
    assert repmix_sweep.shape_rms(sweep("hidden")) < 30_000


@pytest.mark.slow
def test_repmix_sweep_beside_table6(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "zoo.json"
    assert zoo.main(["--models", "dscnn_t0", "--json", str(out)]) == 0
    sweep = json.loads(out.read_text())["repmix_sweep"]
    assert sweep["paper"]["params_train"] == [3.46e6, 3.52e6, 3.58e6, 3.64e6] and sweep["paper"]["params_deploy_r3"] == 3.45e6
    readings = {(row["placement"], row["layout"]): row for row in sweep["readings"]}
    assert len(readings) == 6
    stem = readings["stem", "split"]  # the models' default: r=3 is the pinned dscnn_t0 row
    assert (stem["params_train"][2], stem["params_deploy"][2], stem["macs_deploy"][2]) == PINNED_ROWS["dscnn_t0"]
    assert stem["params_train"][3] - stem["params_train"][0] < 5_000  # the stem alone: hundreds per step
    assert sweep["nearest"] == {"placement": "hidden", "layout": "split"}
    assert readings["hidden", "split"]["shape_rms_train"] < 30_000
    assert "RepMiX r-sweep" in capsys.readouterr().out

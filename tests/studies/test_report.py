"""The study report shows what the console warned about, and a width plot that reads."""

from __future__ import annotations

from pathlib import Path

from pruning.csgd import CONVERGED
from studies.study_report import (
    _collapse_warning,
    _methods_section,
    _plot_widths,
    _pruning_section,
    _pruning_warnings,
    _target_text,
    _winner_section,
)


def test_a_pruning_warning_reaches_the_report() -> None:
    noisy_merge = _pruning_warnings({"algorithm": {"merge_relative_error": 0.88}})
    assert any("merge changed the outputs by 0.88" in line for line in noisy_merge)
    assert _pruning_warnings({"algorithm": {"merge_relative_error": CONVERGED / 10}}) == []
    assert any("forced final mask" in line for line in _pruning_warnings({"algorithm": {"forced_final_mask": True}}))


def test_width_plot_is_drawn_as_kept_fractions(tmp_path: Path) -> None:
    png = tmp_path / "w.png"
    _plot_widths({"stem.0.conv": [16, 8], "stages.0.0.expand.conv": [32, 16], "head.conv": [1280, 1280]}, png)
    assert png.stat().st_size > 1000


def test_after_a_stage2_the_winner_section_describes_the_stage2_winner() -> None:
    search = {"arch": {"family": "resnet_cifar", "depth": 20}, "best_trial": "resnet20", "best_accuracy": 0.5}
    retrain = {"from_stage2": "trial 6", "arch": {"family": "dscnn", "depths": [1, 2]}, "epochs": 8, "accuracy": 0.61,
               "test_accuracy": 0.6, "seed": 0, "stage1_val_accuracy": 0.54, "fits": True}
    text = "\n".join(_winner_section(search, retrain))
    assert "## Winner: trial 6 (dscnn)" in text and "resnet" not in text and "stage-1 proxy validation 0.5400" in text
    assert "that fit the budget" in text
    text = "\n".join(_winner_section(search, {**retrain, "fits": False}))
    assert "none fitted the budget" in text
    plain = "\n".join(_winner_section(search, {"epochs": 10, "accuracy": 0.7}))
    assert "## Winner: resnet20 (resnet_cifar)" in plain and "retrained for 10 epochs: 0.7000" in plain


def test_a_latency_target_is_named_in_ms_not_as_the_unpruned_macs() -> None:
    report = {"target": "2.76ms", "target_macs": 41e6, "latency": {"target_ms": 2.76}}
    assert _target_text(report) == "latency target 2.76 ms"
    assert _target_text({"target": "0.5x", "target_macs": 20.5e6, "latency": None}) == "target 0.5x = 20.5M MACs"


def test_a_pruned_model_at_chance_is_called_out() -> None:
    prune = {"collapsed": True, "chance": 0.1, "report": {"after": {"accuracy": 0.1}}}  # a record that exported it
    assert "the exported pruned model is at chance" in "\n".join(_collapse_warning(prune))
    assert _collapse_warning({**prune, "collapsed": False}) == []
    refused = {"resrep": {"met_target": True, "collapsed": True, "report": {"after": {"accuracy": 0.11}}},
               "magnitude": {"met_target": True, "collapsed": False, "report": {"after": {"accuracy": 0.4}}}}
    text = "\n".join(_collapse_warning({**prune, "exported": "pruned", "chosen": "magnitude", "methods": refused}))
    assert "resrep met the target at chance** (validation top-1 0.1100" in text and "was not exported" in text
    assert "magnitude" not in text and "exported pruned model" not in text


def test_when_every_method_failed_the_report_says_the_unpruned_winner_is_exported() -> None:
    prune = {"chosen": None, "exported": "unpruned", "target": "0.5x", "target_latency": None, "chance": 0.1,
             "reason": "resrep: failed (no group can be pruned)", "collapsed": False,
             "methods": {"resrep": {"method": "resrep", "error": "no group can be pruned", "met_target": False}}}
    text = "\n".join(_pruning_section(prune, {"accuracy": 0.55}))
    assert text.startswith("## Pruning (target 0.5x): the unpruned winner is exported\n\n**Warning: no pruned model "
                           "met the target without collapsing; the exported model is the unpruned winner.** resrep: "
                           "failed (no group can be pruned)")
    assert "the retrained winner unchanged, validation top-1 0.5500" in text  # no run measured it: no stats table
    assert "To retry resrep (after changing what made it fail), run the study again with `--redo prune`" in text
    assert "| resrep | - | no: no group can be pruned |" in text  # one method: its row is still shown
    assert "Before and after" not in text and "widths.png" not in text and "itself at chance" not in text
    at_chance = "\n".join(_pruning_section(prune, {"accuracy": 0.11}))  # <= COLLAPSED x chance: not learned
    assert "**Warning: the exported model is itself at chance** (validation top-1 0.1100, chance 0.1000)" in at_chance
    assert _methods_section({**prune, "chosen": "resrep", "report": {}}) == []  # one pruned method: the table is redundant


def test_a_record_from_before_collapsed_models_were_refused_keeps_its_own_rule() -> None:
    after = {"params": 10, "macs": 1e6, "latency_ms": 1.0, "accuracy": 0.1}
    runs = {m: {"met_target": True, "report": {"after": after}} for m in ("csgd", "magnitude")}
    legacy = "\n".join(_methods_section({"chosen": "magnitude", "methods": runs, "report": {}}))  # no "exported"
    assert "among the methods that met the target. Test" in legacy and "without collapsing" not in legacy
    current = "\n".join(_methods_section({"chosen": "magnitude", "methods": runs, "report": {}, "exported": "pruned",
                                          "chance": 0.1}))
    assert "met the target without collapsing (top-1 above 1.2 x chance = 0.1200). Test" in current

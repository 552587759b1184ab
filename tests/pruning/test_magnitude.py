"""L1 magnitude pruning: which channels go, the FLOPs and latency targets through the shared driver, the runtimes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import dscnn
from pruning.groups import find_groups
from pruning.macs import CostModel
from pruning.magnitude import Magnitude
from pruning.magnitude import main as magnitude_main
from tests.pruning.fake_latency import fake_latency
from tests.pruning.test_latency_target import _bench_lock, _fake_timing
from tests.pruning.tiny import tiny_overrides

DATA = ["--train-per-class", "4", "--val-per-class", "2", "--batch-size", "8"]


class Chain(nn.Module):
    """conv -> relu -> conv -> pool -> linear: one prunable group (``a``), no coupling."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.b(F.relu(self.a(x)))).mean(dim=(2, 3)))


def test_the_lowest_l1_channels_go_and_the_target_holds() -> None:
    torch.manual_seed(0)
    model = Chain().eval()
    example = torch.zeros(1, 3, 16, 16)
    with torch.no_grad():  # channel i of ``a`` (and of what reads it) scaled by i + 1: L1 order = index order
        for i in range(8):
            model.a.weight[i].fill_(0.01 * (i + 1))
            model.b.weight[:, i].fill_(0.01 * (i + 1))
        model.a.weight[2].fill_(1.0)  # made the most important channel of all
    target = 0.6 * CostModel(model, find_groups(model, example).groups, example).total_macs
    algorithm = Magnitude()
    algorithm.prepare(model, target, example, steps_per_epoch=1)
    width = algorithm.widths["a"]
    assert 1 <= width < 8
    probe = torch.randn(2, 3, 16, 16)
    kept_a = model.a.weight.detach().clone()
    pruned = algorithm.prune(model)
    assert isinstance(pruned, Chain)
    assert dscnn.count_macs(pruned, 16) <= target
    assert pruned.a.out_channels == width and pruned.b.in_channels == width
    # the survivors are channel 2 (the largest) and then the highest indices, in their original order
    kept = sorted([2, *[c for c in range(7, -1, -1) if c != 2][: width - 1]])
    assert torch.equal(pruned.a.weight, kept_a[kept])
    assert pruned(probe).shape == (2, 10)
    summary = algorithm.summary()
    assert summary["max_removed_importance"] < summary["min_kept_importance"]


def _checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = dscnn.create_model("resnet20", **{**tiny_overrides("resnet20"), "widths": (4, 8, 8)})
    return dscnn.save_checkpoint(tmp_path / "resnet20.pt", model)


def test_cli_prunes_to_the_flops_target_and_fine_tunes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _checkpoint(tmp_path)
    out = tmp_path / "pruned.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = magnitude_main([str(ckpt), "--target-flops", "0.5x", "--no-latency", "--no-progress",
                               "--finetune-epochs", "1", "--out", str(out), *DATA])
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["method"] == "magnitude" and report["after"]["macs"] <= 0.5 * report["before"]["macs"]
    assert report["settings"]["finetune_epochs"] == 1 and report["accuracy_after_prune"] is not None
    # what ran: no regularised epochs (not the retraining recipe's unused default), one fine-tuning epoch
    assert report["settings"]["train"]["epochs"] == 0 and report["epochs"] == {"regularized": 0, "finetune": 1}
    assert report["algorithm"]["max_removed_importance"] > 0
    assert any(a != b for a, b in report["widths"].values())
    pruned, _ = dscnn.load_checkpoint(out)
    assert dscnn.count_macs(pruned, 32) == report["after"]["macs"]


def test_cli_has_no_regularised_epochs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        magnitude_main([str(_checkpoint(tmp_path)), "--target-flops", "0.5x", "--epochs", "1"])
    assert exit_.value.code == 2 and "--epochs" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--target-latency=0ms"], "must be positive"), (["--target-latency=abc"], "write milliseconds"),
    (["--target-flops=0.5x", "--runtime=bogus"], "unknown runtime 'bogus'"),
    (["--target-flops=0.5x", "--runtime=cudagraph"], "needs device cuda"),
])
def test_bad_targets_and_runtimes_exit_2_in_one_line_writing_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    ckpt = _checkpoint(tmp_path)
    assert magnitude_main([str(ckpt), *args, "--no-progress", *DATA]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet20.pt"]


def test_a_latency_below_one_channel_per_layer_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fake_latency(monkeypatch)
    ckpt = _checkpoint(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = magnitude_main([str(ckpt), "--target-latency", "0.0001ms", "--no-progress", *DATA])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "one channel" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet20.pt"]


@pytest.mark.parametrize(("after_factor", "code"), [(0.2, 0), (5.0, 1)])
def test_latency_target_met_is_reported_and_a_miss_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        after_factor: float, code: int) -> None:
    import pruning.latency_table
    import pruning.run

    monkeypatch.setattr(pruning.run, "compare_latency", _fake_timing(after_factor))
    monkeypatch.setattr(pruning.latency_table, "snap_width", lambda model, group, width, example, measure: width)
    fake_latency(monkeypatch)
    torch.manual_seed(0)
    ckpt = dscnn.save_checkpoint(tmp_path / "resnet20.pt", dscnn.create_model("resnet20", **tiny_overrides("resnet20")))
    out = tmp_path / "pruned.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = magnitude_main([str(ckpt), "--target-latency", "0.9x", "--no-progress", "--finetune-epochs", "1",
                              "--out", str(out), *DATA])
    captured = capsys.readouterr()
    assert got == code, captured.err
    if code:
        assert "above the latency target" in captured.err and not out.exists() and not out.with_suffix(".json").exists()
        return
    latency = json.loads(out.with_suffix(".json").read_text())["latency"]
    # the plan meets the budget it was made for: the target corrected by measuring the plan whole
    planned_ms = latency["calibration"]["budget_ms"]
    assert latency["met"] and latency["predicted_ms"] <= planned_ms * 1.0001
    assert latency["calibration"]["target_ms"] == latency["target_ms"]
    assert "latency target" in captured.out and "met" in captured.out


@pytest.mark.parametrize("runtime", ["eager", "onnxruntime"])
def test_the_before_after_latency_runs_in_the_chosen_runtime(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             runtime: str) -> None:
    if runtime == "onnxruntime":
        pytest.importorskip("onnxruntime")
    ckpt = _checkpoint(tmp_path)
    out = tmp_path / "pruned.pt"
    with _bench_lock(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # noisy-machine warnings: only the runtime is checked here
        code = magnitude_main([str(ckpt), "--target-flops", "0.5x", "--runtime", runtime, "--no-progress",
                               "--finetune-epochs", "0", "--out", str(out), *DATA])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["latency_settings"]["runtime"] == runtime and report["settings"]["latency_runtime"] == runtime
    for side in ("before", "after"):
        assert report["latency"][side]["runtime"] == runtime and report["latency"][side]["runtime_version"]
        assert report["latency"][side]["median_ms"] > 0
    assert f"runtime {runtime}" in captured.out


def test_the_latency_table_is_measured_in_the_chosen_runtime(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Every timing behind a latency target (table, calibration, snapping) runs in ``--runtime``."""
    import pruning.run

    runtimes = fake_latency(monkeypatch)
    monkeypatch.setattr(pruning.run, "compare_latency", _fake_timing(0.2))
    torch.manual_seed(0)
    ckpt = dscnn.save_checkpoint(tmp_path / "resnet20.pt", dscnn.create_model("resnet20", **tiny_overrides("resnet20")))
    out = tmp_path / "pruned.pt"
    code = magnitude_main([str(ckpt), "--target-latency", "0.7x", "--runtime", "onnxruntime", "--no-progress",
                           "--finetune-epochs", "0", "--out", str(out), *DATA])
    assert code == 0, capsys.readouterr().err
    assert len(runtimes) > 10 and set(runtimes) == {"onnxruntime"}
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["latency_settings"]["runtime"] == "onnxruntime" and report["latency"]["met"]

"""ResRep: the gradient rule, the mask schedule, and short end-to-end runs through the driver and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dscnn
from dscnn.data import DataConfig
from dscnn.train import TrainConfig
from pruning.resrep import ResRep, ResRepConfig, main
from pruning.run import RunConfig, run_pruning
from tests.pruning.tiny import tiny_deploy, tiny_overrides

X = torch.zeros(1, 3, 32, 32)
SHORT = {"data": DataConfig(train_per_class=8, val_per_class=4), "time_latency": False, "progress": False,
         "train": TrainConfig(epochs=1, batch_size=16, lr=0.01, weight_decay=1e-4)}


@pytest.mark.filterwarnings("ignore:ResRep. the masks cannot reach")
def test_gradient_reset_and_group_lasso() -> None:
    model = tiny_deploy("resnet20")
    resrep = ResRep(ResRepConfig(lasso=0.05, warmup_epochs=100, mask_interval=200, granularity=4))  # no mask update
    resrep.prepare(model, 0.5 * dscnn.count_macs(model, 32), X, steps_per_epoch=10)
    wrapper = resrep.compactors()[3]
    q = wrapper.compactor.weight
    with torch.no_grad():
        q.add_(torch.randn(q.shape) * 0.2)
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    task = q.grad.clone()
    masked = task.flatten(1).norm(dim=1).topk(2).indices  # rows with a real task gradient to reset
    wrapper.compactor.mask[masked] = 0
    resrep.regularize()
    rows = q.detach().flatten(1)
    lasso = 0.05 * (rows / rows.norm(dim=1, keepdim=True)).view_as(q)
    assert torch.allclose(q.grad, task * wrapper.compactor.mask.view(-1, 1, 1, 1) + lasso, atol=1e-7)
    assert torch.allclose(q.grad[masked], lasso[masked], atol=1e-7) and task[masked].abs().min() >= 0
    assert task[masked].flatten(1).norm(dim=1).min() > 0


def test_mask_updates_follow_warmup_and_interval() -> None:
    model = tiny_deploy("resnet20")
    resrep = ResRep(ResRepConfig(mask_interval=5, granularity=2, warmup_epochs=1.0))
    with pytest.warns(UserWarning, match="gradually"):  # 2 channels per update cannot halve the FLOPs in 3 epochs
        resrep.prepare(model, 0.5 * dscnn.count_macs(model, 32), X, steps_per_epoch=10, epochs=3)
    for _ in range(26):
        resrep.regularize()
    assert [h["step"] for h in resrep.history] == [15, 20, 25]
    assert [h["masked"] for h in resrep.history] == [2, 4, 6]
    masked = sum(int((c.compactor.mask == 0).sum()) for c in resrep.compactors())
    assert masked >= 6  # a masked channel of a residual group is masked in each of its compactors


def test_unreachable_target_is_refused_before_training() -> None:
    model = tiny_deploy("fasternet_t0")  # its residual streams are not prunable
    with pytest.raises(ValueError, match="below .* every prunable layer at one channel"):
        ResRep().prepare(model, 1000.0, X, steps_per_epoch=1)


def _checkpoint(tmp_path: Path, name: str, **overrides: object) -> Path:
    torch.manual_seed(0)
    model = dscnn.create_model(name, **{**tiny_overrides(name), **overrides})
    return dscnn.save_checkpoint(tmp_path / f"{name}.pt", model)


@pytest.mark.parametrize(
    ("name", "overrides", "knobs"),
    [
        ("dscnn_t0", {"spatial_ops": ("repaso",) * 4}, {"mask_interval": 1, "granularity": 64, "warmup_epochs": 0.0}),
        ("resnet56", {}, {"mask_interval": 2, "granularity": 4, "warmup_epochs": 0.0}),  # too slow: a forced final mask
    ],
)
def test_short_run_halves_flops(tmp_path: Path, name: str, overrides: dict[str, object], knobs: dict[str, float]) -> None:
    ckpt = _checkpoint(tmp_path, name, **overrides)
    resrep = ResRep(ResRepConfig(**knobs))  # type: ignore[arg-type]
    forced = knobs["granularity"] == 4
    config = RunConfig(target="0.5x", finetune_epochs=0 if forced else 1, **SHORT)  # type: ignore[arg-type]
    with pytest.warns(UserWarning) as caught:
        pruned, report = run_pruning(resrep, config, checkpoint=str(ckpt))
    assert report.after.macs <= report.target_macs == pytest.approx(0.5 * report.before.macs)
    assert report.algorithm["conversion_relative_error"] <= 1e-5  # pruned == masked model (float32)
    assert report.after.params < report.before.params
    assert report.algorithm["forced_final_mask"] is forced
    assert any("final update" in str(w.message) for w in caught) is forced
    assert 0 <= report.after.accuracy <= 1 and report.algorithm["max_removed_row_norm"] > 0
    assert any(after < before for before, after in report.widths.values())
    assert report.accuracy_before_prune is not None  # the trained model, before conversion
    went = report.algorithm["where_macs_went"]
    assert went and went[0]["saved_macs"] >= went[-1]["saved_macs"] > 0
    # the written checkpoint is the pruned deploy model, loadable through the registry
    loaded, info = dscnn.load_checkpoint(report.output)
    assert info.pruned and info.form == "deploy" and info.metrics["macs"] == report.after.macs
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    saved = json.loads(Path(report.output).with_suffix(".json").read_text())
    assert saved["after"]["macs"] == report.after.macs and saved["method"] == "resrep"


@pytest.mark.parametrize(
    ("target", "message"),
    [("2x", "below 1x"), ("1G", "at or above"), ("0", "positive"), ("-5M", "positive"), ("lots", "cannot parse")],
)
def test_bad_targets_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, message: str) -> None:
    ckpt = _checkpoint(tmp_path, "resnet20")
    assert main([str(ckpt), f"--target-flops={target}", "--no-progress", "--no-latency", "--epochs", "1"]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet20.pt"]


def test_missing_or_corrupted_checkpoint_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope.pt"), "--target-flops", "0.5x", "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint" * 10)
    assert main([str(bad), "--target-flops", "0.5x", "--no-progress"]) == 2
    assert "truncated or not a checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


def test_cli_prunes_a_torchvision_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mnv2.pt"
    args = ["--model", "mobilenet_v2", "--target-flops", "0.6x", "--out", str(out), "--no-progress", "--no-latency",
            "--train-per-class", "4", "--val-per-class", "2", "--batch-size", "20", "--epochs", "1",
            "--mask-interval", "1", "--granularity", "500", "--warmup-epochs", "0"]
    assert main(args) == 0
    assert "pruned" in capsys.readouterr().out
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["after"]["macs"] <= report["target_macs"] and report["source"] == "mobilenet_v2"
    assert report["settings"]["train"]["epochs"] == 1 and report["epochs"] == {"regularized": 1, "finetune": 0}
    model = torch.load(out, weights_only=False)  # the documented exception: a whole pickled module
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)

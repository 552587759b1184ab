"""benchmarks/ablations_cifar10.py: the verdict rule and the resume (a rerun skips finished runs)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from dscnn.train import TrainResult
from tests.scripts import load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("benchmarks/ablations_cifar10.py")


def test_verdict_rule(bench: ModuleType) -> None:
    assert bench.verdict(0.02, 0.01) == "confirmed"
    assert bench.verdict(-0.02, 0.01) == "refuted"
    assert bench.verdict(0.005, 0.01) == bench.verdict(-0.01, 0.01) == "within noise"
    assert bench.binomial_se(0.5, 2500) == pytest.approx(0.01)


def test_judge_uses_the_strongest_rival_and_the_larger_noise(bench: ModuleType) -> None:
    best = bench.Claim("J best", "J", "best")
    worst = bench.Claim("A worst", "A", "worst")
    accs = {"A": [0.50, 0.50], "C": [0.60, 0.60], "J": [0.66, 0.66]}
    j = bench.judge(best, accs, 10_000)  # SE ~ 0.5 pt < 6 pt gap over C (not over A)
    assert (j["rival"], j["verdict"]) == ("C", "confirmed") and j["gap"] == pytest.approx(0.06)
    assert bench.judge(worst, accs, 10_000)["verdict"] == "confirmed"
    # the same means, but seeds that disagree by more than the gap: within noise
    assert bench.judge(best, {**accs, "J": [0.56, 0.76]}, 10_000)["verdict"] == "within noise"
    # a small test set: the binomial SE (~4.9 pt at n=100) swallows a 4 pt gap
    assert bench.judge(best, {**accs, "J": [0.64, 0.64]}, 100)["verdict"] == "within noise"
    assert bench.judge(best, {**accs, "C": [0.80, 0.80]}, 10_000)["verdict"] == "refuted"
    assert bench.judge(worst, {**accs, "A": [0.70, 0.70]}, 10_000)["verdict"] == "refuted"
    assert bench.judge(best, {"A": [0.5], "J": []}, 100)["verdict"] == "not run"
    # the noise of a gap is the SE of a difference: 1.4 pt at n = 2000 (one accuracy's SE 1.12, a difference's 1.58)
    close = bench.judge(best, {"A": [0.468, 0.468], "J": [0.454, 0.454]}, 2000)
    assert close["verdict"] == "within noise" and close["binomial_se"] == pytest.approx(0.01578, abs=1e-4)


class _Data:
    train_labels = torch.zeros(40)
    val_labels = torch.zeros(20)


def test_rerun_skips_finished_runs_and_json_is_written_after_each(bench: ModuleType, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    crash_at = [3]

    def fake_train(model: Any, data: Any, config: Any) -> TrainResult:
        calls.append(config.seed)
        if len(calls) == crash_at[0]:
            raise RuntimeError("crash")
        acc = 0.4 + 0.01 * len(calls)
        return TrainResult((acc - 0.1, acc), (2.0, 1.5), 1.0, 100.0, 32)

    monkeypatch.setattr(bench, "load_dataset", lambda config: _Data())
    monkeypatch.setattr(bench, "train_and_evaluate", fake_train)
    monkeypatch.setattr(bench, "build", lambda variant, seed: torch.nn.Identity())
    monkeypatch.setattr(bench, "counts", lambda model: {"train_params": 2, "deploy_params": 1, "deploy_macs": 3})
    monkeypatch.setattr(bench, "environment", lambda device, threads: {})
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    argv = ["--data-dir", "x", "--ablations", "repaso", "--rows", "A", "J", "--epochs", "2",
            "--out", str(out), "--md", str(md)]
    with pytest.raises(RuntimeError, match="crash"):
        bench.main(argv)
    runs = json.loads(out.read_text())["runs"]
    assert sorted(runs) == ["repaso/A/seed0", "repaso/A/seed1"]  # the two runs before the crash are kept
    assert runs["repaso/A/seed0"]["curve_test_accuracy"] == pytest.approx([0.31, 0.41])
    calls.clear()
    crash_at[0] = 0
    assert bench.main(argv) == 0
    assert calls == [0, 1]  # the rerun does J's two runs only
    report = md.read_text()
    assert "| A | 41.00, 42.00 | 41.50 ± 0.50 |" in report and "branch set J is best" in report
    calls.clear()
    assert bench.main([*argv[:-4], "--epochs", "3", "--out", str(out), "--md", str(md)]) == 0
    assert len(calls) == 4  # other settings: nothing reused

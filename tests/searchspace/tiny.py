"""The smallest real search the searchspace tests run: embedded data, tiny models, quick timing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna

from dscnn.data import DataConfig
from dscnn.latency import LatencySettings
from dscnn.train import TrainConfig
from searchspace import SearchConfig
from searchspace.storage import open_storage


def tiny_search_config(tmp_path: Path, *, study_name: str, trials: int, **overrides: object) -> SearchConfig:
    """Everything under ``tmp_path``; ``budget_macs`` keeps sampled models small so trials train quickly."""
    base = SearchConfig(
        study_name=study_name, storage=str(tmp_path / "studies.db"), out=str(tmp_path / "out"), space="dscnn",
        trials=trials, seed=0, baselines=(), cache_path=str(tmp_path / "latency.sqlite"),
        device_lock=str(tmp_path / "device.lock"), budget_macs=30e6,
        data=DataConfig(train_per_class=4, val_per_class=2),
        train=TrainConfig(epochs=1, batch_size=20, device="cpu"),
        latency=LatencySettings(warmup=1, runs=3, repeats=1),
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def load_study(config: SearchConfig) -> optuna.Study:
    return optuna.load_study(study_name=config.study_name, storage=open_storage(config.storage))

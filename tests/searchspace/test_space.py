"""The search space: define-by-run, replayable without a study, every sample buildable."""

from __future__ import annotations

import json

import optuna
import pytest
import torch

import dscnn
from searchspace.space import SPACES, get_space, sample

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _random_configs(space: str, n: int, resolution: int = 32) -> list[dscnn.ArchConfig]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    configs = []
    for _ in range(n):
        trial = study.ask()
        configs.append(sample(trial, space, num_classes=10, resolution=resolution))
        study.tell(trial, 0.0)
    return configs


@pytest.mark.parametrize("resolution", [32, 64])
def test_every_sample_builds_and_runs(resolution: int) -> None:
    """Random samples from the full space all build, run and round-trip through JSON."""
    for config in _random_configs("full", 12, resolution):
        model = dscnn.build_model(config).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, resolution, resolution)).shape == (1, 10)
        assert dscnn.config_from_dict(json.loads(config.to_json())) == config


def test_fixed_trial_replays_a_config() -> None:
    params = {
        "depth1": 1, "depth2": 1, "depth3": 2, "depth4": 1, "width1": 16, "growth2": 2.0, "growth3": 2.0,
        "growth4": 1.5, "scconv_stages": "none", "stem_stride": 2, "branch_set": "J", "repmix_r": 3,
        "expansion": 2.0, "activation": "relu",
    }
    config = sample(optuna.trial.FixedTrial(params), "dscnn", num_classes=10, resolution=32)
    assert config.family == "dscnn"
    assert config.widths == (16, 32, 64, 96) and config.depths == (1, 1, 2, 1)
    assert config.spatial_ops == ("repaso",) * 4 and config.stem_stride == 2


def test_conditional_parameters_only_when_used() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_alpha_without_scconv = False
    for _ in range(25):
        trial = study.ask()
        config = sample(trial, "full", num_classes=10, resolution=32)
        study.tell(trial, 0.0)
        has_scconv = "scconv" in config.spatial_ops
        seen_alpha_without_scconv |= "scconv_alpha" in trial.params and not has_scconv
        family_params = {"branch_set", "repmix_r"} if config.family == "falconnet" else {"refco_reduction", "n_3x3"}
        assert not family_params & set(trial.params), f"{config.family} trial sampled {family_params & set(trial.params)}"
    assert not seen_alpha_without_scconv


def test_unknown_space_is_named() -> None:
    with pytest.raises(ValueError, match="unknown search space 'nope'.*full"):
        get_space("nope")
    assert {"dscnn", "falconnet", "full"} <= set(SPACES)

"""The architecture search space, sampled define-by-run from an Optuna trial (docs/design.md section 7).

`sample(trial, space, num_classes=..., resolution=...)` calls only ``trial.suggest_*`` and returns a
frozen model config of the block library, so it runs the same under a study, under Ray Tune's
Optuna searcher, and under `optuna.trial.FixedTrial` in tests. Conditional parameters appear only
when their family or block uses them (e.g. ``scconv_alpha`` only when SCConv is placed somewhere).
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

from dscnn.config import ArchConfig
from dscnn.models.dscnn import DSCNNConfig
from dscnn.models.falconnet import FalconNetConfig

#: RepASO branch sets offered: the DSCNN ablation rows A..J plus a few mixed large-kernel sets.
BRANCH_SET_CHOICES: tuple[str, ...] = (
    "A", "B", "C", "D", "E", "F", "G", "H", "I", "J",
    "5x5,3x3,1x1,id", "7x7,3x3,1x1,id", "5x5,3x3*2,1x5,5x1,id",
)
ACTIVATION_CHOICES: tuple[str, ...] = ("relu", "gelu", "hardswish")
#: Where SCConv replaces the stage's spatial operator ("none", or stage numbers 1-4).
SCCONV_PLACEMENTS: tuple[str, ...] = ("none", "1", "2", "3", "4", "34")
SCCONV_ALPHAS: tuple[float, ...] = (0.25, 0.5, 0.75)
BASE_WIDTHS: tuple[int, ...] = (16, 24, 32, 40, 48, 64)
WIDTH_GROWTHS: tuple[float, ...] = (1.5, 2.0)
DEPTH_RANGES: tuple[tuple[int, int], ...] = ((1, 2), (1, 3), (2, 10), (1, 3))


def _round8(value: float) -> int:
    return max(8, int(round(value / 8)) * 8)


def stem_stride_choices(resolution: int) -> tuple[int, ...]:
    """Stem strides worth trying at an input size: full resolution is costly to train and run."""
    if resolution <= 32:
        return (1, 2)
    return (2, 4) if resolution <= 64 else (4,)


def _sample_stem_stride(trial: optuna.Trial, resolution: int) -> int:
    choices = stem_stride_choices(resolution)
    return trial.suggest_categorical("stem_stride", choices) if len(choices) > 1 else choices[0]


def _sample_macro(trial: optuna.Trial) -> tuple[tuple[int, ...], tuple[int, ...]]:
    depths = tuple(trial.suggest_int(f"depth{i + 1}", lo, hi) for i, (lo, hi) in enumerate(DEPTH_RANGES))
    widths = [trial.suggest_categorical("width1", BASE_WIDTHS)]
    for i in range(2, len(DEPTH_RANGES) + 1):
        growth = trial.suggest_categorical(f"growth{i}", WIDTH_GROWTHS)
        widths.append(_round8(widths[-1] * growth))
    return depths, tuple(widths)


def _sample_spatial_ops(trial: optuna.Trial, default_op: str) -> tuple[tuple[str, ...], float]:
    placement = trial.suggest_categorical("scconv_stages", SCCONV_PLACEMENTS)
    stages = set() if placement == "none" else {int(c) for c in placement}
    ops = tuple("scconv" if i + 1 in stages else default_op for i in range(len(DEPTH_RANGES)))
    alpha = trial.suggest_categorical("scconv_alpha", SCCONV_ALPHAS) if stages else 0.5
    return ops, alpha


def sample_dscnn(trial: optuna.Trial, *, num_classes: int, resolution: int) -> DSCNNConfig:
    """DSCNN: macro layout, RepASO branch set, RepMiX r, λ, activation, SCConv placement."""
    depths, widths = _sample_macro(trial)
    spatial_ops, alpha = _sample_spatial_ops(trial, "repaso")
    return DSCNNConfig(
        num_classes=num_classes,
        resolution=resolution,
        stem_stride=_sample_stem_stride(trial, resolution),
        depths=depths,
        widths=widths,
        branch_set=trial.suggest_categorical("branch_set", BRANCH_SET_CHOICES),
        repmix_r=trial.suggest_int("repmix_r", 1, 4),
        expansion=trial.suggest_categorical("expansion", (1.5, 2.0, 3.0)),
        activation=trial.suggest_categorical("activation", ACTIVATION_CHOICES),
        spatial_ops=spatial_ops,
        scconv_alpha=alpha,
    )


def sample_falconnet(trial: optuna.Trial, *, num_classes: int, resolution: int) -> FalconNetConfig:
    """FalconNet: macro layout, λ, RefCO reduction R, RepSO 3x3 copies, activation, SCConv placement."""
    depths, widths = _sample_macro(trial)
    spatial_ops, alpha = _sample_spatial_ops(trial, "repso")
    return FalconNetConfig(
        num_classes=num_classes,
        resolution=resolution,
        stem_stride=_sample_stem_stride(trial, resolution),
        depths=depths,
        widths=widths,
        expansion=trial.suggest_categorical("falcon_expansion", (1.0, 2.0, 3.0)),
        refco_reduction=trial.suggest_categorical("refco_reduction", (2, 4)),
        n_3x3=trial.suggest_int("n_3x3", 1, 3),
        activation=trial.suggest_categorical("activation", ACTIVATION_CHOICES),
        spatial_ops=spatial_ops,
        scconv_alpha=alpha,
    )


Sampler = Callable[..., ArchConfig]
FAMILY_SAMPLERS: dict[str, Sampler] = {"dscnn": sample_dscnn, "falconnet": sample_falconnet}


def sample_full(trial: optuna.Trial, *, num_classes: int, resolution: int) -> ArchConfig:
    """Both families: the family is the first choice, its parameters follow."""
    family = trial.suggest_categorical("family", tuple(FAMILY_SAMPLERS))
    return FAMILY_SAMPLERS[family](trial, num_classes=num_classes, resolution=resolution)


SPACES: dict[str, Sampler] = {**FAMILY_SAMPLERS, "full": sample_full}


def sample(trial: optuna.Trial, space: str, *, num_classes: int, resolution: int) -> ArchConfig:
    """One architecture config from the named ``space`` (see `SPACES`)."""
    return get_space(space)(trial, num_classes=num_classes, resolution=resolution)


def get_space(space: str) -> Sampler:
    try:
        return SPACES[space]
    except KeyError:
        raise ValueError(f"unknown search space {space!r}; valid: {', '.join(SPACES)}") from None

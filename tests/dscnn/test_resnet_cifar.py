"""CIFAR ResNet: counts against the literature, shortcut options, per-block widths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dscnn
from tests.contracts import assert_deploy_equivalent


@pytest.mark.parametrize(
    ("name", "shortcut", "params", "macs"),
    [
        # option A: the paper's 0.27M / 0.85M params; conv+FC MACs 40.55M / 125.49M as usually cited.
        ("resnet20", "A", 269_722, 40_551_040 + 64 * 8 * 8),
        ("resnet56", "A", 853_018, 125_485_696 + 64 * 8 * 8),
        # option B adds two 1x1 conv-BN shortcuts: +2,752 params, +262,144 MACs.
        ("resnet56", "B", 855_770, 125_747_840 + 64 * 8 * 8),
    ],
)
def test_counts(name: str, shortcut: str, params: int, macs: int) -> None:
    model = dscnn.create_model(name, shortcut=shortcut)
    assert dscnn.count_params(model) == params
    assert dscnn.count_macs(dscnn.deploy_copy(model), 32) == macs


def test_option_a_and_pruned_widths_fuse_exactly() -> None:
    torch.manual_seed(0)
    mids = (3, 16, 5, 7, 32, 2, 64, 1, 9)
    model = dscnn.create_model("resnet20", shortcut="A", mid_widths=mids)
    assert [b.conv1.conv.out_channels for s in model.stages for b in s] == list(mids)  # type: ignore[union-attr]
    for dtype in (torch.float32, torch.float64):
        assert_deploy_equivalent(model, torch.randn(2, 3, 32, 32), dtype)


def test_pruned_config_survives_a_checkpoint(tmp_path: Path) -> None:
    model = dscnn.create_model("resnet20", mid_widths=(4,) * 9).eval()
    loaded, info = dscnn.load_checkpoint(dscnn.save_checkpoint(tmp_path / "m.pt", model))
    assert info.config == model.config and info.config.mid_widths == (4,) * 9  # type: ignore[attr-defined]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize(("resolution", "final"), [(32, 8), (64, 8), (224, 14)])
def test_builds_at_other_resolutions(resolution: int, final: int) -> None:
    model = dscnn.create_model("resnet20", resolution=resolution)
    with torch.no_grad():
        features = model.forward_features(torch.zeros(1, 3, resolution, resolution))  # type: ignore[operator]
    assert features.shape == (1, 64, final, final)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"depth": 21}, "6n \\+ 2"),
        ({"mid_widths": (4, 4)}, "needs 9 widths"),
        ({"widths": (16, 32)}, "3 stage widths"),
        ({"shortcut": "C"}, "'A' or 'B'"),
    ],
)
def test_bad_config(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dscnn.create_model("resnet20", **overrides)

"""DSCNN models: config validation, stem strides, SCConv stages, and the counts at 224 (docs/design.md section 3)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import dscnn
from dscnn.blocks.repmix import RepMiX
from dscnn.models.dscnn import DSCNN, DSCNNConfig, stem_conv
from tests.contracts import assert_deploy_equivalent

TINY = DSCNNConfig(widths=(8, 16), depths=(1, 1), spatial_ops=("repaso", "repaso"), head_dim=32,
                   num_classes=5, resolution=32)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"depths": (1, 2, 8)}, "same non-zero length"),
        ({"widths": (), "depths": (), "spatial_ops": ()}, "same non-zero length"),
        ({"widths": (40, 0, 160, 320)}, "widths must all be >= 1"),
        ({"depths": (1, 2, 0, 2)}, "depths must all be >= 1"),
        ({"expansion": 0.0}, "expansion must be > 0"),
        ({"ffn_expansion": -1.0}, "ffn_expansion must be > 0"),
        ({"head_dim": 0}, "head_dim must be > 0"),
        ({"spatial_ops": ("repaso", "conv", "repaso", "repaso")}, "unknown spatial_ops"),
        ({"scconv_alpha": 1.0}, "scconv_alpha"),
        ({"branch_set": "K"}, "branch set 'K'"),
        ({"repmix_r": 5}, "r must be in 1..4"),
        ({"activation": "swishy"}, "unknown activation"),
        ({"stem_stride": 3}, "stem_stride"),
        ({"repmix_placement": "everywhere"}, "unknown repmix_placement"),
        ({"repmix_layout": "diagonal"}, "unknown repmix_layout"),
        ({"stem_kernel": -1}, "stem_kernel must be >= 0"),
    ],
)
def test_bad_config(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dscnn.create_model("dscnn_t0", resolution=32, **overrides)


@pytest.mark.parametrize("resolution, feature_size", [(32, 4), (64, 4), (224, 7)])
def test_stem_stride_follows_resolution(resolution: int, feature_size: int) -> None:
    model = DSCNN(TINY.replace(widths=(8, 16, 32, 64), depths=(1, 1, 1, 1), spatial_ops=("repaso",) * 4,
                               resolution=resolution)).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, resolution, resolution))
    assert features.shape == (1, 64, feature_size, feature_size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("overrides", [{"repmix_r": 1, "branch_set": "3x3,1x1,id"}, {"repmix_r": 4, "branch_set": "A"}])
def test_tiny_variants_deploy_equivalent(overrides: dict, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    assert_deploy_equivalent(DSCNN(TINY.replace(**overrides)), torch.randn(2, 3, 32, 32), dtype)


def test_config_round_trip() -> None:
    model = dscnn.create_model("dscnn_t1", num_classes=10, resolution=32, branch_set="F")
    rebuilt = dscnn.build_model(dscnn.config_from_dict(json.loads(model.config.to_json())))
    assert rebuilt.config == model.config and dscnn.count_params(rebuilt) == dscnn.count_params(model)


HAS_SCCONV = importlib.util.find_spec("dscnn.blocks.scconv") is not None


@pytest.mark.skipif(not HAS_SCCONV, reason="dscnn/blocks/scconv.py not written yet")
def test_scconv_stage() -> None:
    torch.manual_seed(0)
    model = DSCNN(TINY.replace(spatial_ops=("scconv", "repaso"), scconv_alpha=0.5))
    assert type(model.stages[0][0].spatial).__name__ == "SCConv"
    assert_deploy_equivalent(model, torch.randn(2, 3, 32, 32), torch.float64)


# Measured at 224, 1000 classes: (train-form params, deploy params, deploy fvcore MACs). Issue 14 moved
# these from (3_888_048, 3_720_440, 350_742_080): Table 1's 3x3 stem conv replaced the 4x4 patch conv.
T0_COUNTS = (3_887_208, 3_719_600, 348_107_840)
# DSCNN Table 1: (params, FLOPs); which param form the paper quotes is unclear, so both are checked.
PAPER = {"dscnn_t0": (3.7e6, 0.32e9), "dscnn_t1": (7.38e6, 0.89e9), "dscnn_t2": (14.19e6, 1.90e9),
         "dscnn_s": (29.1e6, 4.38e9)}


def test_t0_counts_exact() -> None:
    model = dscnn.create_model("dscnn_t0")
    deployed = dscnn.deploy_copy(model)
    assert (dscnn.count_params(model), dscnn.count_params(deployed), dscnn.count_macs(deployed, 224)) == T0_COUNTS


def test_patch_stem_is_one_switch_away() -> None:
    """``stem_kernel=0`` rebuilds the pre-issue-14 4x4 stride-4 patch stem and its exact counts."""
    model = dscnn.create_model("dscnn_t0", stem_kernel=0)
    deployed = dscnn.deploy_copy(model)
    counts = (dscnn.count_params(model), dscnn.count_params(deployed), dscnn.count_macs(deployed, 224))
    assert counts == (3_888_048, 3_720_440, 350_742_080)


@pytest.mark.parametrize("resolution,stride", [(224, 4), (64, 2), (32, 1)])
def test_table1_stem_is_a_3x3_conv_to_h_over_4(resolution: int, stride: int) -> None:
    model = dscnn.create_model("dscnn_t0", resolution=resolution).eval()
    conv = stem_conv(model.config)
    assert (conv.conv.kernel_size, conv.conv.stride, conv.conv.padding) == ((3, 3), (stride, stride), (1, 1))
    assert conv.conv.out_channels == 40
    with torch.no_grad():
        assert model.stem(torch.randn(1, 3, resolution, resolution)).shape[-1] == resolution // stride


def test_repmix_placements() -> None:
    def repmixes(model: torch.nn.Module) -> list[int]:
        return [m.channels for m in model.modules() if isinstance(m, RepMiX)]

    config = TINY.replace(depths=(1, 2))
    assert repmixes(DSCNN(config)) == [8]  # stem only
    assert repmixes(DSCNN(config.replace(repmix_placement="blocks"))) == [8, 8, 16, 16]  # + before each block
    hidden = DSCNN(config.replace(repmix_placement="hidden", repmix_layout="parallel"))
    assert repmixes(hidden) == [8, 16, 32, 32]  # + after each block's spatial operator, on λC channels
    assert isinstance(hidden.stages[0][0].spatial[1], RepMiX) and len(hidden.stages[0][0].spatial[1].mix) == 3


@pytest.mark.parametrize("name", sorted(PAPER))
def test_within_10_percent_of_paper(name: str) -> None:
    params, macs = PAPER[name]
    model = dscnn.create_model(name)
    deployed = dscnn.deploy_copy(model)
    assert abs(dscnn.count_params(model) / params - 1) <= 0.10
    assert abs(dscnn.count_params(deployed) / params - 1) <= 0.10
    assert abs(dscnn.count_macs(deployed, 224) / macs - 1) <= 0.10

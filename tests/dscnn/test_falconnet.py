"""FalconNet: config contract for the search space, layout, stem strides, fusion (docs/design.md section 3)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

import dscnn
from dscnn.blocks.metalight import MetaLightBlock
from dscnn.blocks.refco import RefCO, refco_kernel
from dscnn.blocks.repaso import RepSO
from dscnn.blocks.scconv import SCConv
from dscnn.models.falconnet import FalconNet, FalconNetConfig
from tests.contracts import assert_deploy_equivalent, assert_trains

TINY = dict(widths=(8, 16, 32, 64), depths=(1, 1, 2, 1), head_dim=32, num_classes=10, resolution=32)


def test_config_fields_the_search_space_relies_on() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(FalconNetConfig)}
    assert FalconNetConfig.family == "falconnet"
    assert defaults["widths"] == (32, 64, 128, 256) and defaults["depths"] == (3, 3, 9, 3)
    assert defaults["refco_reduction"] == 2 and defaults["n_3x3"] == 3 and defaults["stem_stride"] == 0
    assert defaults["spatial_ops"] == ("repso",) * 4 and defaults["scconv_alpha"] == 0.5
    assert {"expansion", "refco_kernel", "activation", "head_dim"} <= defaults.keys()


def test_layout_merge_and_operators() -> None:
    model = FalconNet(FalconNetConfig(**TINY, expansion=2.0, spatial_ops=("repso", "scconv", "repso", "repso")))
    merge = model.stages[1][0].conv
    assert (merge.kernel_size, merge.stride, merge.groups, merge.out_channels) == ((2, 2), (2, 2), 8, 16)
    blocks = [m for m in model.modules() if isinstance(m, MetaLightBlock)]
    assert len(blocks) == 5
    assert all(isinstance(b.expand, RefCO) and isinstance(b.project, RefCO) for b in blocks)
    assert isinstance(blocks[1].spatial, SCConv) and isinstance(blocks[0].spatial, RepSO)
    assert len(blocks[0].spatial.branches) == 3 + 3  # n_3x3 copies of 3x3, then 1x3, 3x1, 1x1
    # sqrt(2 * 16) = 5.7: K = 4 and 8 tie at 48 weights; the smaller is taken
    assert blocks[0].expand.kernel == refco_kernel(8, 16, 2) == 4


def test_refco_kernel_is_snapped_to_a_valid_window() -> None:
    model = FalconNet(FalconNetConfig(**TINY, refco_kernel=6))
    for m in model.modules():
        if isinstance(m, RefCO):
            assert m.kernel == refco_kernel(m.in_channels, m.out_channels, 2, requested=6)
            assert m.kernel in (4, 8) and m.in_channels % m.kernel == 0


@pytest.mark.parametrize("stem_stride,size", [(1, 4), (2, 2), (4, 1)])
def test_stem_stride(stem_stride: int, size: int) -> None:
    model = FalconNet(FalconNetConfig(**TINY, stem_stride=stem_stride)).eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 64, size, size)


def test_auto_stem_stride_follows_resolution() -> None:
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for resolution, size in [(32, 8), (64, 4), (224, 2)]:
            model = FalconNet(FalconNetConfig(**{**TINY, "resolution": resolution})).eval()
            assert model.forward_features(x).shape[-1] == size


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_deploy_equivalent_with_scconv_stages(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    config = FalconNetConfig(**TINY, spatial_ops=("scconv", "repso", "scconv", "repso"), scconv_alpha=0.75)
    assert_deploy_equivalent(FalconNet(config), torch.randn(2, 3, 32, 32), dtype)


def test_deploy_form_is_smaller_and_config_round_trips() -> None:
    model = FalconNet(FalconNetConfig(**TINY))
    deployed = dscnn.deploy_copy(model)
    assert dscnn.count_params(deployed) < dscnn.count_params(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    rebuilt = dscnn.config_from_dict(json.loads(model.config.to_json()))
    assert rebuilt == model.config and rebuilt.arch_hash() == model.config.arch_hash()


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown spatial op.*'conv'"):
        FalconNet(FalconNetConfig(**TINY, spatial_ops=("repso", "conv", "repso", "repso")))
    with pytest.raises(ValueError, match="equal length"):
        FalconNet(FalconNetConfig(**{**TINY, "depths": (1, 1, 1)}))
    with pytest.raises(ValueError, match="reduction R=3"):
        FalconNet(FalconNetConfig(**TINY, refco_reduction=3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dense_channel_op_is_the_plain_1x1_baseline(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    dense = dscnn.create_model("falconnet", channel_op="dense", **TINY)
    assert not any(isinstance(m, RefCO) for m in dense.modules())
    n_blocks = 0
    for width, stage in zip(TINY["widths"], dense.stages):
        for b in (m for m in stage if isinstance(m, MetaLightBlock)):
            n_blocks += 1
            for op, c_in, c_out in ((b.expand, width, 2 * width), (b.project, 2 * width, width)):
                conv = op.conv
                assert (conv.kernel_size, conv.groups, conv.in_channels, conv.out_channels) == ((1, 1), 1, c_in, c_out)
    assert n_blocks == sum(TINY["depths"])
    refco = dscnn.create_model("falconnet", **TINY)
    # same macro layout: only the channel operators differ, and the dense one holds more weights
    assert dscnn.count_params(dscnn.deploy_copy(dense)) > dscnn.count_params(dscnn.deploy_copy(refco))
    assert_deploy_equivalent(dense, torch.randn(2, 3, 32, 32), dtype)
    assert_trains(dense, torch.randn(2, 3, 32, 32))


def test_channel_op_is_validated_and_the_default_keeps_old_hashes() -> None:
    with pytest.raises(ValueError, match="unknown channel op 'sparse'.*refco, dense"):
        FalconNetConfig(**TINY, channel_op="sparse")
    default = FalconNetConfig(**TINY)
    assert "channel_op" not in default.to_dict()
    dense = default.replace(channel_op="dense")
    assert dense.arch_hash() != default.arch_hash()
    assert dscnn.config_from_dict(json.loads(dense.to_json())) == dense
    assert dscnn.config_from_dict(json.loads(default.to_json())) == default

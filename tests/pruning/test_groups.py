"""Coupling groups from Torch-Pruning: residual sums and depthwise followers share one group."""

from __future__ import annotations

import torch
from torch import nn

from pruning.groups import IN, OUT, find_groups
from tests.pruning.tiny import tiny_deploy

X = torch.zeros(1, 3, 32, 32)


def test_resnet_residual_stream_is_one_group() -> None:
    scan = find_groups(tiny_deploy("resnet20"), X)
    stage0 = next(g for g in scan.groups if any(m.module == "stem.0.conv" for m in g.members))
    producers = {m.module for m in stage0.producers}
    # the stem and every block's second conv add into the same 8 channels
    assert producers == {"stem.0.conv", *(f"stages.0.{i}.conv2.conv" for i in range(3))}
    readers = {m.module for m in stage0.members if m.side == IN}
    assert {f"stages.0.{i}.conv1.conv" for i in range(3)} <= readers
    assert {"stages.1.0.conv1.conv", "stages.1.0.downsample.conv"} <= readers
    assert stage0.size == 8 and all(m.channels == tuple((c,) for c in range(8)) for m in stage0.members)
    # every block's inner width is its own group: one producer, one reader
    inner = [g for g in scan.groups if g.root.endswith("conv1.conv")]
    assert len(inner) == 9 and all(len(g.members) == 2 for g in inner)
    assert len(scan.groups) == 12 and not scan.skipped


def test_input_image_and_logits_are_never_pruned() -> None:
    for name in ("resnet20", "dscnn_t0", "repvgg_a0"):
        scan = find_groups(tiny_deploy(name), X)
        members = [m for g in scan.groups for m in g.members]
        assert not any(m.module == "classifier" and m.side == OUT for m in members)
        assert any(m.module == "classifier" and m.side == IN for m in members)
        first_conv = next(n for n, m in tiny_deploy(name).named_modules() if isinstance(m, nn.Conv2d))
        assert not any(m.module == first_conv and m.side == IN for m in members)


def test_depthwise_follower_joins_the_group_of_its_producer() -> None:
    scan = find_groups(tiny_deploy("dscnn_t0"), X)
    hidden = next(g for g in scan.groups if any(m.module == "stages.0.0.expand.conv" and m.side == OUT for m in g.members))
    kinds = {(m.module, m.side, m.depthwise) for m in hidden.members}
    assert kinds == {
        ("stages.0.0.expand.conv", OUT, False), ("stages.0.0.spatial.fused", OUT, True), ("stages.0.0.project.conv", IN, False),
    }
    assert [m.module for m in hidden.dense_producers] == ["stages.0.0.expand.conv"]


def test_unsafe_groups_are_skipped_with_a_reason() -> None:
    # SCConv (stage 1 of the tiny DSCNN): GroupNorm, sigmoid gates, splits
    dscnn_scan = find_groups(tiny_deploy("dscnn_t0"), X)
    assert "stages.1.2.expand.conv" in dscnn_scan.skipped  # its hidden channels enter the SCConv
    assert "stages.1.2.project.conv" in {g.root for g in dscnn_scan.groups}  # the stream around it is fine
    assert all("stages.1.2.spatial" not in m.module for g in dscnn_scan.groups for m in g.members)
    # FasterNet's PConv splits its input: the module keeps the split sizes, so that stream stays whole
    faster = find_groups(tiny_deploy("fasternet_t0"), X)
    assert faster.skipped and all("split" in reason for reason in faster.skipped.values())
    assert any(g.root.endswith("expand.conv") for g in faster.groups)
    # FalconNet's RefCO: grouped 1x1 -> index-gather shuffle -> grouped 1x1. Every group through it
    # is rejected at a grouped conv before the gather is reached (issue 14: the old banded RefCO
    # gathered first, so "indexselect" was the reason for some groups).
    falcon = find_groups(tiny_deploy("falconnet"), X)
    assert any("not depthwise" in r for r in falcon.skipped.values())
    assert all(".first." not in m.module and ".second." not in m.module for g in falcon.groups for m in g.members)
    assert {"stages.1.1.expand.first.fused", "stages.1.1.project.first.fused"} <= falcon.skipped.keys()

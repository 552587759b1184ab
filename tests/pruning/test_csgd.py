"""C-SGD: k-means, target widths, the centripetal rule, the exact merge, and runs through the driver and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import dscnn
from dscnn.train import TrainConfig
from pruning.csgd import CSGD, GAMMA_FACTOR, CSGDConfig, main
from pruning.csgd.kmeans import kmeans
from pruning.groups import OUT
from pruning.macs import CostModel
from pruning.retrain import RetrainBN, add_batchnorm
from pruning.surgery import TOLERANCE, relative_error
from pruning.widths import widths_macs
from tests.pruning.tiny import tiny_deploy, tiny_overrides

X = torch.zeros(1, 3, 32, 32)


class ResidualDepthwise(nn.Module):
    """stem -> [1x1 expand -> depthwise 3x3 -> 1x1 project] + stem -> pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.expand = nn.Conv2d(8, 16, 1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.project = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        s = F.relu(self.stem(x))
        h = F.relu(self.depthwise(F.relu(self.expand(s))))
        return self.head(F.relu(s + self.project(h)).mean(dim=(2, 3)))


def _make_clusters_identical(model: nn.Module, csgd: CSGD) -> None:
    """Copy each cluster's first channel (kernel row and bias) over its other members, in every producer."""
    with torch.no_grad():
        for group in csgd.groups:
            labels = csgd.labels[group.root].tolist()
            first = {label: labels.index(label) for label in labels}
            for member in group.producers:
                conv = model.get_submodule(member.module)
                for r, indices in enumerate(member.channels):
                    source = member.channels[first[labels[r]]]
                    conv.weight[list(indices)] = conv.weight[list(source)]
                    if conv.bias is not None:
                        conv.bias[list(indices)] = conv.bias[list(source)]


def test_kmeans_finds_blobs_is_seeded_and_never_leaves_a_cluster_empty() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    blobs = torch.cat([c + 0.1 * torch.randn(5, 2, generator=g) for c in centres])
    labels = kmeans(blobs, 3, seed=1)
    assert labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5  # numbered by smallest member
    assert torch.equal(kmeans(blobs[torch.arange(14, -1, -1)], 3, seed=7), torch.tensor([0] * 5 + [1] * 5 + [2] * 5))
    duplicates = torch.zeros(6, 4)  # six identical filters, four clusters: still four non-empty ones
    assert sorted(torch.bincount(kmeans(duplicates, 4, seed=0)).tolist()) == [1, 1, 1, 3]
    assert kmeans(blobs, 15).unique().numel() == 15
    with pytest.raises(ValueError, match="k must be between 1 and"):
        kmeans(blobs, 16)


def test_uniform_widths_meet_the_target_and_clusters_have_the_target_width() -> None:
    model = tiny_deploy("resnet20")
    target = 0.5 * dscnn.count_macs(model, 32)
    csgd = CSGD()
    csgd.prepare(model, target, X, steps_per_epoch=1)
    cost = CostModel(model, csgd.groups, X)
    assert 0.7 * target < widths_macs(cost, csgd.widths) == csgd.planned_macs <= target
    assert 0 < csgd.keep_ratio < 1  # type: ignore[operator]
    assert all(csgd.labels[g.root].unique().numel() == csgd.widths[g.root] < g.size for g in csgd.groups)
    with pytest.raises(ValueError, match="every prunable layer at one channel"):
        CSGD().prepare(model, 1000.0, X, steps_per_epoch=1)


def test_layer_ratio_file(tmp_path: Path) -> None:
    model = ResidualDepthwise().eval()
    full = dscnn.count_macs(model, 32)
    path = tmp_path / "ratios.json"
    path.write_text(json.dumps({"expand": 0.25, "project": 0.5}))  # "project" names the stem's residual group
    csgd = CSGD(CSGDConfig(layer_ratios=str(path)))
    csgd.prepare(model, 0.9 * full, X, steps_per_epoch=1)
    width = {m.module: csgd.widths[g.root] for g in csgd.groups for m in g.producers}  # roots are Torch-Pruning's
    assert (width["expand"], width["depthwise"], width["stem"], width["project"]) == (4, 4, 4, 4)
    assert len(csgd.groups) == 2 and csgd.keep_ratio is None
    with pytest.raises(ValueError, match="above the FLOPs target"):
        CSGD(CSGDConfig(layer_ratios=str(path))).prepare(model, 0.2 * full, X, steps_per_epoch=1)
    for content, message in [({"head": 0.5}, "produce no prunable channel group"), ({"stem": 1.5}, r"in \(0, 1\]"),
                             ({"stem": 0.5, "project": 0.25}, "two keep ratios"), ([], "non-empty JSON object")]:
        path.write_text(json.dumps(content))
        with pytest.raises(ValueError, match=message):
            CSGD(CSGDConfig(layer_ratios=str(path))).prepare(model, 0.9 * full, X, steps_per_epoch=1)
    with pytest.raises(ValueError, match="does not exist"):
        CSGD(CSGDConfig(layer_ratios=str(tmp_path / "missing.json")))


def test_centripetal_update_matches_the_formula_by_hand() -> None:
    model = ResidualDepthwise()
    csgd = CSGD(CSGDConfig(centripetal_strength=0.3))
    csgd.prepare(model.eval(), 0.6 * dscnn.count_macs(model, 32), X, steps_per_epoch=1)
    hidden = next(g.root for g in csgd.groups if any(m.module == "expand" for m in g.producers))
    csgd.labels[hidden] = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 4, 5, 6, 6, 7, 7])  # by hand
    add_batchnorm(model)  # as the driver trains: BN after every biased conv
    groups = csgd.param_groups(model, TrainConfig(weight_decay=0.01))
    F.cross_entropy(model.train()(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    params = {"kernel": model.depthwise.conv.weight, "bias": model.depthwise.conv.bias,
              "gamma": model.depthwise.bn.weight, "beta": model.depthwise.bn.bias, "expand": model.expand.conv.weight}
    task = {k: p.grad.clone() for k, p in params.items()}
    assert isinstance(model.depthwise, RetrainBN) and task["kernel"].abs().sum() > 0 and task["gamma"].abs().sum() > 0
    csgd.regularize()
    clusters = [[0, 1, 2], [3], [4, 5], [6, 7, 8, 9], [10], [11], [12, 13], [14, 15]]
    for key, p in params.items():
        # official: full eps on kernels, conv biases and BN betas, 0.1 eps on BN gammas, decay on all
        eps, wd = (0.3 * GAMMA_FACTOR if key == "gamma" else 0.3), 0.01
        for cluster in clusters:
            for i in cluster:
                expected = task[key][cluster].mean(0) + wd * p[i] + eps * (p[i] - p[cluster].mean(0))
                assert torch.allclose(p.grad[i], expected, atol=1e-7), (key, i)
    decay = {id(p): group["weight_decay"] for group in groups for p in group["params"]}
    assert all(decay[id(p)] == 0.0 for p in params.values())
    assert decay[id(model.head.weight)] == 0.01  # the classifier is no producer: the optimizer decays it


@pytest.mark.parametrize(("name", "dtype"), [("handmade", torch.float64), ("dscnn_t0", torch.float32),
                                             ("resnet20", torch.float32)])
def test_identical_clusters_prune_without_changing_outputs(name: str, dtype: torch.dtype) -> None:
    model = (ResidualDepthwise() if name == "handmade" else tiny_deploy(name)).to(dtype).eval()
    example = X.to(dtype)
    csgd = CSGD()
    csgd.prepare(model, 0.5 * dscnn.count_macs(model, 32), example, steps_per_epoch=1)
    members = [m for g in csgd.groups for m in g.members]
    assert any(m.depthwise for m in members) or name == "resnet20"
    assert any(len(g.dense_producers) > 1 for g in csgd.groups)  # a residual add
    _make_clusters_identical(model, csgd)
    x = torch.randn(3, 3, 32, 32, dtype=dtype)
    with torch.no_grad():
        before = model(x)
        csgd.prune(model)
        after = model(x)
    assert relative_error(before, after) <= TOLERANCE[dtype]
    assert csgd.summary()["max_cluster_distance"] == 0.0 and csgd.facts["initial_max_cluster_distance"] > 0
    assert dscnn.count_macs(model, 32) <= 0.5 * dscnn.count_macs((ResidualDepthwise() if name == "handmade"
                                                                  else tiny_deploy(name)), 32)
    widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    for group in csgd.groups:
        assert all(widths[m.module] == csgd.widths[group.root] for m in group.members if m.side == OUT)


def test_unconverged_clusters_are_merged_reported_and_warned_about() -> None:
    model = ResidualDepthwise().eval()
    csgd = CSGD()
    csgd.prepare(model, 0.5 * dscnn.count_macs(model, 32), X, steps_per_epoch=1)
    with pytest.warns(UserWarning, match="not converged"):
        csgd.prune(model)
    facts = csgd.summary()
    assert facts["max_cluster_distance"] == facts["initial_max_cluster_distance"] > 0
    assert facts["merge_relative_error"] > 1e-3 and facts["conversion_relative_error"] <= 1e-5


def _checkpoint(tmp_path: Path, name: str) -> Path:
    torch.manual_seed(0)
    return dscnn.save_checkpoint(tmp_path / f"{name}.pt", dscnn.create_model(name, **tiny_overrides(name)))


def test_cli_run_meets_the_target_and_writes_a_loadable_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _checkpoint(tmp_path, "resnet20")
    args = [str(ckpt), "--target-flops", "0.5x", "--no-progress", "--no-latency", "--train-per-class", "8",
            "--val-per-class", "4", "--batch-size", "16", "--epochs", "1", "--centripetal-strength", "0.05"]
    with pytest.warns(UserWarning, match="not converged"):
        assert main(args) == 0
    assert "largest within-cluster distance" in capsys.readouterr().out
    report = json.loads((tmp_path / "resnet20_csgd.json").read_text())
    assert report["method"] == "csgd" and report["after"]["macs"] <= report["target_macs"]
    facts = report["algorithm"]
    assert 0 < facts["max_cluster_distance"] < facts["initial_max_cluster_distance"]  # pulled together
    assert facts["conversion_relative_error"] <= 1e-5 and facts["config"]["centripetal_strength"] == 0.05
    loaded, info = dscnn.load_checkpoint(tmp_path / "resnet20_csgd.pt")
    assert info.pruned and info.metrics["macs"] == report["after"]["macs"] == dscnn.count_macs(loaded, 32)


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--target-flops", "2x"], "below 1x"), (["--target-flops", "1G"], "at or above"),
     (["--target-flops", "0.5x", "--centripetal-strength", "-1"], "centripetal_strength must be >= 0"),
     (["--target-flops", "0.5x", "--layer-ratios", "nope.json"], "does not exist")],
)
def test_bad_input_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    ckpt = _checkpoint(tmp_path, "resnet20")
    assert main([str(ckpt), *flags, "--no-progress", "--no-latency", "--epochs", "1"]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet20.pt"]


def test_iterative_steps_cluster_in_nested_phases_and_reach_the_target() -> None:
    model = ResidualDepthwise()
    full = dscnn.count_macs(model, 32)
    csgd = CSGD(CSGDConfig(steps=(13 / 16, 11 / 16), centripetal_strength=0.5))
    csgd.prepare(model.eval(), 0.5 * full, X, steps_per_epoch=3, epochs=2)  # 6 steps: 3 phases of 2
    assert csgd.phase_starts == [0, 2, 4]
    counts = [sum(w.values()) for w in csgd.phase_widths]
    assert counts[0] > counts[1] > counts[2] and csgd.phase_widths[-1] == csgd.widths
    add_batchnorm(model)
    groups = csgd.param_groups(model, TrainConfig(weight_decay=1e-4))
    optimizer = torch.optim.SGD([p for g in groups for p in g["params"]], lr=0.01)
    seen = []
    for _ in range(6):
        optimizer.zero_grad()
        F.cross_entropy(model.train()(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
        before = {r: lab.clone() for r, lab in csgd.labels.items()}
        csgd.regularize()
        optimizer.step()
        seen.append(sum(int(lab.max()) + 1 for lab in csgd.labels.values()))
        for root, lab in csgd.labels.items():  # nested: channels clustered together stay together
            same = before[root][:, None] == before[root][None, :]
            assert (lab[:, None] == lab[None, :])[same].all()
    assert seen == [counts[0]] * 2 + [counts[1]] * 2 + [counts[2]] * 2
    from pruning.retrain import fold_batchnorm

    fold_batchnorm(model.eval())
    with pytest.warns(UserWarning, match="not converged"):
        csgd.prune(model)
    assert dscnn.count_macs(model, 32) <= 0.5 * full


@pytest.mark.parametrize("steps", [(0.5, 0.7), (1.2,), (0.0,), (0.6, 0.6)])
def test_bad_steps_are_refused(steps: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="steps must be strictly decreasing"):
        CSGDConfig(steps=steps)

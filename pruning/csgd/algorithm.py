"""Centripetal SGD channel pruning (Ding et al., "Centripetal SGD for Pruning Very Deep Convolutional
Networks with Complicated Structure", CVPR 2019) on the deploy graph, as docs/design.md section 6 specifies.

``python -m pruning.csgd ckpt.pt --target-flops 0.3G`` (see `pruning._cli` for every flag).

1. The model is fused to its deploy form; its coupling groups come from Torch-Pruning
   (`pruning.groups`). Each group gets a target width: one uniform keep ratio bisected on deploy
   FLOPs, or per-layer ratios from a JSON file (`pruning.csgd.widths`).
2. Each group's channels are clustered into that many clusters by seeded k-means on the leader's
   flattened kernels (`pruning.csgd.kmeans`); every producer of the group (residual branches, depthwise
   followers) shares the leader's clusters.
3. After every backward pass, for row i of cluster C of every producer parameter:
   ``grad_i = mean_{j in C} g_j + wd * W_i + eps * (W_i - mean_{j in C} W_j)`` (`pruning.csgd.clusters`),
   with ``0.1 * eps`` on vectors; the optimizer's own weight decay is off for these parameters.
4. ``prune``: one channel per cluster carries the cluster mean, the consumers' input slices of the
   cluster are summed into it, and Torch-Pruning removes the rest. The surgery is checked
   numerically against the merged model; how much the merge itself changed the trained model (zero
   for converged clusters) is measured and reported with the largest within-cluster distance.

interpretation:
- Training runs with BatchNorms re-inserted after the deploy graph's biased convs (`pruning.retrain`,
  done by the driver): "0.1 eps on BN/bias vectors" applies to those BNs' gamma and beta and to the
  conv biases; the merge happens on the folded (deploy) graph, where BN is part of kernel and bias.
- The leader is the group's root conv (a dense producer; else the first dense producer); k-means
  runs on its folded kernels at the start, kernel only, as in the paper.
- ``wd * W_i`` is the run's own decay moved into the rule: ``weight_decay`` on kernels, none on
  vectors, as for every other parameter of the run (`pruning.run.RunConfig.weight_decay`).
- The kept channel of a cluster is its first member, carrying the cluster mean (docs/design.md 6.3).
- "Assert clusters converged" is not possible with a short schedule: the largest within-cluster
  distance (kernel row + bias of the folded producers) and the relative output change caused by
  the merge are reported, with a warning above `CONVERGED`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dscnn.train import TrainConfig
from pruning.algorithm import PruningError
from pruning.csgd.clusters import centripetal_gradient, group_spread, member_ids, merge_clusters
from pruning.csgd.kmeans import kmeans
from pruning.csgd.widths import ratio_widths, read_ratios, uniform_widths, widths_macs
from pruning.groups import ChannelGroup, Member, find_groups
from pruning.macs import CostModel
from pruning.retrain import RetrainBN
from pruning.surgery import assert_same_outputs, relative_error, remove_channels

#: Strength on bias / BN vectors relative to kernels (docs/design.md 6.2).
VECTOR_FACTOR = 0.1
#: Largest relative within-cluster distance that counts as converged; above it, a warning.
CONVERGED = 1e-3


@dataclass(frozen=True)
class CSGDConfig:
    """C-SGD's own knobs (docs/design.md section 6 defaults); training length and LR live in `pruning.run.RunConfig`."""

    centripetal_strength: float = 3e-3  # eps: pull of each filter towards its cluster mean (CIFAR default)
    layer_ratios: str | None = None  # JSON {conv name: keep ratio}; None = one uniform ratio meeting the target
    kmeans_seed: int = 0  # seed of the k-means++ initialisation

    def __post_init__(self) -> None:
        if not (self.centripetal_strength >= 0 and math.isfinite(self.centripetal_strength)):
            raise PruningError(f"CSGDConfig.centripetal_strength must be >= 0, got {self.centripetal_strength}")


@dataclass(frozen=True)
class _Rule:
    """One producer parameter under the centripetal rule."""

    param: Tensor  # a Parameter (or a BN vector) of a producer
    ids: Tensor  # cluster id per row
    strength: float
    weight_decay: float


class CSGD:
    """The C-SGD algorithm behind the `pruning.algorithm.PruningAlgorithm` interface."""

    name = "csgd"

    def __init__(self, config: CSGDConfig | None = None) -> None:
        self.config = config or CSGDConfig()
        self.ratios = read_ratios(self.config.layer_ratios) if self.config.layer_ratios else None
        self.groups: tuple[ChannelGroup, ...] = ()
        self.skipped: dict[str, str] = {}
        self.labels: dict[str, Tensor] = {}
        self.widths: dict[str, int] = {}
        self.keep_ratio: float | None = None
        self.rules: list[_Rule] = []
        self.facts: dict[str, Any] = {}
        self.planned_macs: float | None = None  # deploy MACs of the chosen widths, set by prepare()
        self.example: Tensor | None = None

    # -- setup -------------------------------------------------------------------------------
    def prepare(self, model: nn.Module, target_macs: float, example: Tensor, steps_per_epoch: int,
                epochs: int = 1) -> nn.Module:
        """Find the groups of the deploy ``model``, choose their widths, cluster their filters."""
        scan = find_groups(model, example)
        if not scan.groups:
            raise PruningError(f"no prunable channel group in this model (skipped: {sorted(set(scan.skipped.values()))})")
        self.groups, self.skipped, self.example = scan.groups, scan.skipped, example
        cost = CostModel(model, self.groups, example)
        if self.ratios is None:
            self.keep_ratio, self.widths = uniform_widths(self.groups, cost, target_macs)
        else:
            self.widths = ratio_widths(self.groups, self.ratios)
            macs = widths_macs(cost, self.widths)
            if macs > target_macs:
                raise PruningError(
                    f"the layer ratios in {self.config.layer_ratios!r} leave {macs / 1e6:.4g}M MACs, above the "
                    f"FLOPs target {target_macs / 1e6:.4g}M"
                )
        self.planned_macs = widths_macs(cost, self.widths)
        self.labels = {g.root: self._cluster(model, g) for g in self.groups}
        self.facts["initial_max_cluster_distance"] = self.spread(model)[0]
        return model

    def _cluster(self, model: nn.Module, group: ChannelGroup) -> Tensor:
        leader = _leader(group)
        conv = model.get_submodule(leader.module)
        assert isinstance(conv, nn.Conv2d)
        kernel = conv.weight.detach().flatten(1)
        points = torch.stack([kernel[list(indices)].flatten() for indices in leader.channels])
        return kmeans(points, self.widths[group.root], seed=self.config.kmeans_seed)

    def param_groups(self, model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
        """Producers' parameters: no optimizer decay (the rule has it); the rest: decay on kernels only."""
        self.rules = self._rules(model, config.weight_decay)
        ruled = {id(rule.param) for rule in self.rules}
        if len(ruled) != len(self.rules):
            raise RuntimeError("C-SGD: a parameter produces channels of two groups")
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ruled]
        return [
            {"params": [rule.param for rule in self.rules], "weight_decay": 0.0},
            {"params": [p for p in rest if p.ndim > 1], "weight_decay": config.weight_decay},
            {"params": [p for p in rest if p.ndim <= 1], "weight_decay": 0.0},
        ]

    def _rules(self, model: nn.Module, weight_decay: float) -> list[_Rule]:
        """The rule's parameters in ``model`` as it is now (BNs re-inserted by the driver, or not)."""
        eps = self.config.centripetal_strength
        rules: list[_Rule] = []
        for group in self.groups:
            for member in group.producers:
                module = model.get_submodule(member.module)
                conv, bn = (module.conv, module.bn) if isinstance(module, RetrainBN) else (module, None)
                assert isinstance(conv, nn.Conv2d)
                ids = member_ids(member, self.labels[group.root], conv.out_channels).to(conv.weight.device)
                rules.append(_Rule(conv.weight, ids, eps, weight_decay))
                vectors: list[Tensor | None] = [conv.bias] + ([bn.weight, bn.bias] if bn is not None else [])
                rules += [_Rule(v, ids, VECTOR_FACTOR * eps, 0.0) for v in vectors if v is not None]
        return rules

    # -- training ----------------------------------------------------------------------------
    def regularize(self) -> None:
        """After backward: replace each producer gradient by the centripetal one (docs/design.md 6.2)."""
        if not self.rules:
            raise RuntimeError("C-SGD: regularize() before param_groups() bound the model's parameters")
        with torch.no_grad():
            for rule in self.rules:
                p = rule.param
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                p.grad = centripetal_gradient(p.detach(), grad, rule.ids.to(p.device), rule.strength, rule.weight_decay)

    def spread(self, model: nn.Module) -> tuple[float, float]:
        """Largest within-cluster distance over all groups: absolute and relative (see `group_spread`)."""
        spreads = [group_spread(model, g, self.labels[g.root]) for g in self.groups]
        return max(s[0] for s in spreads), max(s[1] for s in spreads)

    # -- conversion --------------------------------------------------------------------------
    def prune(self, model: nn.Module) -> nn.Module:
        """Merge each cluster into one channel and remove the rest; the surgery is checked numerically."""
        model.eval()
        distance, relative = self.spread(model)
        param = next(model.parameters())
        if self.example is None:
            raise RuntimeError("C-SGD: prepare() must run before prune()")
        probe = torch.randn(self.example.shape, generator=torch.Generator().manual_seed(0))
        probe = probe.to(device=param.device, dtype=param.dtype)
        with torch.no_grad():
            trained = model(probe)
            removed = merge_clusters(model, self.groups, self.labels)
            merged = model(probe)
            remove_channels(model, self.groups, removed, probe[:1])
            pruned = model(probe)
        self.facts.update(
            max_cluster_distance=distance, max_cluster_distance_relative=relative,
            merge_relative_error=relative_error(trained, pruned),
            conversion_relative_error=assert_same_outputs(merged, pruned, "C-SGD pruned vs merged model"),
        )
        if relative > CONVERGED:
            warnings.warn(
                f"C-SGD: clusters have not converged (largest within-cluster distance {distance:.3g}, "
                f"{relative:.3g} of the cluster mean); merging changed the outputs by "
                f"{self.facts['merge_relative_error']:.3g} (relative). Train longer or raise --centripetal-strength.",
                stacklevel=2,
            )
        return model

    def summary(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "prunable_groups": len(self.groups),
            "skipped_groups": dict(self.skipped),
            "keep_ratio": self.keep_ratio,
            "planned_macs": self.planned_macs,
            "widths": {g.root: [g.size, self.widths.get(g.root, g.size)] for g in self.groups},
            **self.facts,
        }


def _leader(group: ChannelGroup) -> Member:
    dense = group.dense_producers
    return next((m for m in dense if m.module == group.root), dense[0])

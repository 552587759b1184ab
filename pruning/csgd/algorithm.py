"""Centripetal SGD channel pruning (Ding et al., "Centripetal SGD for Pruning Very Deep Convolutional
Networks with Complicated Structure", CVPR 2019) on the deploy graph, as docs/design.md section 6 specifies.

``python -m pruning.csgd ckpt.pt --target-flops 0.3G`` (see `pruning._cli` for every flag).

1. The model is fused to its deploy form; its coupling groups come from Torch-Pruning
   (`pruning.groups`). Each group gets a target width: one uniform keep ratio bisected on deploy
   FLOPs (`pruning.widths`), or per-layer ratios from a JSON file (`pruning.csgd.widths`).
2. Each group's channels are clustered into that many clusters by seeded k-means on the leader's
   flattened kernels (`pruning.csgd.kmeans`); every producer of the group (residual branches, depthwise
   followers) shares the leader's clusters.
3. After every backward pass, for row i of cluster C of every producer parameter:
   ``grad_i = mean_{j in C} g_j + wd * W_i + eps * (W_i - mean_{j in C} W_j)`` (`pruning.csgd.clusters`),
   on kernels, conv biases and BN betas, and ``0.1 * eps`` on BN gammas (the official code's
   per-vector strengths), with ``wd`` on all of them; the optimizer's own decay is off for these.
   With ``steps`` (keep ratios, e.g. ``(13/16, 11/16)``), training is split into ``len(steps) + 1``
   equal phases that cluster to ever fewer clusters, the last to the target widths (the official
   ResNet-56 recipe prunes in steps).
4. ``prune``: one channel per cluster carries the cluster mean, the consumers' input slices of the
   cluster are summed into it, and Torch-Pruning removes the rest. The surgery is checked
   numerically against the merged model; how much the merge itself changed the trained model (zero
   for converged clusters) is measured and reported with the largest within-cluster distance.

interpretation:
- Training runs with BatchNorms re-inserted after the deploy graph's biased convs (`pruning.retrain`,
  done by the driver): the per-vector strengths apply to those BNs' gamma and beta and to the conv
  biases; the merge happens on the folded (deploy) graph, where BN is part of kernel and bias.
- An iterative step is done without cutting the model mid-training: a converged cluster of
  identical channels computes what its merged channel would (its members get identical
  gradients from then on), so a phase ends by re-clustering the previous clusters' means into
  fewer clusters (nested: a cluster is a union of earlier ones), and only the final clusters are
  merged and removed. A step's width is ``max(target width, round(ratio * size))`` per group.
- The leader is the group's root conv (a dense producer; else the first dense producer); k-means
  runs on its folded kernels at the start, kernel only, as in the paper.
- ``wd * W_i`` is the run's own decay moved into the rule: ``weight_decay`` on kernels and on
  every vector of a producer (the official ``weight_decay_bias`` set to the same value).
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
from pruning.csgd.widths import ratio_widths, read_ratios
from pruning.groups import ChannelGroup, Member, find_groups
from pruning.latency_table import LatencyTable, Measure
from pruning.retrain import RetrainBN
from pruning.surgery import assert_same_outputs, relative_error, remove_channels
from pruning.target_cost import snap_to_target, target_cost
from pruning.widths import uniform_widths, widths_macs

#: Centripetal strength on BN gammas relative to kernels (official code); conv biases and BN betas get the full eps.
VECTOR_FACTOR = 0.1
GAMMA_FACTOR = VECTOR_FACTOR
#: Largest relative within-cluster distance that counts as converged; above it, a warning.
CONVERGED = 1e-3


@dataclass(frozen=True)
class CSGDConfig:
    """C-SGD's own knobs (docs/design.md section 6 defaults); training length and LR live in `pruning.run.RunConfig`."""

    centripetal_strength: float = 3e-3  # eps: pull of each filter towards its cluster mean (CIFAR default)
    layer_ratios: str | None = None  # JSON {conv name: keep ratio}; None = one uniform ratio meeting the target
    kmeans_seed: int = 0  # seed of the k-means++ initialisation
    steps: tuple[float, ...] = ()  # intermediate keep ratios, decreasing, e.g. (13/16, 11/16); () = one step

    def __post_init__(self) -> None:
        if not (self.centripetal_strength >= 0 and math.isfinite(self.centripetal_strength)):
            raise PruningError(f"CSGDConfig.centripetal_strength must be >= 0, got {self.centripetal_strength}")
        steps = tuple(self.steps)
        if any(not (isinstance(r, (int, float)) and 0 < r < 1) for r in steps) or list(steps) != sorted(steps, reverse=True) \
                or len(set(steps)) != len(steps):
            raise PruningError(f"CSGDConfig.steps must be strictly decreasing keep ratios in (0, 1), got {self.steps}")
        object.__setattr__(self, "steps", tuple(float(r) for r in steps))


@dataclass(frozen=True)
class _Rule:
    """One producer parameter under the centripetal rule."""

    param: Tensor  # a Parameter (or a BN vector) of a producer
    ids: Tensor  # cluster id per row
    strength: float
    weight_decay: float
    member: Member  # the producer it belongs to, and its group's root (to rebind ids between phases)
    root: str


class CSGD:
    """The C-SGD algorithm behind the `pruning.algorithm.PruningAlgorithm` interface."""

    name = "csgd"
    regularized = True  # trains with the centripetal rule before pruning

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
        self.phase_widths: list[dict[str, int]] = []  # per phase: the cluster count per group (last = target)
        self.phase_starts: list[int] = []  # the step at which each phase begins
        self.phase = 0
        self.step = 0
        self._model: nn.Module | None = None  # the module being trained, bound by param_groups()
        # latency target (set by the driver before prepare()): the cost is the predicted latency in ms
        self.latency_table: LatencyTable | None = None
        self.latency_measure: Measure | None = None  # times a model, for the width snapping

    # -- setup -------------------------------------------------------------------------------
    def prepare(self, model: nn.Module, target_macs: float, example: Tensor, steps_per_epoch: int,
                epochs: int = 1) -> nn.Module:
        """Find the groups of the deploy ``model``, choose their widths, cluster their filters."""
        scan = find_groups(model, example)
        if not scan.groups:
            raise PruningError(f"no prunable channel group in this model (skipped: {sorted(set(scan.skipped.values()))})")
        self.groups, self.skipped, self.example = scan.groups, scan.skipped, example
        cost = target_cost(model, self.groups, example, self.latency_table, target_macs)
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
        if self.latency_measure is not None:
            self.widths, self.facts["snapped_widths"] = snap_to_target(
                model, self.groups, self.widths, example, self.latency_measure, cost, target_macs)
        self.planned_macs = widths_macs(cost, self.widths)
        self.phase_widths = [
            {g.root: max(self.widths[g.root], min(g.size, round(r * g.size))) for g in self.groups}
            for r in self.config.steps
        ] + [dict(self.widths)]
        total = steps_per_epoch * epochs
        phases = len(self.phase_widths)
        self.phase_starts = [round(i * total / phases) for i in range(phases)]
        self.labels = {g.root: self._cluster(model, g, self.phase_widths[0][g.root]) for g in self.groups}
        self.facts["initial_max_cluster_distance"] = self.spread(model)[0]
        return model

    def _cluster(self, model: nn.Module, group: ChannelGroup, k: int) -> Tensor:
        return kmeans(self._points(model, group), k, seed=self.config.kmeans_seed)

    def _points(self, model: nn.Module, group: ChannelGroup) -> Tensor:
        leader = _leader(group)
        conv = model.get_submodule(leader.module)
        conv = conv.conv if isinstance(conv, RetrainBN) else conv
        assert isinstance(conv, nn.Conv2d)
        kernel = conv.weight.detach().flatten(1).cpu()
        return torch.stack([kernel[list(indices)].flatten() for indices in leader.channels])

    def _next_phase(self) -> None:
        """Re-cluster each group's current cluster means into the next phase's (fewer) clusters; rebind the ids."""
        self.phase += 1
        model = self._model
        assert model is not None
        for group in self.groups:
            old = self.labels[group.root]
            points = self._points(model, group)
            count = int(old.max()) + 1
            means = torch.zeros(count, points.shape[1], dtype=points.dtype).index_add_(0, old, points)
            means /= torch.bincount(old, minlength=count).clamp_min(1).unsqueeze(1).to(points.dtype)
            merged = kmeans(means, self.phase_widths[self.phase][group.root], seed=self.config.kmeans_seed)
            self.labels[group.root] = merged[old]  # nested: every old cluster moves whole
        for rule in self.rules:
            rule.ids.copy_(member_ids(rule.member, self.labels[rule.root], rule.ids.numel()).to(rule.ids.device))

    def param_groups(self, model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
        """Producers' parameters: no optimizer decay (the rule has it); the rest: decay on kernels only."""
        self.rules = self._rules(model, config.weight_decay)
        self._model = model
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
                vectors: list[tuple[Tensor | None, float]] = [(conv.weight, eps), (conv.bias, eps)]
                if bn is not None:
                    vectors += [(bn.weight, GAMMA_FACTOR * eps), (bn.bias, eps)]
                rules += [_Rule(v, ids, strength, weight_decay, member, group.root) for v, strength in vectors
                          if v is not None]
        return rules

    # -- training ----------------------------------------------------------------------------
    def regularize(self) -> None:
        """After backward: replace each producer gradient by the centripetal one (docs/design.md 6.2)."""
        if not self.rules:
            raise RuntimeError("C-SGD: regularize() before param_groups() bound the model's parameters")
        self.step += 1
        if self.phase + 1 < len(self.phase_starts) and self.step > self.phase_starts[self.phase + 1]:
            self._next_phase()
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
        if self.phase + 1 < len(self.phase_widths):  # training ended early: finish the schedule's clustering
            self._model = model
            while self.phase + 1 < len(self.phase_widths):
                self._next_phase()
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
            "phase_starts": self.phase_starts,
            "phase_cluster_counts": [sum(w.values()) for w in self.phase_widths],
            **self.facts,
        }


def _leader(group: ChannelGroup) -> Member:
    dense = group.dense_producers
    return next((m for m in dense if m.module == group.root), dense[0])

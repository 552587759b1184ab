"""L1 magnitude channel pruning (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017) through
Torch-Pruning's group importance, behind the same driver, targets and report as ResRep and C-SGD.

``python -m pruning.magnitude ckpt.pt --target-flops 0.5x`` or ``--target-latency 3ms`` (see `pruning._cli`).

1. The model is fused to its deploy form; its coupling groups come from Torch-Pruning
   (`pruning.groups`), the same prunable groups ResRep and C-SGD see.
2. Each group gets a target width: one uniform keep ratio, the largest whose cost meets the target
   (`pruning.widths.uniform_widths`, as Torch-Pruning's ``MagnitudePruner`` prunes every layer by
   one ratio). With a latency target the cost is the latency table's prediction
   (`pruning.latency_table.LatencyCost`) and the widths are snapped by measurement, as for C-SGD (a
   snap is kept only while the prediction still meets the target).
3. There is no regularised training (``regularized = False``: the driver skips it). ``prune`` scores
   every channel of a group with Torch-Pruning's ``GroupMagnitudeImportance(p=1)`` (the L1 norms of
   every weight slice the channel touches, producers and consumers, averaged over the group), keeps
   the ``width`` highest and removes the rest; the driver then fine-tunes (``--finetune-epochs``).

interpretation: the importance is taken on the model as given (no training before pruning); the
report gives the largest removed and the smallest kept score, the analogue of ResRep's largest
removed compactor norm (how much of the model the cut threw away).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from dscnn.train import TrainConfig
from pruning.algorithm import PruningError
from pruning.groups import ChannelGroup, dependency_graph, find_groups
from pruning.latency_table import LatencyTable, Measure
from pruning.surgery import remove_channels
from pruning.target_cost import snap_to_target, target_cost
from pruning.widths import uniform_widths, widths_macs


@dataclass(frozen=True)
class MagnitudeConfig:
    """Magnitude pruning's own knobs; training length and LR live in `pruning.run.RunConfig`."""

    norm: float = 1.0  # p of the L_p importance (1 = L1, the published criterion)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.norm) and self.norm > 0):
            raise PruningError(f"MagnitudeConfig.norm must be a positive number, got {self.norm}")


class Magnitude:
    """L1 magnitude pruning behind the `pruning.algorithm.PruningAlgorithm` interface."""

    name = "magnitude"
    regularized = False  # no training with a regularizer: prune the model as given, then fine-tune

    def __init__(self, config: MagnitudeConfig | None = None) -> None:
        self.config = config or MagnitudeConfig()
        self.groups: tuple[ChannelGroup, ...] = ()
        self.skipped: dict[str, str] = {}
        self.widths: dict[str, int] = {}
        self.keep_ratio: float | None = None
        self.planned_macs: float | None = None
        self.example: Tensor | None = None
        self.facts: dict[str, Any] = {}
        # latency target (set by the driver before prepare()): the cost is the predicted latency in ms
        self.latency_table: LatencyTable | None = None
        self.latency_measure: Measure | None = None  # times a model, for the width snapping

    def prepare(self, model: nn.Module, target_macs: float, example: Tensor, steps_per_epoch: int,
                epochs: int = 1) -> nn.Module:
        """Find the groups of the deploy ``model`` and the uniform widths that meet the target."""
        scan = find_groups(model, example)
        if not scan.groups:
            raise PruningError(f"no prunable channel group in this model (skipped: {sorted(set(scan.skipped.values()))})")
        self.groups, self.skipped, self.example = scan.groups, dict(scan.skipped), example
        cost = target_cost(model, self.groups, example, self.latency_table, target_macs)
        self.keep_ratio, self.widths = uniform_widths(self.groups, cost, target_macs)
        if self.latency_measure is not None:
            self.widths, self.facts["snapped_widths"] = snap_to_target(
                model, self.groups, self.widths, example, self.latency_measure, cost, target_macs)
        self.planned_macs = widths_macs(cost, self.widths)
        return model

    def param_groups(self, model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
        """Decay on kernels only (the driver's fine-tuning recipe); unused: there is no regularised training."""
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
                {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]

    def regularize(self) -> None:
        """Nothing: magnitude pruning has no regularizer."""

    def scores(self, model: nn.Module) -> dict[str, Tensor]:
        """Per group root: Torch-Pruning's group L_p importance of each channel, on ``model`` as it is now."""
        if self.example is None:
            raise RuntimeError("magnitude: prepare() must run before prune()")
        example = self.example.to(next(model.parameters()).device)
        graph = dependency_graph(model, example)
        importance = tp.importance.GroupMagnitudeImportance(p=self.config.norm, group_reduction="mean", normalizer=None)
        scores = {}
        for group in self.groups:
            tp_group = graph.get_pruning_group(model.get_submodule(group.root), tp.prune_conv_out_channels,
                                               list(range(group.size)))
            score = importance(tp_group)
            if score is None or score.numel() != group.size:
                raise RuntimeError(f"magnitude: Torch-Pruning gave no importance for group {group.root!r}")
            scores[group.root] = score.detach().double().cpu()
        return scores

    def prune(self, model: nn.Module) -> nn.Module:
        """Remove the lowest-scored channels of every group down to its width (Torch-Pruning does the cut)."""
        model.eval()
        with torch.no_grad():
            scores = self.scores(model)
        removed: dict[str, list[int]] = {}
        largest_removed, smallest_kept = 0.0, math.inf
        for group in self.groups:
            width = self.widths.get(group.root, group.size)
            if width >= group.size:
                continue
            order = torch.argsort(scores[group.root], descending=True, stable=True)
            removed[group.root] = sorted(int(c) for c in order[width:])
            largest_removed = max(largest_removed, float(scores[group.root][order[width:]].max()))
            smallest_kept = min(smallest_kept, float(scores[group.root][order[:width]].min()))
        assert self.example is not None
        remove_channels(model, self.groups, removed, self.example.to(next(model.parameters()).device))
        self.facts.update(max_removed_importance=largest_removed,
                          min_kept_importance=smallest_kept if math.isfinite(smallest_kept) else None)
        return model

    def summary(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "importance": f"Torch-Pruning GroupMagnitudeImportance(p={self.config.norm:g}, mean over the group)",
            "prunable_groups": len(self.groups),
            "skipped_groups": dict(self.skipped),
            "keep_ratio": self.keep_ratio,
            "planned_macs": self.planned_macs,
            "widths": {g.root: [g.size, self.widths.get(g.root, g.size)] for g in self.groups},
            **self.facts,
        }

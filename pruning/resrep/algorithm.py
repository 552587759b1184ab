"""ResRep channel pruning (Ding et al., "ResRep: Lossless CNN Pruning via Decoupling Remembering
and Forgetting", ICCV 2021) on the deploy graph, as docs/design.md section 5 specifies.

``python -m pruning.resrep ckpt.pt --target-flops 0.3G`` (see `pruning._cli` for every flag).

1. The model is fused to its deploy form; its coupling groups come from Torch-Pruning
   (`pruning.groups`). Each dense conv producing a group's channels gets a compactor (identity
   1x1 conv); all producers of a group share one mask.
2. After every backward pass: ``Q.grad = mask * Q.grad + lasso * Q / (||Q_row|| + 1e-12)``.
3. After ``warmup_epochs``, every ``mask_interval`` iterations, the masks are recomputed from scratch
   (`pruning.resrep.masking`): global ranking by compactor row norm, until the deploy FLOPs of the implied
   widths reach the target, at most ``granularity`` new channels per update, one channel kept per layer.
   Left unset, the two knobs are derived from the schedule's length (`pruning.resrep.schedule`).
4. ``prune``: compactors fold into their convs (``W'' = Q W'``, ``b'' = Q b'``), exactly the unmasked
   rows are kept, and Torch-Pruning removes the matching channels everywhere; the result is checked
   against the masked model (masked rows zeroed) on a probe input.

interpretation:
- Coupled channels (one mask, several compactors) are ranked by the root-mean-square of their
  compactors' row norms, so every channel starts at 1 whatever the size of its group.
- A depthwise conv cannot absorb a channel-mixing compactor, and needs none: its channel is
  masked through the dense producer upstream, so masking stays gradual (the channel keeps flowing,
  only its compactor rows lose the task gradient). Once those rows are zero the depthwise output of
  the channel is the constant ``act(b_dw)``, folded into the consumers' biases at conversion
  (`pruning.resrep.constants`); where that is not exact (a second padded depthwise conv in the
  group, as in a stem), the channel is zeroed instead and counted (``hard_zeroed_channels``).
- ``groups="internal"`` is the official ResNet-56 setting: only groups with one dense producer
  (no residual add of two producers: the internal layer of each block) are pruned.
- Once the masks have reached the FLOPs target, later updates have no granularity cap (the
  official code's cap only binds on the way down), so the ranking may still change freely.
- If training ends before the masks reach the target, one final update without the granularity
  limit reaches it (recorded as ``forced_final_mask`` in the report, with a warning): the FLOPs
  target always holds, at the price of removing rows the lasso had no time to shrink.
- "Assert masked rows have small norm": the largest removed row norm is reported (and warned
  about above `SMALL_ROW_NORM`) rather than asserted, since a short schedule cannot shrink them
  all; exactness does not depend on it (the pruned model equals the masked model either way).
- Training runs with BatchNorms re-inserted after the deploy graph's biased convs
  (`pruning.retrain`, done by the driver); compactors sit after them, as after conv-BN in the paper.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dscnn.train import TrainConfig
from pruning.algorithm import PruningError
from pruning.groups import ChannelGroup, Member, find_groups
from pruning.latency_table import LatencyTable, Measure, snap_widths, within
from pruning.macs import CostModel
from pruning.resrep.compactor import CompactedConv, zero_masked_rows
from pruning.resrep.constants import fold_constants, plan_constants, zero_depthwise_biases
from pruning.resrep.masking import MaskUpdate, update_masks
from pruning.resrep.schedule import MaskSchedule, channels_to_mask, plan_schedule
from pruning.surgery import assert_same_outputs, relative_error, remove_channels
from pruning.target_cost import target_cost

#: Largest masked-row norm that counts as "forgotten"; larger ones are reported with a warning.
SMALL_ROW_NORM = 1e-2
#: ResRepConfig.groups: every prunable group, or only those with a single dense producer.
GROUP_CHOICES = ("all", "internal")


@dataclass(frozen=True)
class ResRepConfig:
    """ResRep's own knobs (docs/design.md section 5 defaults); training length and LR live in `pruning.run.RunConfig`."""

    lasso: float = 1e-4  # group-lasso strength λ on compactor rows
    mask_interval: int | None = None  # iterations between mask updates; None = from the schedule (published: 200)
    granularity: int | None = None  # most newly masked channels per update; None = from the schedule (published: 4)
    warmup_epochs: float = 1.0  # epochs of lasso-only training before the first mask update
    compactor_momentum: float = 0.99  # SGD momentum of the compactors (no weight decay on them)
    groups: str = "all"  # "all" groups, or "internal": only those with one dense producer (no residual streams)

    def __post_init__(self) -> None:
        if not (self.lasso >= 0 and math.isfinite(self.lasso)):
            raise PruningError(f"ResRepConfig.lasso must be >= 0, got {self.lasso}")
        for name in ("mask_interval", "granularity"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise PruningError(f"ResRepConfig.{name} must be an integer >= 1, got {getattr(self, name)}")
        if self.warmup_epochs < 0:
            raise PruningError(f"ResRepConfig.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if not 0 <= self.compactor_momentum < 1:
            raise PruningError(f"ResRepConfig.compactor_momentum must be in [0, 1), got {self.compactor_momentum}")
        if self.groups not in GROUP_CHOICES:
            raise PruningError(f"ResRepConfig.groups must be one of {', '.join(GROUP_CHOICES)}, got {self.groups!r}")


@dataclass
class _Site:
    """Where one producer of a group sits in the model, and its wrapper."""

    member: Member
    wrapper: CompactedConv


class ResRep:
    """The ResRep algorithm behind the `pruning.algorithm.PruningAlgorithm` interface."""

    name = "resrep"
    regularized = True  # trains with the compactors and the lasso before pruning

    def __init__(self, config: ResRepConfig | None = None) -> None:
        self.config = config or ResRepConfig()
        self.groups: tuple[ChannelGroup, ...] = ()
        self.skipped: dict[str, str] = {}
        self.sites: dict[str, list[_Site]] = {}
        self.masked: dict[str, Tensor] = {}
        self.history: list[dict[str, Any]] = []
        self._compactors: list[CompactedConv] = []
        self.step = 0
        self.forced_final_mask = False
        self.max_removed_row_norm = 0.0
        # set by prepare()
        self.cost: CostModel | None = None
        self.target_macs = 0.0
        self.warmup_steps = 0
        self.example: Tensor | None = None
        self.schedule: MaskSchedule | None = None  # the mask interval and granularity in use, set by prepare()
        self.conversion_error: float | None = None  # pruned vs masked model, set by prune()
        self.reached_target = False  # the masks have met the target once: no granularity cap from then on
        self.folded_channels = 0  # masked depthwise-coupled channels whose constant went into consumer biases
        self.hard_zeroed_channels = 0  # masked channels that could not be folded and were zeroed instead
        self.hard_zero_change: float | None = None  # relative output change caused by zeroing them
        # latency target (set by the driver before prepare()): the cost is the predicted latency in ms
        self.latency_table: LatencyTable | None = None
        self.latency_measure: Measure | None = None  # times a model, for the width snapping
        self.snapped: dict[str, tuple[int, int]] = {}  # per group: width from the masks, width snapped to

    def _schedule(self) -> MaskSchedule:
        if self.schedule is None:
            raise RuntimeError("ResRep: prepare() must run before training and pruning")
        return self.schedule

    def _prepared(self) -> tuple[CostModel, Tensor]:
        if self.cost is None or self.example is None:
            raise RuntimeError("ResRep: prepare() must run before training and pruning")
        return self.cost, self.example

    # -- setup -------------------------------------------------------------------------------
    def prepare(self, model: nn.Module, target_macs: float, example: Tensor, steps_per_epoch: int,
                epochs: int = 1) -> nn.Module:
        """Find the groups of the deploy ``model``, check the target is reachable, plan the masks, attach compactors.

        ``steps_per_epoch`` x ``epochs`` is the training schedule the mask knobs are planned for.
        """
        scan = find_groups(model, example)
        if not scan.groups:
            raise PruningError(f"no prunable channel group in this model (skipped: {_reasons(scan.skipped)})")
        self.groups, self.skipped = scan.groups, dict(scan.skipped)
        if self.config.groups == "internal":
            self.skipped |= {g.root: "a residual stream (groups='internal')" for g in self.groups
                             if len(g.dense_producers) != 1}
            self.groups = tuple(g for g in self.groups if len(g.dense_producers) == 1)
            if not self.groups:
                raise PruningError("groups='internal': no group with a single dense producer in this model")
        self.cost = target_cost(model, self.groups, example, self.latency_table, target_macs)
        floor = self.cost.min_macs()
        if target_macs < floor:
            raise PruningError(
                f"FLOPs target {target_macs / 1e6:.4g}M MACs is below {floor / 1e6:.4g}M, what remains with every "
                f"prunable layer at one channel ({len(self.skipped)} groups are not prunable: {_reasons(self.skipped)})"
            )
        self.target_macs = target_macs
        self.warmup_steps = round(self.config.warmup_epochs * steps_per_epoch)
        self.schedule, problem = plan_schedule(
            self.config.mask_interval, self.config.granularity, steps=steps_per_epoch * epochs,
            warmup_steps=self.warmup_steps, channels=channels_to_mask(self.groups, self.cost, target_macs),
        )
        if problem:
            warnings.warn(problem, stacklevel=2)
        self.example = example
        self.masked = {g.root: torch.zeros(g.size, dtype=torch.bool) for g in self.groups}
        self.sites = {g.root: [self._wrap(model, member) for member in g.dense_producers] for g in self.groups}
        self._compactors = [site.wrapper for sites in self.sites.values() for site in sites]
        return model

    def _wrap(self, model: nn.Module, member: Member) -> _Site:
        conv = model.get_submodule(member.module)
        assert isinstance(conv, nn.Conv2d)
        wrapper = CompactedConv(conv)
        model.set_submodule(member.module, wrapper)
        return _Site(member, wrapper)

    def compactors(self) -> list[CompactedConv]:
        """Every compactor wrapper, in group order."""
        return self._compactors

    def param_groups(self, model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
        """Compactors: momentum 0.99, no weight decay; the rest: the recipe's SGD, decay on kernels only."""
        compactor_params = [c.compactor.weight for c in self.compactors()]
        ids = {id(p) for p in compactor_params}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        return [
            {"params": compactor_params, "weight_decay": 0.0, "momentum": self.config.compactor_momentum},
            {"params": [p for p in rest if p.ndim > 1], "weight_decay": config.weight_decay},
            {"params": [p for p in rest if p.ndim <= 1], "weight_decay": 0.0},
        ]

    # -- training ----------------------------------------------------------------------------
    def regularize(self) -> None:
        """After backward: periodic mask update, then task gradient reset on masked rows + group lasso."""
        self.step += 1
        since = self.step - self.warmup_steps
        schedule = self._schedule()
        if since > 0 and since % schedule.interval == 0:
            self.apply_masks(self.next_masks(None if self.reached_target else schedule.granularity))
        lasso = self.config.lasso
        with torch.no_grad():
            for wrapper in self.compactors():
                q, mask = wrapper.compactor.weight, wrapper.compactor.mask
                if q.grad is None:
                    q.grad = torch.zeros_like(q)
                rows = q.flatten(1)
                penalty = rows / (rows.norm(dim=1, keepdim=True) + 1e-12)
                q.grad.mul_(mask.view(-1, 1, 1, 1)).add_(lasso * penalty.view_as(q))

    def importance(self) -> dict[str, Tensor]:
        """Per group: root-mean-square over its compactors of each channel's row norm."""
        scores: dict[str, Tensor] = {}
        for group in self.groups:
            total = torch.zeros(group.size, dtype=torch.float64)
            count = torch.zeros(group.size, dtype=torch.float64)
            for site in self.sites[group.root]:
                norms = site.wrapper.compactor.row_norms().double().cpu()
                for r, idxs in enumerate(site.member.channels):
                    total[r] += norms[list(idxs)].square().sum()
                    count[r] += len(idxs)
            scores[group.root] = (total / count.clamp_min(1)).sqrt()
        return scores

    def next_masks(self, granularity: int | None) -> MaskUpdate:
        return update_masks(self.importance(), self.masked, self._prepared()[0], self.target_macs, granularity)

    def apply_masks(self, update: MaskUpdate) -> None:
        """Adopt ``update``: write each producer's mask in its own channel numbering."""
        self.masked = update.masked
        self.reached_target = self.reached_target or update.macs <= self.target_macs
        for root, sites in self.sites.items():
            for site in sites:
                mask = site.wrapper.compactor.mask
                keep = torch.ones(mask.numel(), dtype=mask.dtype)
                for r in update.masked[root].nonzero().flatten().tolist():
                    keep[list(site.member.channels[r])] = 0
                mask.copy_(keep)
        self.history.append(
            {"step": self.step, "masked": update.count, "new": update.newly_masked, "macs": update.macs}
        )

    # -- conversion --------------------------------------------------------------------------
    def prune(self, model: nn.Module) -> nn.Module:
        """Fold compactors, keep exactly the unmasked rows, remove masked channels; checked numerically."""
        if self._masked_macs() > self.target_macs:  # the target must hold: finish the masks at once
            self._force_final_masks()
        if self.latency_measure is not None:
            self._snap(model)
        self.max_removed_row_norm = self._max_removed_row_norm()
        if self.max_removed_row_norm > SMALL_ROW_NORM:
            warnings.warn(
                f"ResRep: removed compactor rows have norms up to {self.max_removed_row_norm:.3g} (not yet forgotten); "
                "accuracy may drop: train longer or raise --lasso", stacklevel=2,
            )
        param = next(model.parameters())
        shape = self._prepared()[1].shape
        probe = torch.randn((max(2, shape[0]), *shape[1:]), generator=torch.Generator().manual_seed(0))
        probe = probe.to(device=param.device, dtype=param.dtype)
        zero_masked_rows(model.eval())
        self._fold_compactors(model)
        with torch.no_grad():
            masked_output = model(probe)  # the masked model: rows zeroed, depthwise channels at their constants
        plan, constants = plan_constants(model, self.groups, self.masked, probe)
        self.folded_channels, self.hard_zeroed_channels = plan.folded_count, plan.zeroed_count
        reference = masked_output
        if plan.zeroed:
            zero_depthwise_biases(model, self.groups, plan.zeroed)
            with torch.no_grad():
                reference = model(probe)
            self.hard_zero_change = relative_error(masked_output, reference)
            warnings.warn(
                f"ResRep: {plan.zeroed_count} masked channel(s) past a padded depthwise conv are not constant where "
                f"they are consumed and were zeroed instead of folded (output change {self.hard_zero_change:.3g}, "
                "relative)", stacklevel=2,
            )
        fold_constants(model, self.groups, constants)
        removed = {root: m.nonzero().flatten().tolist() for root, m in self.masked.items()}
        remove_channels(model, self.groups, removed, probe[:1])
        with torch.no_grad():
            self.conversion_error = assert_same_outputs(reference, model(probe), "ResRep pruned vs masked model")
        return model

    def _snap(self, model: nn.Module) -> None:
        """Raise each group's kept width to a measured-no-slower multiple by unmasking its most important channels.

        Exact either way: an unmasked channel keeps its compactor rows as trained.
        """
        assert self.latency_measure is not None
        plain = copy.deepcopy(model).eval()
        for sites in self.sites.values():
            for site in sites:
                plain.set_submodule(site.member.module, copy.deepcopy(site.wrapper).fold())
        widths = {r: int((~m).sum()) for r, m in self.masked.items()}
        snapped = snap_widths(plain, self.groups, widths, self._prepared()[1], self.latency_measure,
                              within(self._prepared()[0], self.target_macs))
        importance = self.importance()
        masked = {r: m.clone() for r, m in self.masked.items()}
        for root, width in snapped.items():
            extra = width - widths[root]
            if extra > 0:
                candidates = masked[root].nonzero().flatten()
                best = candidates[importance[root][candidates].argsort(descending=True)[:extra]]
                masked[root][best] = False
                self.snapped[root] = (widths[root], width)
        if self.snapped:
            self.apply_masks(MaskUpdate(masked, self._prepared()[0].macs(
                {r: m.nonzero().flatten().tolist() for r, m in masked.items()}), 0))

    def _fold_compactors(self, model: nn.Module) -> None:
        """Put each conv back with its compactor (masked rows already zero) folded in."""
        for sites in self.sites.values():
            for site in sites:
                model.set_submodule(site.member.module, site.wrapper.fold())

    def _force_final_masks(self) -> None:
        before = self._masked_macs()
        update = self.next_masks(granularity=None)
        if update.macs > self.target_macs:  # prepare() checked reachability: this is a bug, not bad input
            raise RuntimeError(f"ResRep: cannot reach {self.target_macs:.0f} MACs (got {update.macs})")
        warnings.warn(
            f"ResRep: the masks had not reached the FLOPs target when training ended ({before / 1e6:.4g}M > "
            f"{self.target_macs / 1e6:.4g}M MACs); a final update masked {update.newly_masked} more channels at "
            "once. Train longer, or raise --granularity or lower --mask-interval.",
            stacklevel=3,
        )
        self.forced_final_mask = True
        self.apply_masks(update)

    def _masked_macs(self) -> int:
        return self._prepared()[0].macs({r: m.nonzero().flatten().tolist() for r, m in self.masked.items()})

    def _max_removed_row_norm(self) -> float:
        largest = 0.0
        for wrapper in self.compactors():
            removed = wrapper.compactor.mask == 0
            if removed.any():
                largest = max(largest, float(wrapper.compactor.row_norms()[removed].max()))
        return largest

    def summary(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "mask_schedule": None if self.schedule is None else {
                **asdict(self.schedule), "updates": self.schedule.updates, "capacity": self.schedule.capacity},
            "prunable_groups": len(self.groups),
            "skipped_groups": dict(self.skipped),
            "mask_updates": len(self.history),
            "mask_history": self.history[-50:],  # the last 50 updates
            "masked_channels": int(sum(int(m.sum()) for m in self.masked.values())),
            "forced_final_mask": self.forced_final_mask,
            "max_removed_row_norm": self.max_removed_row_norm,
            "conversion_relative_error": self.conversion_error,
            "folded_constant_channels": self.folded_channels,
            "hard_zeroed_channels": self.hard_zeroed_channels,
            "hard_zero_relative_change": self.hard_zero_change,
            "snapped_widths": {r: list(v) for r, v in self.snapped.items()},
            "kept_widths": {r: int((~m).sum()) for r, m in self.masked.items()},
        }


def _reasons(skipped: dict[str, str]) -> str:
    if not skipped:
        return "none"
    reasons = sorted(set(skipped.values()))
    return "; ".join(reasons[:4]) + (" ..." if len(reasons) > 4 else "")

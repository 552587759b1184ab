"""When ResRep masks channels: the mask interval and granularity that suit the training schedule.

The published defaults (an update every 200 iterations, at most 4 new channels each,
docs/design.md 5.4) assume hundreds of epochs. On a short schedule they mask a few channels
gradually and then thousands in the final forced update (780 steps: 12 gradually, 3,298 at once).
So a knob left unset is derived from the schedule:

- the channels to mask are estimated before training, by masking every group at the same rate
  (the learned ranking will differ, hence the margin below) until the FLOPs target is reached;
- the masks should reach the target within the first `REACH_FRACTION` of the steps after the
  warm-up, so that the last masked channels still have time to fade before conversion;
- the published pair is kept when it can do that; otherwise the interval shrinks first (down to
  every step) and only then the granularity grows: as many small updates as the schedule allows.

A derived interval that allows fewer than `MIN_UPDATES` updates is refused (one line with the
numbers): that would be hard pruning, not ResRep. Explicit values are used as given (a granularity
is still derived for an explicit interval); when they cannot reach the target gradually within the
schedule, a warning gives the numbers and a pair that would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pruning.algorithm import PruningError
from pruning.groups import ChannelGroup
from pruning.macs import CostModel
from pruning.resrep.masking import update_masks

PUBLISHED_INTERVAL, PUBLISHED_GRANULARITY = 200, 4  # docs/design.md 5.4
REACH_FRACTION = 0.75  # derived knobs reach the target within this share of the post-warm-up steps
MIN_UPDATES = 2  # fewer mask updates than this is not gradual


@dataclass(frozen=True)
class MaskSchedule:
    """The knobs in use and the numbers they were judged by."""

    interval: int  # iterations between mask updates
    granularity: int  # most new channels per update
    steps: int  # training iterations in total
    warmup_steps: int  # iterations before the first update
    channels: int  # estimated channels to mask to reach the target
    derived: tuple[str, ...]  # which knobs were derived from the schedule ("mask_interval", "granularity")

    @property
    def updates(self) -> int:
        """Mask updates that happen during training."""
        return max(0, self.steps - self.warmup_steps) // self.interval

    @property
    def capacity(self) -> int:
        """Channels the limited updates can mask before training ends."""
        return self.updates * self.granularity

    def describe(self) -> str:
        return (f"{self.steps} steps ({self.warmup_steps} warm-up) allow {self.updates} mask update(s) every "
                f"{self.interval} steps of at most {self.granularity} channels = {self.capacity}; the target needs "
                f"about {self.channels}")


def channels_to_mask(groups: tuple[ChannelGroup, ...], cost: CostModel, target_macs: float) -> int:
    """Channels to mask to reach ``target_macs`` when every group is narrowed at the same rate."""
    importance = {g.root: (torch.arange(g.size, dtype=torch.float64) + 0.5) / g.size for g in groups}
    none = {g.root: torch.zeros(g.size, dtype=torch.bool) for g in groups}
    return update_masks(importance, none, cost, target_macs, None).count


def plan_schedule(interval: int | None, granularity: int | None, *, steps: int, warmup_steps: int,
                  channels: int) -> tuple[MaskSchedule, str | None]:
    """The mask schedule for these knobs (None = derive) and a warning when it is not gradual."""
    after_warmup = steps - warmup_steps
    reach = math.floor(REACH_FRACTION * after_warmup)  # steps within which the target should be reached
    derived = tuple(n for n, v in (("mask_interval", interval), ("granularity", granularity)) if v is None)
    if channels == 0:  # the target holds already: nothing to schedule
        plan = MaskSchedule(interval or PUBLISHED_INTERVAL, granularity or PUBLISHED_GRANULARITY, steps, warmup_steps,
                            0, derived)
        return plan, None
    if interval is None and reach < MIN_UPDATES:
        raise PruningError(
            f"ResRep: {steps} training steps with {warmup_steps} of warm-up leave room for fewer than {MIN_UPDATES} "
            f"gradual mask updates (about {channels} channels to mask): raise --epochs or lower --warmup-epochs"
        )
    if interval is None and granularity is None:
        interval, granularity = _derive_both(reach, channels)
    elif interval is None:
        assert granularity is not None
        interval = max(1, min(PUBLISHED_INTERVAL, reach * granularity // channels))
    elif granularity is None:
        updates = reach // interval or after_warmup // interval
        granularity = max(1, math.ceil(channels / max(1, updates)))
    assert interval is not None and granularity is not None
    plan = MaskSchedule(interval, granularity, steps, warmup_steps, channels, derived)
    if plan.updates >= MIN_UPDATES and plan.capacity >= channels:
        return plan, None
    if plan.capacity >= channels:
        why = "all of them in one update" if plan.updates else "all of them at once when training ends"
    else:
        why = "the rest at once when training ends"
    return plan, (f"ResRep: the masks cannot reach the FLOPs target gradually: {plan.describe()}, so {why}. "
                  + _advice(after_warmup, channels))


def _derive_both(reach: int, channels: int) -> tuple[int, int]:
    wanted = math.ceil(channels / PUBLISHED_GRANULARITY)  # updates at the published granularity
    if reach >= wanted * PUBLISHED_INTERVAL:
        return PUBLISHED_INTERVAL, PUBLISHED_GRANULARITY
    if reach >= wanted:
        return reach // wanted, PUBLISHED_GRANULARITY
    return 1, math.ceil(channels / reach)


def _advice(after_warmup: int, channels: int) -> str:
    reach = math.floor(REACH_FRACTION * after_warmup)
    if reach < MIN_UPDATES:
        return "Train for more steps (--epochs), or lower --warmup-epochs."
    interval, granularity = _derive_both(reach, channels)
    return (f"Leave --mask-interval and --granularity unset to derive them from the schedule "
            f"(here --mask-interval {interval} --granularity {granularity}).")

"""ResRep's periodic mask update (docs/design.md 5.4): global ranking by importance under a FLOPs target.

Masks are recomputed from scratch each time: every channel of every group is ranked by its
importance (ResRep: compactor row norm), smallest first, and masked in that order until the
deploy MACs of the implied widths reach the target, or until ``previous + granularity`` channels
are masked (so at most ``granularity`` more than last time), always keeping one channel per layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from pruning.macs import CostModel


@dataclass(frozen=True)
class MaskUpdate:
    """The masks of one update: per group root, True where the channel is masked (to be removed)."""

    masked: dict[str, Tensor]  # bool, one entry per group channel
    macs: int  # deploy MACs of the widths these masks imply
    newly_masked: int  # channels masked now that were not before

    @property
    def count(self) -> int:
        return int(sum(int(m.sum()) for m in self.masked.values()))


def update_masks(
    importance: Mapping[str, Tensor],
    previous: Mapping[str, Tensor],
    cost: CostModel,
    target_macs: float,
    granularity: int | None,
) -> MaskUpdate:
    """Mask the least important channels until ``target_macs`` or the granularity limit is reached.

    Args:
        importance: per group root, one score per channel (lower = masked first).
        previous: the masks of the last update (all False at first).
        cost: the MACs of any set of removed channels.
        target_macs: stop once the implied deploy MACs are at or below this.
        granularity: at most this many more masked channels than ``previous``; None = no limit
            (used for a final update that must reach the target).
    """
    order = sorted(
        ((float(score), root, c) for root, scores in importance.items() for c, score in enumerate(scores.tolist())),
        key=lambda item: item[0],
    )
    limit = None if granularity is None else sum(int(m.sum()) for m in previous.values()) + granularity
    state = cost.state()
    masked = {root: torch.zeros(len(scores), dtype=torch.bool) for root, scores in importance.items()}
    count = 0
    for _, root, channel in order:
        if state.macs <= target_macs or (limit is not None and count >= limit):
            break
        if not state.can_remove(root, channel):
            continue
        state.remove(root, channel)
        masked[root][channel] = True
        count += 1
    newly = sum(int((m & ~previous[r].cpu()).sum()) for r, m in masked.items())
    return MaskUpdate(masked, state.macs, newly)

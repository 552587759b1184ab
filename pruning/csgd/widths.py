"""C-SGD's per-layer target widths: keep ratios read from a JSON file (``--layer-ratios``, docs/design.md 6.4).

The alternative to one uniform keep ratio (`pruning.widths.uniform_widths`, shared with magnitude
pruning). A group of ``size`` channels at ratio ``r`` keeps ``max(1, round(r * size))``; the caller
checks the resulting cost against the target.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from pruning.algorithm import PruningError
from pruning.groups import OUT, ChannelGroup


def read_ratios(path: str | Path) -> dict[str, float]:
    """Per-layer keep ratios from a JSON object ``{"layer name": ratio}``, each ratio in (0, 1]."""
    file = Path(path)
    if not file.is_file():
        raise PruningError(f"layer ratio file {str(file)!r} does not exist")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise PruningError(f"layer ratio file {str(file)!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise PruningError(f"layer ratio file {str(file)!r} must hold a non-empty JSON object {{layer name: keep ratio}}")
    for name, ratio in data.items():
        number = isinstance(ratio, (int, float)) and not isinstance(ratio, bool)
        if not (number and math.isfinite(ratio) and 0 < ratio <= 1):
            raise PruningError(f"layer ratio file {str(file)!r}: keep ratio of {name!r} must be in (0, 1], got {ratio!r}")
    return {str(k): float(v) for k, v in data.items()}


def ratio_widths(groups: tuple[ChannelGroup, ...], ratios: Mapping[str, float]) -> dict[str, int]:
    """Per group root: the width at the ratio given for its root or any conv producing its channels.

    Groups not named keep every channel. Naming a layer that produces no prunable group, or two
    producers of one group with different ratios, is a ValueError.
    """
    owner = {m.module: g for g in groups for m in g.members if m.side == OUT}
    unknown = sorted(set(ratios) - set(owner))
    if unknown:
        raise PruningError(
            f"layer ratios name {', '.join(map(repr, unknown[:5]))}, which produce no prunable channel group; "
            f"prunable group roots: {', '.join(g.root for g in groups[:8])}{' ...' if len(groups) > 8 else ''}"
        )
    chosen: dict[str, float] = {}
    for name, ratio in ratios.items():
        root = owner[name].root
        if chosen.setdefault(root, ratio) != ratio:
            raise PruningError(f"layer ratios give group {root!r} two keep ratios: {chosen[root]} and {ratio} ({name!r})")
    return {g.root: max(1, min(g.size, round(chosen.get(g.root, 1.0) * g.size))) for g in groups}

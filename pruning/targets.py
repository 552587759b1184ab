"""The FLOPs target of a pruning run, parsed once at the CLI edge.

``0.3G`` / ``300M`` / ``2.5e8`` are absolute deploy MACs (docs/design.md section 0: fvcore multiply-accumulates of
the deploy form, batch 1); ``0.5x`` is a fraction of the model's current deploy MACs. A bare number
below `BARE_MINIMUM` (``0.3`` = 0.3 MACs) is refused as a slip for ``0.3x`` or ``0.3G``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from dscnn.units import format_macs, parse_macs
from pruning.algorithm import PruningError

#: A target written without a unit (K/M/G/T or x) must be at least this many MACs: no CNN costs less.
BARE_MINIMUM = 1e6
_BARE = re.compile(r"^\s*[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?\s*$")
_FRACTION = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*[xX]\s*$")


@dataclass(frozen=True)
class MacsTarget:
    """Either an absolute MAC count or a fraction of the unpruned model's MACs."""

    text: str  # as the user wrote it
    macs: float | None = None  # absolute target, when given as 0.3G / 300M
    fraction: float | None = None  # target / current MACs, when given as 0.5x

    def resolve(self, current_macs: float) -> float:
        """The target in MACs for a model that costs ``current_macs`` now; must be below it."""
        target = self.macs if self.macs is not None else current_macs * float(self.fraction or 0.0)
        if target >= current_macs:
            raise PruningError(
                f"FLOPs target {self.text!r} = {format_macs(target)} MACs is at or above the model's current "
                f"{format_macs(current_macs)}: nothing to prune"
            )
        return target


def parse_target(text: str) -> MacsTarget:
    """``"0.3G"``, ``"300M"`` or ``"0.5x"``; a clear ValueError for anything else or a non-positive value."""
    match = _FRACTION.match(str(text))
    if match:
        fraction = float(match[1])
        if not math.isfinite(fraction) or fraction <= 0:
            raise PruningError(f"FLOPs target {text!r}: the fraction must be positive")
        if fraction >= 1:
            raise PruningError(f"FLOPs target {text!r}: a fraction of the current FLOPs must be below 1x")
        return MacsTarget(str(text), fraction=fraction)
    stripped = str(text).strip()
    if stripped.startswith("-") or stripped in {"0", "0.0"}:
        raise PruningError(f"FLOPs target {text!r} must be positive")
    try:
        macs = parse_macs(stripped)
    except ValueError as exc:
        raise PruningError(f"FLOPs target {text!r}: {exc}; or a fraction such as 0.5x") from None
    if _BARE.match(stripped) and macs < BARE_MINIMUM:
        hint = (f"{stripped}x (a fraction of the current FLOPs) or {stripped}G ({stripped}e9 MACs)" if macs < 1
                else f"{stripped}M ({stripped}e6 MACs)")
        raise PruningError(f"FLOPs target {text!r} means {macs:g} MACs, far below any CNN: did you mean {hint}?")
    return MacsTarget(str(text), macs=macs)


@dataclass(frozen=True)
class LatencyTarget:
    """Either an absolute latency in ms or a fraction of the unpruned model's measured latency."""

    text: str  # as the user wrote it
    ms: float | None = None  # absolute, when given as 3ms
    fraction: float | None = None  # target / measured latency, when given as 0.5x

    def resolve(self, current_ms: float) -> float:
        """The target in ms for a model measured at ``current_ms``; must be below it."""
        target = self.ms if self.ms is not None else current_ms * float(self.fraction or 0.0)
        if target >= current_ms:
            raise PruningError(
                f"latency target {self.text!r} = {target:.4g} ms is at or above the model's measured "
                f"{current_ms:.4g} ms: nothing to prune"
            )
        return target


_MS = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*ms\s*$")


def parse_latency_target(text: str) -> LatencyTarget:
    """``"3ms"`` or ``"0.5x"`` (of the measured latency); a `PruningError` for anything else or a value <= 0."""
    match = _FRACTION.match(str(text))
    if match:
        fraction = float(match[1])
        if not math.isfinite(fraction) or fraction <= 0 or fraction >= 1:
            raise PruningError(f"latency target {text!r}: the fraction must be in (0, 1), e.g. 0.5x")
        return LatencyTarget(str(text), fraction=fraction)
    match = _MS.match(str(text))
    if match:
        ms = float(match[1])
        if not math.isfinite(ms) or ms <= 0:
            raise PruningError(f"latency target {text!r} must be positive")
        return LatencyTarget(str(text), ms=ms)
    raise PruningError(f"latency target {text!r}: write milliseconds (3ms) or a fraction of the measured latency (0.5x)")

"""Parsing of human-written quantities at the CLI edge ("0.3G" MACs), once, into plain numbers."""

from __future__ import annotations

import math
import re

_SUFFIXES = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([KMGT]?)\s*$", re.IGNORECASE)


def parse_macs(text: str) -> float:
    """``"0.3G"`` -> 3e8, ``"300M"`` -> 3e8, ``"2.5e8"`` -> 2.5e8; must be positive and finite."""
    match = _QUANTITY.match(str(text))
    if not match:
        raise ValueError(f"cannot parse {text!r} as a MAC count: use a number with an optional K/M/G/T suffix, e.g. 0.3G")
    value = float(match[1]) * _SUFFIXES[match[2].upper()]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"MAC count must be positive, got {text!r}")
    return value


def format_macs(macs: float) -> str:
    """3.354e8 -> ``"335.4M"``; ``"1.36G"`` for billions."""
    return f"{macs / 1e9:.3g}G" if macs >= 1e9 else f"{macs / 1e6:.4g}M"

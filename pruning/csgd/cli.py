"""``python -m pruning.csgd ckpt.pt --target-flops 0.3G``: the CSGD flags on top of `pruning._cli`'s."""

from __future__ import annotations

import argparse

from pruning._cli import default_help, run_cli
from pruning.csgd.algorithm import CSGD, CSGDConfig


def _add_flags(parser: argparse.ArgumentParser) -> None:
    d = CSGDConfig()
    parser.add_argument("--centripetal-strength", dest="centripetal_strength", type=float,
                        help=default_help("eps, pull towards the cluster mean (0.1 eps on vectors)", d,
                                          "centripetal_strength"))
    parser.add_argument("--layer-ratios", dest="layer_ratios",
                        help="JSON {conv name: keep ratio} instead of one uniform ratio")
    parser.add_argument("--kmeans-seed", dest="kmeans_seed", type=int,
                        help=default_help("seed of the k-means initialisation", d, "kmeans_seed"))


def main(argv: list[str] | None = None) -> int:
    """``python -m pruning.csgd ckpt.pt --target-flops 0.3G``; flags in `pruning._cli`."""
    return run_cli("csgd", argv, _add_flags, lambda knobs: CSGD(CSGDConfig(**knobs)))

"""``python -m pruning.csgd ckpt.pt --target-flops 0.3G``: the CSGD flags on top of `pruning._cli`'s."""

from __future__ import annotations

import argparse

from pruning._cli import default_help, run_cli
from pruning.csgd.algorithm import CSGD, CSGDConfig


def _add_flags(parser: argparse.ArgumentParser) -> None:
    d = CSGDConfig()
    parser.add_argument("--centripetal-strength", dest="centripetal_strength", type=float,
                        help=default_help("eps, pull towards the cluster mean (also on conv biases and BN betas; 0.1 eps "
                                          "on BN gammas)", d,
                                          "centripetal_strength"))
    parser.add_argument("--layer-ratios", dest="layer_ratios",
                        help="JSON {conv name: keep ratio} instead of one uniform ratio")
    parser.add_argument("--steps", type=_ratios,
                        help="intermediate keep ratios, decreasing, comma-separated (e.g. 0.8125,0.6875): training is "
                             "split into equal phases that cluster to these widths, then to the target's")
    parser.add_argument("--kmeans-seed", dest="kmeans_seed", type=int,
                        help=default_help("seed of the k-means initialisation", d, "kmeans_seed"))


def _ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps {text!r}: comma-separated keep ratios such as 0.8125,0.6875") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m pruning.csgd ckpt.pt --target-flops 0.3G``; flags in `pruning._cli`."""
    return run_cli("csgd", argv, _add_flags, lambda knobs: CSGD(CSGDConfig(**knobs)))

"""``python -m pruning.resrep ckpt.pt --target-flops 0.3G``: the ResRep flags on top of `pruning._cli`'s."""

from __future__ import annotations

import argparse

from pruning._cli import default_help, run_cli
from pruning.resrep.algorithm import GROUP_CHOICES, ResRep, ResRepConfig


def _add_flags(parser: argparse.ArgumentParser) -> None:
    d = ResRepConfig()
    parser.add_argument("--lasso", type=float, help=default_help("group-lasso strength on compactor rows", d, "lasso"))
    parser.add_argument("--mask-interval", dest="mask_interval", type=int,
                        help="iterations between mask updates (default: derived from the schedule so that the "
                             "target is reached gradually; the published 200 on long schedules)")
    parser.add_argument("--granularity", type=int,
                        help="most newly masked channels per update (default: derived from the schedule; the "
                             "published 4 on long schedules)")
    parser.add_argument("--groups", choices=GROUP_CHOICES,
                        help=default_help("prune every prunable group, or only the internal ones (a single dense "
                                          "producer: the official ResNet-56 setting, residual streams kept)", d,
                                          "groups"))
    parser.add_argument("--warmup-epochs", dest="warmup_epochs", type=float,
                        help=default_help("epochs before the first mask update", d, "warmup_epochs"))


def main(argv: list[str] | None = None) -> int:
    """``python -m pruning.resrep ckpt.pt --target-flops 0.3G``; flags in `pruning._cli`."""
    return run_cli("resrep", argv, _add_flags, lambda knobs: ResRep(ResRepConfig(**knobs)))

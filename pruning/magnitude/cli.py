"""``python -m pruning.magnitude ckpt.pt --target-flops 0.5x``: the magnitude flags on top of `pruning._cli`'s.

Magnitude pruning has no regularised training, so it has no ``--epochs``: its whole training is the
fine-tuning after the cut, ``--finetune-epochs`` (default: the retraining recipe's epochs, the
budget ResRep and C-SGD spend on their regularised training by default).
"""

from __future__ import annotations

import argparse

from pruning._cli import default_help, run_cli
from pruning.magnitude.algorithm import Magnitude, MagnitudeConfig
from pruning.run import RunConfig


def _add_flags(parser: argparse.ArgumentParser) -> None:
    d = MagnitudeConfig()
    parser.add_argument("--norm", type=float, help=default_help("p of the L_p channel importance", d, "norm"))


def main(argv: list[str] | None = None) -> int:
    """``python -m pruning.magnitude ckpt.pt --target-flops 0.5x``; flags in `pruning._cli`."""
    return run_cli("magnitude", argv, _add_flags, lambda knobs: Magnitude(MagnitudeConfig(**knobs)),
                   without=("--epochs",), defaults={"finetune_epochs": RunConfig(target="0.5x").train.epochs})

"""The command line shared by every pruning algorithm (``python -m pruning.resrep``, ``pruning.csgd``).

Flags left unset fall back to the dataclass defaults (`pruning.run.RunConfig` and the algorithm's
config), the single source of truth. Bad input is reported as ``error: ...`` with exit status 2,
and nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pruning.algorithm import PruningAlgorithm
from pruning.run import RunConfig, run_pruning
from dscnn.data import DATASETS, DataError

#: The run flags: (flag, RunConfig field, type, help).
RUN_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--dataset", "dataset", str, f"data set: {', '.join(DATASETS)}"),
    ("--data-dir", "data_dir", str, "folder with the data (default: $REPNAS_DATA)"),
    ("--train-per-class", "train_per_class", int, "class-balanced training subset (0 = all)"),
    ("--val-per-class", "val_per_class", int, "class-balanced validation subset (0 = all)"),
    ("--epochs", "epochs", int, "training epochs with the pruning regularizer"),
    ("--finetune-epochs", "finetune_epochs", int, "plain training epochs after pruning"),
    ("--batch-size", "batch_size", int, "training batch size"),
    ("--lr", "lr", float, "peak learning rate (cosine to 0)"),
    ("--weight-decay", "weight_decay", float, "weight decay on kernels"),
    ("--device", "device", str, "cpu, cuda or auto"),
    ("--seed", "seed", int, "seed of data order and subsets"),
    ("--out", "out", str, "pruned model path (default: <checkpoint>_<method>.pt); the report is <out>.json"),
)

AddFlags = Callable[[argparse.ArgumentParser], None]
Build = Callable[[dict[str, Any]], PruningAlgorithm]


def build_parser(method: str, add_flags: AddFlags) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m pruning.{method}",
        description=f"Prune a model's deploy form with {method} to a FLOPs target (fvcore MACs, batch 1).",
    )
    parser.add_argument("checkpoint", nargs="?", help="repnas checkpoint; with --model: an optional state_dict file")
    parser.add_argument("--model", help="prune a torchvision model by name (weights=None) instead of a checkpoint")
    parser.add_argument("--target-flops", required=True, help="deploy MACs: 0.3G, 300M, or 0.5x the current")
    for flag, field, kind, text in RUN_FLAGS:
        parser.add_argument(flag, dest=field, type=kind, help=text)
    parser.add_argument("--no-latency", dest="time_latency", action="store_false", default=None,
                        help="skip the CPU latency measurements")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="no progress bars")
    add_flags(parser.add_argument_group(method))  # type: ignore[arg-type]
    return parser


def run_cli(method: str, argv: list[str] | None, add_flags: AddFlags, build: Build) -> int:
    """Parse ``argv``, run the pruning, print the report; 0 on success, 2 on bad input."""
    args = vars(build_parser(method, add_flags).parse_args(argv))
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    given = {k: v for k, v in args.items() if v is not None}
    try:
        config = RunConfig(target=given.pop("target_flops"), **{k: v for k, v in given.items() if k in run_fields})
        algorithm = build({k: v for k, v in given.items() if k not in run_fields | {"checkpoint", "model"}})
        _, report = run_pruning(algorithm, config, checkpoint=args["checkpoint"], torchvision_model=args["model"])
    except (ValueError, DataError) as exc:  # CheckpointError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report.print()
    print(f"wrote {report.output} and {Path(report.output).with_suffix('.json')}")
    return 0

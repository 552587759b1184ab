"""The command line shared by every pruning algorithm (``python -m pruning.resrep``, ``pruning.csgd``,
``pruning.magnitude``).

Flags left unset fall back to the dataclass defaults (`pruning.run.RunConfig` and the algorithm's
config; a method may replace a default, e.g. magnitude's fine-tuning epochs), the single source of
truth. Bad input, an unknown runtime or one that cannot run here (``--runtime``, validated as
`dscnn.runtimes` does for the search and `dscnn.bench`) is reported as ``error: ...`` with exit
status 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dscnn.checkpoint import CheckpointError
from dscnn.data import DATASETS, DataError
from dscnn.runtimes import RUNTIMES, RuntimeUnavailable
from pruning.algorithm import PruningAlgorithm, PruningError, TargetMissed
from pruning.run import RunConfig, run_pruning

#: The run flags: (flag, section of RunConfig ("" = itself, "data", "train"), field, type, help).
RUN_FLAGS: tuple[tuple[str, str, str, Any, str], ...] = (
    ("--dataset", "data", "name", str, f"data set: {', '.join(DATASETS)}"),
    ("--data-dir", "data", "data_dir", str, "folder with the data (None: $REPNAS_DATA)"),
    ("--train-per-class", "data", "train_per_class", int, "class-balanced training subset (0 = all)"),
    ("--val-per-class", "data", "val_per_class", int, "class-balanced validation subset (0 = all)"),
    ("--epochs", "train", "epochs", int, "training epochs with the pruning regularizer"),
    ("--finetune-epochs", "", "finetune_epochs", int, "plain training epochs after pruning"),
    ("--batch-size", "train", "batch_size", int, "training batch size"),
    ("--lr", "train", "lr", float, "peak learning rate (cosine to 0)"),
    ("--weight-decay", "train", "weight_decay", float, "weight decay on kernels"),
    ("--device", "train", "device", str, "cpu, cuda or auto"),
    ("--seed", "train", "seed", int, "seed of data order, augmentation and subsets"),
    ("--out", "", "out", str, "pruned model path (None: <checkpoint>_<method>.pt); the report is <out>.json"),
    ("--calibration-rounds", "", "calibration_rounds", int, "with --target-latency: times the widths planned from "
     "the latency table are cut out and measured whole, to correct the table's budget before training (0 = trust "
     "the table)"),
    ("--latency-plan", "", "latency_plan", str, "with --target-latency: a JSON file holding the latency table and "
     "calibrated budget; written by the first run, read back by later runs of the same model, settings and target, "
     "so methods compared at one target plan against one budget (None: measure in every run)"),
)


def default_help(text: str, config: object, name: str) -> str:
    """``text`` with the dataclass default of ``name`` appended: one place holds each default."""
    return f"{text} (default: {getattr(config, name)})"


AddFlags = Callable[[argparse.ArgumentParser], None]
Build = Callable[[dict[str, Any]], PruningAlgorithm]


def build_parser(method: str, add_flags: AddFlags, without: tuple[str, ...] = (),
                 defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """The parser of ``method``: the run flags but those in ``without``; ``defaults`` replace RunConfig's top-level ones."""
    parser = argparse.ArgumentParser(
        prog=f"python -m pruning.{method}",
        description=f"Prune a model's deploy form with {method} to a FLOPs target (fvcore MACs, batch 1) or a "
                    "measured-latency target.",
    )
    parser.add_argument("checkpoint", nargs="?", help="repnas checkpoint; with --model: an optional state_dict file")
    parser.add_argument("--model", help="prune a torchvision model by name (weights=None) instead of a checkpoint")
    parser.add_argument("--target-flops", help="deploy MACs: 0.3G, 300M, or 0.5x the current")
    parser.add_argument("--target-latency", help="instead of --target-flops: measured latency, 3ms or 0.5x the current "
                                                 "(a per-layer latency table picks the widths; the pruned model is "
                                                 "measured, and a miss exits 1 writing nothing)")
    base = dataclasses.replace(RunConfig(target="0.5x"), **(defaults or {}))
    for flag, section, name, kind, text in RUN_FLAGS:
        if flag in without:
            continue
        owner = getattr(base, section) if section else base
        parser.add_argument(flag, dest=f"{section}.{name}", type=kind, metavar=flag[2:].upper().replace("-", "_"),
                            help=default_help(text, owner, name))
    parser.add_argument("--no-latency", dest="time_latency", action="store_false", default=None,
                        help="skip the CPU latency measurements")
    parser.add_argument("--runtime", dest="latency_runtime", metavar="RUNTIME",
                        help=f"runtime the latency table and the before/after timings run in: {', '.join(RUNTIMES)} "
                             f"(default: {base.latency_runtime})")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="no progress bars")
    add_flags(parser.add_argument_group(method))  # type: ignore[arg-type]
    return parser


def run_cli(method: str, argv: list[str] | None, add_flags: AddFlags, build: Build, *, without: tuple[str, ...] = (),
            defaults: dict[str, Any] | None = None) -> int:
    """Parse ``argv``, run the pruning, print the report; 0 on success, 2 on bad input, 1 on a missed latency target.

    ``without`` drops run flags the method has no use for; ``defaults`` are its own RunConfig defaults.
    """
    args = vars(build_parser(method, add_flags, without, defaults).parse_args(argv))
    given = {k: v for k, v in args.items()
             if v is not None and k not in ("checkpoint", "model", "target_flops", "target_latency")}
    run = {(k.split(".")[0], k.split(".")[1]): v for k, v in given.items() if "." in k}
    try:
        config = _run_config(args["target_flops"] or "", run, given, args["target_latency"], defaults)
        algorithm = build({k: v for k, v in given.items()
                           if "." not in k and k not in ("time_latency", "progress", "latency_runtime")})
        _, report = run_pruning(algorithm, config, checkpoint=args["checkpoint"], torchvision_model=args["model"])
    except (PruningError, DataError, CheckpointError, RuntimeUnavailable) as exc:  # the user's input, not a bug: one line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TargetMissed as exc:  # measured, and missed: say so, write nothing
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report.print()
    print(f"wrote {report.output} and {Path(report.output).with_suffix('.json')}")
    return 0


def _run_config(target: str, run: dict[tuple[str, str], Any], given: dict[str, Any],
                target_latency: str | None = None, defaults: dict[str, Any] | None = None) -> RunConfig:
    base = RunConfig(target=target, target_latency=target_latency, time_latency=given.get("time_latency", True),
                     **(defaults or {}))
    try:
        sections = {
            section: dataclasses.replace(getattr(base, section), **{n: v for (s, n), v in run.items() if s == section})
            for section in ("data", "train")
        }
        if ("train", "seed") in run:  # one seed for the data subset and the training
            sections["data"] = dataclasses.replace(sections["data"], seed=run[("train", "seed")])
        top = {n: v for (s, n), v in run.items() if s == ""}
        top |= {k: given[k] for k in ("time_latency", "progress", "latency_runtime") if k in given}
        return dataclasses.replace(base, **sections, **top)
    except ValueError as exc:
        raise PruningError(str(exc)) from None

"""Latency-budgeted architecture search over the re-parameterized space.

    python search.py --budget-ms 2 --dataset tiny-imagenet --data-dir ../shared/data
    optuna-dashboard studies.db

Every trial builds the deploy form and measures its latency on the target device before any
training; architectures over the budget are recorded and never trained. Flags left unset fall back
to a study file (--study studies/NAME.toml, keys = these flags underscored), then to the library's
defaults (searchspace.config). Several processes on one --storage share a study; --backend ray
trains trials on a Ray Tune cluster (docs/distributed.md). FLOPs here mean deploy-form fvcore
multiply-accumulates at batch 1.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from dscnn.checkpoint import CheckpointError
from dscnn.data import DataError
from dscnn.measure_cache import CacheUnusable
from dscnn.runtimes import RuntimeUnavailable
from searchspace import SETTINGS, RayConfig, SearchConfig, default_of, read_study_table, run_search
from searchspace.identity import SearchError
from searchspace.run import SearchInterrupted
from searchspace.storage import JournalDamaged


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="search.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for key, s in SETTINGS.items():
        group = groups.setdefault(s.group, p.add_argument_group(s.group))
        flag, text = f"--{key.replace('_', '-')}", f"{s.help} (default: {default_of(key)})"
        if s.kind is None:
            group.add_argument(flag, action="store_true", default=None, help=text)
        else:
            group.add_argument(flag, type=s.kind, choices=s.choices, default=None, help=text)
    p.add_argument("--study", help="a study definition (TOML) whose keys are these flags, underscored")
    return p


def parse_args(argv: list[str] | None = None) -> tuple[SearchConfig, RayConfig | None]:
    """The search config, and its `RayConfig` (None for the Optuna backend)."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    study = args.pop("study")
    try:
        config = SearchConfig.from_mapping(read_study_table(study) if study else {}, args)
    except ValueError as exc:
        parser.error(str(exc))
    return config, config.ray


def config_from_args(argv: list[str] | None = None) -> SearchConfig:
    return parse_args(argv)[0]


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(argv)
    console = Console()
    try:
        result = run_search(config, console=console)
    except (DataError, SearchError, CheckpointError, JournalDamaged, RuntimeUnavailable, CacheUnusable) as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)  # one line, however long the path
        return 2
    except SearchInterrupted as exc:
        console.print(f"{exc}; run the same command to resume (the interrupted trial is re-run)", soft_wrap=True)
        return 130
    console.print(f"study {result.study_name!r}: {result.finished_trials} finished trials, results in "
                  f"{result.out_dir}/", soft_wrap=True)
    console.print(next_steps(config, result.best is not None), soft_wrap=True)
    return 0


def next_steps(config: SearchConfig, has_best: bool) -> str:
    """The commands a newcomer runs next, with this run's paths."""
    out = config.out_dir
    lines = ["next:", f"  optuna-dashboard {config.storage}    # every trial: latency, MACs, params, learning curve"]
    if has_best:
        lines += [f"  python -m pruning.resrep {out / 'best.pt'} --target-latency 0.6x{_pruning_flags(config)}"
                  "    # prune the winner",
                  f"  python -m dscnn.export {out / 'best_deploy.pt'} --onnx {out / 'best.onnx'}    # export + check"]
    if has_best and config.data.holdout_per_class:
        lines.append("  (pruning validates on the data set's held-out split, which this search kept as its test split: "
                     "report test accuracy from a study, python -m studies.run, not from that run)")
    return "\n".join(lines)


def _pruning_flags(config: SearchConfig) -> str:
    """The search's data, device and latency settings as pruning flags, so the next step trains on the same data."""
    data, flags = config.data, []
    if data.name != "embedded":
        flags += [f"--dataset {data.name}"] + ([f"--data-dir {data.data_dir}"] if data.data_dir else [])
    if data.train_per_class:
        flags.append(f"--train-per-class {data.train_per_class}")
    if data.val_per_class:
        flags.append(f"--val-per-class {data.val_per_class}")
    if config.train.device != "cpu":
        flags.append(f"--device {config.train.device}")
    if config.latency.runtime != "eager":
        flags.append(f"--runtime {config.latency.runtime}")
    return "".join(f" {f}" for f in flags)


if __name__ == "__main__":
    sys.exit(main())

"""Latency-budgeted architecture search over the re-parameterized space.

    python search.py --budget-ms 2 --dataset tiny-imagenet --data-dir ../shared/data
    optuna-dashboard studies.db

Several processes given the same --storage share one study (docs/distributed.md); --backend ray
runs the trials on a Ray Tune cluster instead.

Every trial builds the deploy form and measures its latency on the target device before any
training; architectures over the budget are recorded and never trained. Flags left unset fall back
to a study file (``--study studies/NAME.toml``), then to the library defaults.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console

from dscnn.latency import LatencySettings
from dscnn.units import parse_macs
from dscnn.data import DATASETS, DataConfig, DataError
from searchspace.run import SearchConfig, run_search
from searchspace.space import SPACES
from dscnn.train import TrainConfig

if TYPE_CHECKING:
    from searchspace.ray_backend import RayConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="search.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=None,
    )
    g = p.add_argument_group("budget")
    g.add_argument("--budget-ms", type=float, help="hard latency budget of the deploy form, ms (batch --latency-batch)")
    g.add_argument("--budget-flops", help="hard budget on deploy MACs, e.g. 0.3G or 300M (fvcore MACs)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, help="data set (default: embedded, a CIFAR-10 subset shipped inside")
    g.add_argument("--data-dir", help="folder holding the data set (default: $REPNAS_DATA)")
    g.add_argument("--train-per-class", type=int, help="class-balanced training subset per class (0 = all)")
    g.add_argument("--val-per-class", type=int, help="class-balanced validation subset per class (0 = all)")
    g.add_argument("--resolution", type=int, help="input size models are built, timed and trained at (default: native)")
    g = p.add_argument_group("search")
    g.add_argument("--space", choices=sorted(SPACES), help="search space (default: full = dscnn + falconnet)")
    g.add_argument("--trials", type=int, help="total trials in the study, baselines included (default 20)")
    g.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    g.add_argument("--seed", type=int, help="sampler seed (default 0)")
    g.add_argument("--pareto", action="store_true", default=None, help="multi-objective: accuracy up, latency down")
    g.add_argument("--no-baselines", action="store_true", default=None, help="do not enqueue the hand-designed models")
    g = p.add_argument_group("proxy training")
    g.add_argument("--epochs", type=int, help="training epochs per trial (default 5)")
    g.add_argument("--batch-size", type=int, help="training batch size (default 128)")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), help="default sgd")
    g.add_argument("--lr", type=float, help="peak learning rate (default 0.1)")
    g = p.add_argument_group("device and measurement")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where models are timed and trained (default auto)")
    g.add_argument("--latency-batch", type=int, help="batch size of the latency measurement (default 1)")
    g.add_argument("--threads", type=int, help="CPU threads during latency measurement (default 1)")
    g.add_argument("--cache", help="latency cache file (default $REPNAS_CACHE or ~/.cache/repnas/latency.sqlite)")
    g = p.add_argument_group("storage and outputs")
    g.add_argument("--storage", help="journal file or RDB URL (default studies.db); processes sharing it share the study")
    g.add_argument("--study-name", help="study name in the storage (default repnas)")
    g.add_argument("--out", help="output folder (default runs/<study-name>)")
    g.add_argument("--study", help="a study definition (TOML, keys = these flags with underscores)")
    g = p.add_argument_group("distributed (docs/distributed.md)")
    g.add_argument("--backend", choices=("optuna", "ray"), help="optuna: trials run in this process (default); "
                   "ray: trials train as Ray Tune trials (ASHA), latency is measured in this process")
    g.add_argument("--ray-address", help="Ray cluster to join: auto or HOST:PORT (default: start Ray on this machine)")
    g.add_argument("--cpus-per-trial", type=float, help="Ray: CPUs reserved by each trial (default 1)")
    g.add_argument("--gpus-per-trial", type=float, help="Ray: GPUs reserved by each trial, fractions allowed (default 0)")
    g.add_argument("--concurrency", type=int, help="Ray: trials training at the same time (default 2)")
    g.add_argument("--ray-storage", help="Ray: results/checkpoint folder, shared or s3:// on a cluster (default <out>/ray)")
    return p


def _values(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """CLI flags that were given, over the study file's values."""
    given = {k: v for k, v in vars(args).items() if v is not None and k != "study"}
    if not args.study:
        return given
    path = Path(args.study)
    if not path.is_file():
        parser.error(f"--study {args.study!r}: no such file")
    with path.open("rb") as f:
        try:
            study = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            parser.error(f"--study {args.study!r}: not valid TOML ({exc})")
    if isinstance(study.get("search"), dict):  # a whole-chain study file (studies.run): its [search] table
        study = study["search"]
    known = {a.dest for a in parser._actions}
    unknown = sorted(set(study) - known)
    if unknown:
        parser.error(f"--study {args.study!r}: unknown key(s) {', '.join(unknown)}")
    return {**study, **given}


RAY_FLAGS = {"ray_address": "address", "cpus_per_trial": "cpus_per_trial", "gpus_per_trial": "gpus_per_trial",
             "concurrency": "concurrency", "ray_storage": "storage_path"}


def config_from_args(argv: list[str] | None = None) -> SearchConfig:
    return parse_args(argv)[0]


def parse_args(argv: list[str] | None = None) -> tuple[SearchConfig, RayConfig | None]:
    """The search config, and the `RayConfig` when ``--backend ray`` (else None)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    v = _values(args, parser)
    config = _search_config(v, parser)
    return config, _ray_config(v, parser, config)


def _ray_config(v: dict[str, Any], parser: argparse.ArgumentParser, config: SearchConfig) -> RayConfig | None:
    given = {field: v[flag] for flag, field in RAY_FLAGS.items() if flag in v}
    if v.get("backend", "optuna") != "ray":
        if given:
            flag = next(k for k in RAY_FLAGS if k in v)
            parser.error(f"--{flag.replace('_', '-')} needs --backend ray")
        return None
    if config.train.device == "cuda" and not given.get("gpus_per_trial"):
        parser.error("--device cuda with --backend ray needs --gpus-per-trial > 0")
    from searchspace.ray_backend import RayConfig  # imports Ray: only when asked for

    try:
        return RayConfig(**given)
    except ValueError as exc:
        parser.error(f"--backend ray: {exc}")


def _search_config(v: dict[str, Any], parser: argparse.ArgumentParser) -> SearchConfig:
    for key in ("trials", "epochs", "batch_size", "latency_batch", "threads"):
        if key in v and v[key] < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {v[key]}")
    if "budget_ms" in v and not v["budget_ms"] > 0:
        parser.error(f"--budget-ms must be a positive number of milliseconds, got {v['budget_ms']}")
    try:
        budget_macs = parse_macs(v["budget_flops"]) if "budget_flops" in v else None
    except ValueError as exc:
        parser.error(f"--budget-flops: {exc}")
    device = v.get("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible to PyTorch (use --device cpu)")

    def pick(cls: type, **mapping: str) -> dict[str, Any]:
        names = {f.name for f in fields(cls)}
        return {field: v[flag] for field, flag in mapping.items() if flag in v and field in names}

    try:
        data = DataConfig(**pick(DataConfig, name="dataset", data_dir="data_dir", train_per_class="train_per_class",
                                 val_per_class="val_per_class", resolution="resolution"))
    except ValueError as exc:
        parser.error(str(exc))
    train = TrainConfig(device=device, **pick(TrainConfig, epochs="epochs", batch_size="batch_size",
                                              optimizer="optimizer", lr="lr", seed="seed"))
    latency = LatencySettings(device=device, **pick(LatencySettings, batch="latency_batch", threads="threads"))
    search = pick(SearchConfig, study_name="study_name", storage="storage", out="out", space="space",
                  budget_ms="budget_ms", trials="trials", timeout_s="timeout", seed="seed", pareto="pareto",
                  cache_path="cache")
    if v.get("no_baselines"):
        search["baselines"] = ()
    return SearchConfig(budget_macs=budget_macs, data=data, train=train, latency=latency, **search)


def main(argv: list[str] | None = None) -> int:
    config, ray_config = parse_args(argv)
    console = Console()
    try:
        if ray_config is None:
            result = run_search(config, console=console)
        else:
            from searchspace.ray_backend import run_ray_search

            result = run_ray_search(config, ray_config, console=console)
    except DataError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    console.print(
        f"study {result.study_name!r}: {result.finished_trials} finished trials, results in {result.out_dir}/\n"
        f"dashboard: optuna-dashboard {config.storage}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

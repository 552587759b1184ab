"""CIFAR-10 pruning benchmark at equal budget: ResRep vs C-SGD vs L1 magnitude, to 0.5x MACs and 0.6x latency.

For each model and seed: train the model from scratch (train form), then prune its deploy form with
every method through the one driver (`pruning.run.run_pruning`, the same groups, cost model, targets
and report), each with the same total budget of ``--budget-epochs`` epochs on the deploy graph
(BN re-inserted, `pruning.retrain`):

- ResRep (`pruning.resrep`): ``budget - finetune`` epochs of compactor training (lasso, masks), then
  ``--finetune-epochs`` of plain training after the conversion (0 = the paper's recipe: none);
- C-SGD (`pruning.csgd`): the same split, centripetal training then fine-tuning;
- magnitude (`pruning.magnitude`): Torch-Pruning group L1 importance, cut at once, then the whole
  budget as fine-tuning.

Rows: unpruned, each method at 0.5x deploy MACs, and ``--latency-methods`` at ``--latency-target``
(0.6x of the measured CPU latency: the latency table, snapping and the measured check of
`pruning.latency_table`; a miss is recorded as such, nothing is claimed). Every row records top-1 on
the validation split before conversion (the trained regularised model), right after it, and after
fine-tuning; deploy MACs (fvcore, batch 1), params, per-layer widths and the CPU batch-1 latency of
the unpruned and the pruned model, timed interleaved under the machine's timing lock
(``/tmp/repnas-cpu-bench.lock``; the load during timing is in each latency record).

The validation split is ``--val-per-class`` images per class of the CIFAR-10 *test* folder
(DataConfig's held-out split); nothing is selected on it (no early stopping, fixed hyper-parameters),
so it is reported as the test split.

Hyper-parameters are the published ones (docs/design.md sections 5, 6; ../shared/SPEC.md): ResRep lasso
1e-4, compactor momentum 0.99, granularity 4, mask interval 200 iterations, the official ResNet
setting (``groups=internal``: only the internal layer of each residual block); C-SGD eps 3e-3 (0.1 eps
on BN gammas). Scaled, with the reason recorded in the JSON: the mask interval is derived from the
schedule (`pruning.resrep.schedule`: 200 x 4 channels per update needs tens of thousands of
iterations; the interval shrinks first, the granularity stays 4 while that suffices), and the warm-up
is ``--warmup-epochs`` (the paper's 5 of 480 epochs, about 1%; 5 epochs would leave a short budget
almost no masking steps).

Quick start (CPU scale, about 35 minutes on one thread of the shared 2-core machine):

    OMP_NUM_THREADS=1 python benchmarks/pruning_cifar10.py --data-dir /work/shared/data

Full scale (a GPU; the issue's ResNet-56 >= 80% regime):

    python benchmarks/pruning_cifar10.py --data-dir /work/shared/data --models resnet56 dscnn_small \
        --train-per-class 0 --val-per-class 0 --base-epochs 160 --budget-epochs 160 --batch-size 128 \
        --base-lr 0.1 --warmup-epochs 5 --device cuda --threads 8

``--resume`` keeps the rows already in ``--out`` that were made with the same settings (an
interrupted run continues where it stopped; the JSON is rewritten after every row). Each row carries
the provenance of the run that measured it (``provenance``: command, git commit, environment, start
time), so rows a later ``--resume`` appends are not attributed to the first run's machine or code;
the top-level ``command`` / ``git`` / ``environment`` are the latest run's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import dscnn
from dscnn.data import DataConfig, ImageDataset, load_dataset
from dscnn.environment import environment, git_revision
from dscnn.train import TrainConfig, train_and_evaluate
from dscnn.units import format_macs
from pruning.algorithm import PruningAlgorithm, PruningError, TargetMissed
from pruning.csgd import CSGD, CSGDConfig
from pruning.magnitude import Magnitude
from pruning.report import PruneReport
from pruning.resrep import ResRep, ResRepConfig
from pruning.run import RunConfig, run_pruning

#: label -> (registry model, overrides at 32x32 / 10 classes, ResRep groups in the official setting)
MODELS: dict[str, tuple[str, dict[str, Any], str]] = {
    "resnet20": ("resnet20", {}, "internal"),
    "resnet56": ("resnet56", {}, "internal"),
    # stem stride 2 at 32x32: stage 1 at 16x16 (the train form's 7-branch RepASO is costly at full size)
    "dscnn_small": ("dscnn_t0", {"widths": (24, 48, 96, 192), "depths": (1, 2, 4, 1), "head_dim": 512,
                                 "stem_stride": 2}, "all"),
}
MACS_TARGET = "0.5x"
METHODS = ("resrep", "csgd", "magnitude")
TIMING_LOCK = "/tmp/repnas-cpu-bench.lock"  # the shared machine's timing lock (held only while timing)
#: Settings every row depends on: rows are kept by --resume only when these match.
SHARED_SETTINGS = ("data_dir", "train_per_class", "val_per_class", "base_epochs", "budget_epochs", "finetune_epochs",
                   "batch_size", "base_lr", "lr", "weight_decay", "lasso", "granularity", "mask_interval",
                   "warmup_epochs", "centripetal_strength", "latency_target", "device", "runtime")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("REPNAS_DATA"), help="data folder (default $REPNAS_DATA)")
    p.add_argument("--models", nargs="+", default=["resnet20"], choices=list(MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="one full run (base training + pruning) each")
    p.add_argument("--train-per-class", type=int, default=150, help="class-balanced training subset (0 = all)")
    p.add_argument("--val-per-class", type=int, default=100, help="images per class of the test split (0 = all)")
    p.add_argument("--base-epochs", type=int, default=10, help="training of the unpruned model")
    p.add_argument("--budget-epochs", type=int, default=6,
                   help="every method's total epochs: regularised training + fine-tuning")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="ResRep / C-SGD: epochs of the budget spent fine-tuning after conversion (paper: 0)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--base-lr", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=0.01, help="peak LR of every pruning run (cosine to 0)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--lasso", type=float, default=1e-4, help="ResRep lasso (published 1e-4)")
    p.add_argument("--granularity", type=int, default=None,
                   help="ResRep channels per mask update (default: derived, the published 4 while that suffices)")
    p.add_argument("--mask-interval", type=int, default=None,
                   help="ResRep iterations between mask updates (default: derived from the schedule; published 200)")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="ResRep epochs before the first mask update")
    p.add_argument("--centripetal-strength", type=float, default=CSGDConfig().centripetal_strength,
                   help="C-SGD eps (published 3e-3)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods at 0.5x MACs")
    p.add_argument("--latency-methods", nargs="*", default=["magnitude"], choices=METHODS,
                   help="methods also run at --latency-target (none: no latency rows)")
    p.add_argument("--latency-target", default="0.6x", help="measured-latency target of the latency rows")
    p.add_argument("--runtime", default="eager", help="runtime of every latency measurement (dscnn.runtimes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training (latency: always 1 thread)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "repnas_pruning_cifar10"),
                   help="where the trained and pruned checkpoints go (not committed)")
    p.add_argument("--out", default="benchmarks/results/pruning_cifar10.json")
    p.add_argument("--resume", action="store_true", help="keep the rows in --out made with the same settings")
    p.add_argument("--markdown", action="store_true", help="only print the rows of --out as a markdown table")
    args = p.parse_args(argv)
    if not 0 <= args.finetune_epochs < args.budget_epochs:
        p.error("--finetune-epochs must be in [0, --budget-epochs)")
    try:  # an unknown or unavailable runtime fails here, not as MISSED rows after the base training
        from dscnn.latency import LatencySettings
        from dscnn.runtimes import check_runtime

        check_runtime(LatencySettings(runtime=args.runtime))
    except ValueError as exc:
        p.error(str(exc))
    if args.markdown and not Path(args.out).is_file():
        p.error(f"--markdown: no results file {args.out!r} (give --out)")
    return args


def data_config(args: argparse.Namespace, seed: int) -> DataConfig:
    return DataConfig("cifar10", args.data_dir, args.train_per_class, args.val_per_class, seed=seed)


def trained_base(label: str, seed: int, args: argparse.Namespace, data: ImageDataset) -> Path:
    """The trained unpruned model of ``seed``: reused from ``--work-dir`` when trained with the same settings."""
    name, overrides, _ = MODELS[label]
    config = TrainConfig(epochs=args.base_epochs, batch_size=args.batch_size, lr=args.base_lr, device=args.device,
                         warmup_epochs=1.0, seed=seed)
    key = json.dumps([name, overrides, args.train_per_class, args.val_per_class, args.data_dir, repr(config)],
                     default=str)
    path = Path(args.work_dir) / f"{label}_seed{seed}.pt"
    if path.is_file() and dscnn.load_checkpoint(path)[1].extra.get("bench_key") == key:
        return path
    torch.manual_seed(seed)
    model = dscnn.create_model(name, num_classes=10, resolution=32, **overrides)
    train_and_evaluate(model, data, config, progress=False)
    return dscnn.save_checkpoint(path, model.cpu(), extra={"bench_key": key})


def algorithm(method: str, label: str, args: argparse.Namespace) -> PruningAlgorithm:
    if method == "resrep":
        return ResRep(ResRepConfig(lasso=args.lasso, mask_interval=args.mask_interval, granularity=args.granularity,
                                   warmup_epochs=args.warmup_epochs, groups=MODELS[label][2]))
    if method == "csgd":
        return CSGD(CSGDConfig(centripetal_strength=args.centripetal_strength))
    return Magnitude()


def run_row(method: str, label: str, seed: int, ckpt: Path, args: argparse.Namespace,
            latency_target: str | None) -> dict[str, Any]:
    """One pruning run through the shared driver at equal budget; a missed latency target is a row too."""
    regularised = 1 if method == "magnitude" else args.budget_epochs - args.finetune_epochs  # magnitude: unused
    finetune = args.budget_epochs if method == "magnitude" else args.finetune_epochs
    tag = "macs" if latency_target is None else "latency"
    run = RunConfig(
        target="" if latency_target else MACS_TARGET, target_latency=latency_target, data=data_config(args, seed),
        train=TrainConfig(epochs=regularised, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                          device=args.device, seed=seed),
        finetune_epochs=finetune, out=str(Path(args.work_dir) / f"{label}_seed{seed}_{method}_{tag}.pt"),
        device_lock=TIMING_LOCK, progress=False, latency_runtime=args.runtime,
    )
    t0 = time.perf_counter()
    budget = {"regularised_epochs": 0 if method == "magnitude" else regularised, "finetune_epochs": finetune}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, report = run_pruning(algorithm(method, label, args), run, checkpoint=str(ckpt))
    except (TargetMissed, PruningError) as exc:  # a miss, or a target the method cannot reach: a row either way
        kind = "missed" if isinstance(exc, TargetMissed) else "error"
        return {"method": method, "target": latency_target or MACS_TARGET, kind: str(exc), **budget,
                "seconds": round(time.perf_counter() - t0, 1)}
    return {**row_of(report), **budget, "seconds": round(time.perf_counter() - t0, 1),
            "warnings": sorted({str(w.message)[:300] for w in caught})}


def row_of(report: PruneReport) -> dict[str, Any]:
    facts = ("max_removed_row_norm", "forced_final_mask", "mask_schedule", "mask_updates", "keep_ratio",
             "max_cluster_distance", "max_cluster_distance_relative", "merge_relative_error", "max_removed_importance",
             "min_kept_importance", "snapped_widths", "where_macs_went")
    latency = report.latency or {}
    return {
        "method": report.method, "target": report.target,
        "accuracy": report.after.accuracy, "accuracy_before_conversion": report.accuracy_before_prune,
        "accuracy_after_conversion": report.accuracy_after_prune,
        "macs": report.after.macs, "params": report.after.params,
        "latency_ms": report.after.latency_ms, "latency_noisy": report.after.latency_noisy,
        "unpruned": {"accuracy": report.before.accuracy, "macs": report.before.macs, "params": report.before.params,
                     "latency_ms": report.before.latency_ms, "latency_noisy": report.before.latency_noisy},
        "latency_change": report.latency_change,
        "latency_target": {k: latency[k] for k in ("target_ms", "predicted_ms", "met", "where_latency_went")
                           if k in latency} or None,
        "latency_records": {k: latency[k] for k in ("before", "after") if k in latency},
        "widths": {k: list(v) for k, v in report.widths.items() if v[0] != v[1]},
        "algorithm": {k: report.algorithm[k] for k in facts if k in report.algorithm},
    }


def row_key(label: str, seed: int, method: str, tag: str) -> str:
    return f"{label}/seed{seed}/{method}@{tag}"


def print_table(rows: dict[str, dict[str, Any]], console: Console) -> None:
    table = Table(title=f"CIFAR-10 pruning at equal budget ({MACS_TARGET} MACs; latency rows: measured latency)")
    for column in ("run", "top-1 before conv.", "after conv.", "final top-1", "MACs", "params", "CPU ms",
                   "unpruned top-1 / ms"):
        table.add_column(column, justify="right")
    for key, r in rows.items():
        if "missed" in r or "error" in r:
            table.add_row(key, "-", "-", "MISSED" if "missed" in r else "ERROR", "-", "-", "-",
                          (r.get("missed") or r["error"])[:60])
            continue
        u = r["unpruned"]
        ms = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.3f}" + (" noisy" if r["latency_noisy"] else "")
        ums = "-" if u["latency_ms"] is None else f"{u['latency_ms']:.3f}"
        table.add_row(key, _pct(r["accuracy_before_conversion"]), _pct(r["accuracy_after_conversion"]),
                      _pct(r["accuracy"]), format_macs(r["macs"]), f"{r['params']:,}", ms,
                      f"{_pct(u['accuracy'])} / {ums}")
    console.print(table)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def markdown(rows: dict[str, dict[str, Any]]) -> str:
    """One line per row, then per (model, method, target) the mean over the seeds."""
    lines = ["| run | top-1 before conversion | right after | final top-1 | MACs | params | CPU ms (unpruned) |",
             "|---|---|---|---|---|---|---|"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for key, r in rows.items():
        label, seed, run = key.split("/")
        if "missed" in r or "error" in r:
            what = f"target missed: {r['missed'][:120]}" if "missed" in r else f"error: {r['error'][:120]}"
            lines.append(f"| {key} | - | - | {what} | - | - | - |")
            continue
        groups.setdefault(f"{label}/{run}", []).append(r)
        groups.setdefault(f"{label}/unpruned", []).append({**r["unpruned"], "seed": seed})
        u = r["unpruned"]
        ms = _ms(r["latency_ms"], r["latency_noisy"])
        lines.append(f"| {key} | {_pct(r['accuracy_before_conversion'])} | {_pct(r['accuracy_after_conversion'])} | "
                     f"{_pct(r['accuracy'])} (unpruned {_pct(u['accuracy'])}) | {format_macs(r['macs'])} | "
                     f"{r['params']:,} | {ms} ({_ms(u['latency_ms'], u['latency_noisy'])}) |")
    lines += ["", "| model / row | seeds | mean top-1 | per seed |", "|---|---|---|---|"]
    for name, rs in groups.items():
        if name.endswith("/unpruned"):  # one unpruned model per seed, repeated in every row of that seed
            rs = list({r["seed"]: r for r in rs}.values())
        accs = [r["accuracy"] for r in rs]
        lines.append(f"| {name} | {len(accs)} | {sum(accs) / len(accs):.4f} | {', '.join(f'{a:.4f}' for a in accs)} |")
    return "\n".join(lines)


def _ms(value: float | None, noisy: bool | None) -> str:
    return "-" if value is None else f"{value:.3f}" + (" busy/noisy" if noisy else "")


def kept_rows(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    if not args.resume or not out.is_file():
        return {}
    record = json.loads(out.read_text())
    differ = [k for k in SHARED_SETTINGS if record.get("settings", {}).get(k) != getattr(args, k)]
    if differ:
        raise SystemExit(f"{out} was made with other settings ({', '.join(differ)}): drop --resume or use --out")
    rows = {k: r for k, r in record.get("rows", {}).items() if "error" not in r}  # an error is retried
    if "earlier_commands" not in record:  # rows from before per-row provenance, all made by the file's one run
        for r in rows.values():
            r.setdefault("provenance", {k: record.get(k) for k in ("command", "environment")})
    return rows


def provenance(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    """What this run measures with: stamped on every row it adds (a later --resume stamps its own)."""
    return {"command": " ".join([sys.executable, *(sys.argv if argv is None else [__file__, *argv])]),
            "git": git_revision(Path(__file__).resolve().parent), "environment": environment(args.device, args.threads),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def load_now() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.out).read_text())["rows"]))
        return 0
    torch.set_num_threads(args.threads)
    console = Console(width=170)
    rows = kept_rows(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start, load_start = time.perf_counter(), load_now()
    this_run = provenance(args, argv)
    record: dict[str, Any] = {
        "benchmark": "pruning_cifar10", "command": this_run["command"], "git": this_run["git"], "settings": vars(args),
        "macs_target": MACS_TARGET, "split": "validation = CIFAR-10 test folder subset (nothing selected on it)",
        "scaled": {
            "mask_interval": "derived from the schedule (pruning.resrep.schedule) unless given: the published 200 "
                             "iterations x 4 channels cannot reach the target within this budget",
            "warmup_epochs": f"{args.warmup_epochs} (paper: 5 of 480 epochs, about 1% of the schedule)",
        },
        "environment": this_run["environment"], "load_average_start": load_start,
        "convention": "FLOPs = fvcore MACs of the deploy form, batch 1",
    }
    if rows:  # --resume: the earlier runs' commands (and any rows set aside) stay in the record
        earlier = json.loads(out.read_text())
        record["earlier_commands"] = [*earlier.get("earlier_commands", []), earlier.get("command")]
        record |= {k: earlier[k] for k in ("superseded",) if k in earlier}

    def save() -> None:
        record.update(rows=rows, minutes=round((time.perf_counter() - start) / 60, 1), load_average_end=load_now())
        out.write_text(json.dumps(record, indent=2, default=str))

    for label in args.models:
        for seed in args.seeds:
            plan = [(m, None) for m in args.methods] + [(m, args.latency_target) for m in args.latency_methods]
            todo = [(m, t) for m, t in plan if row_key(label, seed, m, "macs" if t is None else "latency") not in rows]
            if not todo:
                continue
            data = load_dataset(data_config(args, seed))
            t0 = time.perf_counter()
            ckpt = trained_base(label, seed, args, data)
            console.log(f"{label} seed {seed}: base model ready ({time.perf_counter() - t0:.0f} s)")
            for method, target in todo:
                key = row_key(label, seed, method, "macs" if target is None else "latency")
                rows[key] = {**run_row(method, label, seed, ckpt, args, target), "provenance": this_run}
                r = rows[key]
                console.log(f"{key}: " + (f"MISSED {r['missed']}" if "missed" in r else
                                          f"ERROR {r['error']}" if "error" in r else
                                          f"top-1 {r['accuracy']:.4f} (before conversion "
                                          f"{_pct(r['accuracy_before_conversion'])}), {format_macs(r['macs'])} MACs, "
                                          f"{r['seconds']:.0f} s"))
                save()
    save()
    print_table(rows, console)
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

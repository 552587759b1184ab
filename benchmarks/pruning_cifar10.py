"""CIFAR-10 pruning benchmark: ResRep vs C-SGD vs Torch-Pruning L1 magnitude pruning + fine-tuning, ~50% FLOPs.

For each model (ResNet-56 and a small DSCNN): train it from scratch, then prune its deploy form to
half its FLOPs (a) with ResRep (`pruning.resrep`, its compactor training counts as the epoch
budget), (b) with C-SGD (`pruning.csgd`, its centripetal training counts as the epoch budget) and
(c) with Torch-Pruning's L1 `MagnitudePruner` (one uniform per-layer ratio, bisected so the FLOPs
land at the same target) followed by plain fine-tuning for the same number of epochs (all three
train the deploy graph with BN re-inserted, `pruning.retrain`).
Reports top-1, deploy FLOPs (fvcore MACs, batch 1), deploy params and CPU batch-1 latency (1
thread, docs/design.md section 4 protocol) for unpruned / ResRep / C-SGD / magnitude, as a table and as JSON.

Scale (the default fits well under 40 minutes on 2 idle cores; docs/design.md section 8: one full CIFAR-10 epoch of
ResNet-56 takes ~7 minutes there): a class-balanced subset (default 200 train + 100 val images per
class), 10 epochs of base training and a pruning budget of 6 epochs. Accuracies are far below published
full-schedule numbers (ResNet-56: 93.7%); the comparison between methods at equal budget is the
point. ResRep's lasso strength is scaled to the short schedule (the paper's 1e-4 assumes hundreds
of epochs: with compactor momentum 0.99 a masked row shrinks by about 100*lr*lasso per step), and
so is C-SGD's centripetal strength (`csgd_strength`: the paper's 3e-3 (docs/design.md section 6) would leave the clusters
unmerged after a few hundred steps, and merging them would then be lossy).

``--methods`` runs a subset; the trained unpruned models are reused from ``--work-dir`` and the
other methods' results from ``--out`` when their settings match, e.g. to add C-SGD to a table:

    python benchmarks/pruning_cifar10.py --data-dir /work/shared/data/cifar10 --methods csgd

    python benchmarks/pruning_cifar10.py --data-dir /work/shared/data/cifar10
    python benchmarks/pruning_cifar10.py --train-per-class 5000 --val-per-class 1000 --base-epochs 60 \
        --prune-epochs 30 --device cuda                     # full data on a GPU
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from rich.console import Console
from rich.table import Table
from torch import nn

import dscnn
from dscnn.data import DataConfig, ImageDataset, load_dataset
from dscnn.environment import environment
from dscnn.train import TrainConfig, evaluate_accuracy, train_and_evaluate
from dscnn.units import format_macs
from pruning.csgd import CSGD, VECTOR_FACTOR, CSGDConfig
from pruning.groups import find_groups
from pruning.macs import CostModel
from pruning.resrep import ResRep, ResRepConfig
from pruning.resrep.masking import update_masks
from pruning.retrain import train_deploy
from pruning.run import RunConfig, run_pruning
from pruning.targets import parse_target

#: label -> (registry model, overrides at 32x32 / 10 classes)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "resnet56": ("resnet56", {}),
    # stem stride 2 at 32x32: stage 1 at 16x16 (the train form's 7-branch RepASO is costly at full size)
    "dscnn_small": ("dscnn_t0", {"widths": (24, 48, 96, 192), "depths": (1, 2, 4, 1), "head_dim": 512, "stem_stride": 2}),
}
TARGET = "0.5x"
METHODS = ("resrep", "csgd", "magnitude")
#: Settings every method's result depends on: results are merged into --out only when these match.
SHARED_SETTINGS = ("train_per_class", "val_per_class", "base_epochs", "prune_epochs", "batch_size", "base_lr", "lr",
                   "device")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("REPNAS_DATA"), help="CIFAR-10 folder (default $REPNAS_DATA)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--train-per-class", type=int, default=200)
    p.add_argument("--val-per-class", type=int, default=100)
    p.add_argument("--base-epochs", type=int, default=10, help="training of the unpruned model")
    p.add_argument("--prune-epochs", type=int, default=6, help="ResRep = C-SGD = magnitude fine-tune epochs")
    p.add_argument("--batch-size", type=int, default=32, help="small batches: more steps for the compactors")
    p.add_argument("--base-lr", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=0.01, help="LR of ResRep training and of the fine-tuning")
    p.add_argument("--lasso", type=float, default=1e-2, help="ResRep lasso (scaled to the short schedule)")
    p.add_argument("--mask-interval", type=int, default=10)
    p.add_argument("--centripetal-strength", type=float, default=None,
                   help="C-SGD eps (default: scaled to the schedule, see csgd_strength)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="methods to run; the others' results are kept from --out")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training (latency: 1 thread)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "repnas_pruning_cifar10"),
                   help="where the trained and pruned checkpoints go (not committed)")
    p.add_argument("--out", default="benchmarks/results/pruning_cifar10.json")
    return p.parse_args(argv)


def stats(model: nn.Module, data: ImageDataset, train: TrainConfig, elapsed_s: float) -> dict[str, Any]:
    """Deploy params, MACs, CPU latency and top-1 of a deploy-form model."""
    model = model.cpu().eval()
    cost = dscnn.measure_deploy_cost(model, dscnn.LatencySettings(resolution=32), to_deploy=lambda m: m)
    accuracy = evaluate_accuracy(model, data, train)
    model.cpu()
    return {"accuracy": accuracy, "macs": cost.macs, "params": cost.params_deploy, "latency_ms": cost.latency_ms,
            "seconds": round(elapsed_s, 1)}


def resrep_granularity(deploy: nn.Module, epochs: int, steps_per_epoch: int, interval: int) -> int:
    """Channels per mask update so that the masks surely reach the target by 60% of ResRep's training.

    The count is bounded by masking the channels that save the fewest MACs first (the worst order).
    """
    example = torch.zeros(1, 3, 32, 32)
    groups = find_groups(deploy, example).groups
    cost = CostModel(deploy, groups, example)
    saving = {g.root: torch.full((g.size,), float(cost.total_macs - cost.macs({g.root: [0]}))) for g in groups}
    none = {g.root: torch.zeros(g.size, dtype=torch.bool) for g in groups}
    needed = update_masks(saving, none, cost, 0.5 * cost.total_macs, None).count
    updates = max(1, int((0.6 * epochs - 1) * steps_per_epoch) // interval)  # after a one-epoch warm-up
    return max(4, math.ceil(needed / updates))


def csgd_strength(lr: float, total_steps: int, momentum: float = 0.9, shrink: float = 1e-4) -> float:
    """C-SGD eps under which a cluster's spread shrinks by ``shrink`` even on vectors (pulled at 0.1 eps).

    With the task gradients averaged, a difference D between two members of a cluster decays as
    ``D' = D - lr * eps * D``, amplified by momentum to ``lr * eps / (1 - momentum)`` per step; the
    cosine schedule sums the LR to ``lr * steps / 2``. Capped at ``0.1 / lr``: a kernel pull of
    ``lr * eps`` per step must stay well inside momentum SGD's stable range (about 1.4 with Nesterov).
    """
    return min(math.log(1 / shrink) * (1 - momentum) / (VECTOR_FACTOR * lr * total_steps / 2), 0.1 / lr)


def magnitude_prune(deploy: nn.Module, target_macs: float) -> tuple[nn.Module, float]:
    """Torch-Pruning L1 magnitude pruning at the smallest uniform ratio whose FLOPs meet the target."""
    example = torch.zeros(1, 3, 32, 32)

    def pruned_at(ratio: float) -> nn.Module:
        model = copy.deepcopy(deploy)
        classifier = model.get_classifier()
        pruner = tp.pruner.MagnitudePruner(
            model, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
            ignored_layers=[classifier],
        )
        pruner.step()
        return model

    low, high = 0.0, 0.95
    for _ in range(12):  # bisection on the ratio: FLOPs fall as it grows
        mid = (low + high) / 2
        if dscnn.count_macs(pruned_at(mid), 32) <= target_macs:
            high = mid
        else:
            low = mid
    return pruned_at(high), high


def trained_base(
    label: str, args: argparse.Namespace, data: ImageDataset, config: TrainConfig
) -> tuple[nn.Module, Path]:
    """The trained unpruned model: reused from ``--work-dir`` when trained with the same settings."""
    name, overrides = MODELS[label]
    key = json.dumps([name, overrides, args.train_per_class, args.val_per_class, repr(config)], default=str)
    path = Path(args.work_dir) / f"{label}.pt"
    if path.is_file():
        model, info = dscnn.load_checkpoint(path)
        if info.extra.get("bench_key") == key:
            return model, path
    torch.manual_seed(0)
    model = dscnn.create_model(name, num_classes=10, resolution=32, **overrides)
    train_and_evaluate(model, data, config, progress=True)
    return model.cpu(), dscnn.save_checkpoint(path, model.cpu(), extra={"bench_key": key})


def bench_model(
    label: str, args: argparse.Namespace, data: ImageDataset, console: Console, previous: dict[str, Any]
) -> dict[str, Any]:
    """Unpruned stats plus one entry per method run now; ``previous`` supplies the methods not run."""
    name, overrides = MODELS[label]
    base_cfg = TrainConfig(epochs=args.base_epochs, batch_size=args.batch_size, lr=args.base_lr, device=args.device,
                           warmup_epochs=1.0)
    prune_cfg = TrainConfig(epochs=args.prune_epochs, batch_size=args.batch_size, lr=args.lr, momentum=0.9,
                            weight_decay=1e-4, device=args.device)
    t0 = time.perf_counter()
    model, ckpt = trained_base(label, args, data, base_cfg)
    deploy = dscnn.deploy_copy(model)
    unpruned = stats(deploy, data, prune_cfg, time.perf_counter() - t0)
    console.log(f"{label}: unpruned top-1 {unpruned['accuracy']:.4f}, {format_macs(unpruned['macs'])} MACs")
    if previous and previous["unpruned"]["accuracy"] != unpruned["accuracy"]:
        raise SystemExit(f"{label}: the unpruned model in {args.work_dir} is not the one of the kept results; "
                         "run every method (--methods resrep csgd magnitude)")
    target_macs = parse_target(TARGET).resolve(dscnn.count_macs(deploy, 32))
    # kept results keep the unpruned stats measured beside them (same model: same accuracy, checked above)
    result = {"unpruned": unpruned, **previous, "model": name, "overrides": overrides, "target_macs": target_macs}
    for method in args.methods:
        t0 = time.perf_counter()
        if method == "magnitude":
            result[method] = run_magnitude(deploy, target_macs, data, prune_cfg)
        else:
            result[method] = run_algorithm(method, label, ckpt, deploy, args, data, prune_cfg)
        result[method]["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def run_algorithm(
    method: str, label: str, ckpt: Path, deploy: nn.Module, args: argparse.Namespace, data: ImageDataset,
    prune_cfg: TrainConfig,
) -> dict[str, Any]:
    """ResRep or C-SGD through the shared driver, from the trained checkpoint."""
    steps = max(1, len(data.train_labels) // args.batch_size)
    run = RunConfig(
        target=TARGET, data=DataConfig("cifar10", args.data_dir, args.train_per_class, args.val_per_class),
        train=TrainConfig(epochs=args.prune_epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=1e-4,
                          device=args.device),
        out=str(Path(args.work_dir) / f"{label}_{method}.pt"),
    )
    if method == "resrep":
        granularity = resrep_granularity(deploy, args.prune_epochs, steps, args.mask_interval)
        config = ResRepConfig(lasso=args.lasso, mask_interval=args.mask_interval, granularity=granularity,
                              warmup_epochs=1.0)
        _, report = run_pruning(ResRep(config), run, checkpoint=str(ckpt))
        facts = {key: report.algorithm[key] for key in ("max_removed_row_norm", "forced_final_mask")}
        facts.update(granularity=granularity, lasso=args.lasso, mask_interval=args.mask_interval)
    else:
        strength = args.centripetal_strength or csgd_strength(args.lr, args.prune_epochs * steps)
        _, report = run_pruning(CSGD(CSGDConfig(centripetal_strength=strength)), run, checkpoint=str(ckpt))
        keys = ("keep_ratio", "initial_max_cluster_distance", "max_cluster_distance", "max_cluster_distance_relative",
                "merge_relative_error")
        facts = {key: report.algorithm[key] for key in keys}
        facts.update(centripetal_strength=strength)
    result = stats(dscnn.load_checkpoint(report.output)[0], data, prune_cfg, 0.0)
    return {**result, "accuracy_before_conversion": report.accuracy_before_prune,
            "accuracy_right_after_prune": report.accuracy_after_prune, **facts}


def run_magnitude(deploy: nn.Module, target_macs: float, data: ImageDataset, prune_cfg: TrainConfig) -> dict[str, Any]:
    """L1 magnitude pruning to the target, then plain fine-tuning for the same epochs."""
    pruned, ratio = magnitude_prune(deploy, target_macs)
    right_after = evaluate_accuracy(pruned, data, prune_cfg)
    train_deploy(pruned, data, prune_cfg, progress=True)  # BN put back while training, as for ResRep
    result = stats(pruned, data, prune_cfg, 0.0)
    return {**result, "accuracy_right_after_prune": right_after, "pruning_ratio": round(ratio, 4)}


def print_table(results: dict[str, Any], console: Console) -> None:
    table = Table(title=f"CIFAR-10 pruning to {TARGET} FLOPs (fvcore MACs of the deploy form, batch 1)")
    for column in ("model", "method", "top-1", "FLOPs", "params", "CPU ms (b1, 1 thr)", "top-1 before fine-tune"):
        table.add_column(column, justify="right")
    for label, result in results.items():
        for method in ("unpruned", *(m for m in METHODS if m in result)):
            r = result[method]
            after = r.get("accuracy_right_after_prune")
            table.add_row(label, method, f"{r['accuracy']:.4f}", format_macs(r["macs"]), f"{r['params']:,}",
                          f"{r['latency_ms']:.3f}", "-" if after is None else f"{after:.4f}")
    console.print(table)


def previous_record(args: argparse.Namespace) -> dict[str, Any]:
    """The record in ``--out`` whose results the methods not run now keep, if any."""
    out = Path(args.out)
    if set(args.methods) == set(METHODS) or not out.is_file():
        return {}
    record = json.loads(out.read_text())
    differ = [k for k in SHARED_SETTINGS if record.get("settings", {}).get(k) != getattr(args, k)]
    if differ:
        raise SystemExit(f"{out} was made with other settings ({', '.join(differ)}): run every method, or use --out")
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console()
    kept = previous_record(args)
    previous = kept.get("results", {})
    data = load_dataset(DataConfig("cifar10", args.data_dir, args.train_per_class, args.val_per_class))
    start = time.perf_counter()
    results = {label: bench_model(label, args, data, console, previous.get(label, {})) for label in args.models}
    results = {**previous, **results}
    print_table(results, console)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    minutes = round((time.perf_counter() - start) / 60, 1)
    earlier = kept.get("runs") or ([{"methods": kept["settings"].get("methods", list(METHODS)),
                                     "total_minutes": kept.get("total_minutes")}] if kept else [])
    record = {
        "benchmark": "pruning_cifar10", "target": TARGET, "settings": vars(args), "results": results,
        "total_minutes": minutes, "runs": [*earlier, {"methods": args.methods, "total_minutes": minutes}],
        "environment": environment("cpu", 1), "convention": "FLOPs = fvcore MACs of the deploy form, batch 1",
    }
    out.write_text(json.dumps(record, indent=2, default=str))
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One pruning run, for any `pruning.algorithm.PruningAlgorithm`: load, fuse, measure, train with the
algorithm's regularizer, prune, fine-tune, measure again, write the model and its report.

Training (with the regularizer, and the fine-tuning) runs on the deploy graph with its BatchNorms
temporarily re-inserted (`pruning.retrain`): the fused graph alone is too ill-conditioned for SGD.

Nothing is written until the pruned model has been checked (numerically, by the algorithm) and
meets the FLOPs target; any bad input (target, output paths, checkpoint, data) is a `PruningError`
(or the checkpoint's / data's own ValueError) before training. The model and its report are
written as one unit (`pruning.outputs`). The latencies before and after are taken at the end, in
one interleaved run under the device lock (`pruning.timing`), so that their difference means
something.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from torch import nn

from dscnn.complexity import count_macs, count_params
from dscnn.data import DataConfig, ImageDataset, load_dataset
from dscnn.latency import LatencySettings
from dscnn.runtimes import check_runtime, validate_runtime_name
from dscnn.train import TrainConfig, evaluate_accuracy
from dscnn.units import format_macs
from pruning.algorithm import PruningAlgorithm, PruningError, TargetMissed
from pruning.calibration import ROUNDS, Calibration, calibrate_budget
from pruning.groups import ChannelGroup, find_groups
from pruning.latency_plan import LatencyPlan, load_plan, plan_key, save_plan
from pruning.latency_table import UNTRUSTED_RETRIES, build_table, harness
from pruning.macs import CostModel
from pruning.outputs import check_output_paths, write_together
from pruning.report import ModelStats, PruneReport, layer_widths
from pruning.retrain import train_deploy
from pruning.source import ModelSource, load_source
from pruning.target_cost import target_cost
from pruning.targets import LatencyTarget, parse_latency_target, parse_target
from pruning.timing import compare_latency

if TYPE_CHECKING:
    from searchspace.device_lock import DeviceLock


def _retrain_recipe() -> TrainConfig:
    # training starts from a trained model: a lower peak LR and weight decay than from scratch
    return TrainConfig(epochs=10, batch_size=64, lr=0.01, weight_decay=1e-4, device="auto")  # as search.py


@dataclass(frozen=True)
class RunConfig:
    """Everything about a pruning run that is not the algorithm's own knobs."""

    target: str  # FLOPs target: "0.3G", "300M" (deploy MACs) or "0.5x" (of the current MACs); "" with target_latency
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=_retrain_recipe)  # epochs = training with the regularizer
    finetune_epochs: int = 0  # plain training of the pruned model afterwards (same recipe otherwise)
    out: str | None = None  # pruned model path; None = "<checkpoint>_<method>.pt" beside the input
    time_latency: bool = True  # CPU batch-1 latency before and after (docs/design.md section 4 protocol)
    latency_threads: int = 1
    device_lock: str | None = None  # the machine-wide lock held while timing; None = $REPNAS_DEVICE_LOCK or default
    progress: bool = True  # progress bars while training
    target_latency: str | None = None  # instead of ``target``: "3ms" or "0.5x" of the measured latency
    latency_runtime: str = "eager"  # dscnn.runtimes name the latency table and the before/after timings run in
    latency_device: str = "cpu"  # where they run: "cpu" or "cuda" (a GPU budget, e.g. runtime cudagraph)
    calibration_rounds: int = ROUNDS  # latency target: whole-model timings correcting the table's budget; 0 = none
    latency_plan: str | None = None  # latency target: a file that stores the table and budget for later runs to share

    def __post_init__(self) -> None:
        if self.finetune_epochs < 0:
            raise PruningError(f"finetune_epochs must be >= 0, got {self.finetune_epochs}")
        if self.calibration_rounds < 0:
            raise PruningError(f"calibration_rounds must be >= 0, got {self.calibration_rounds}")
        if not math.isfinite(self.train.lr):
            raise PruningError(f"lr must be a finite number > 0, got {self.train.lr}")
        if bool(self.target) == (self.target_latency is not None):
            raise PruningError("give exactly one of --target-flops and --target-latency")
        if self.target_latency is not None and not self.time_latency:
            raise PruningError("--target-latency needs the latency measurements: drop --no-latency")
        try:
            validate_runtime_name(self.latency_runtime)
        except ValueError as exc:
            raise PruningError(str(exc)) from None

    def latency_settings(self, resolution: int) -> LatencySettings:
        """What every timing of the run uses: the latency table, the snapping, before and after."""
        return LatencySettings(device=self.latency_device, resolution=resolution, threads=self.latency_threads,
                               runtime=self.latency_runtime)

    def train_config(self, resolution: int, epochs: int) -> TrainConfig:
        return dataclasses.replace(self.train, resolution=resolution, epochs=epochs)


def run_pruning(
    algorithm: PruningAlgorithm,
    config: RunConfig,
    *,
    checkpoint: str | None = None,
    torchvision_model: str | None = None,
    console: Console | None = None,
) -> tuple[nn.Module, PruneReport]:
    """Prune the model in ``checkpoint`` (or torchvision ``torchvision_model``) to ``config.target``."""
    console = console or Console(stderr=True, quiet=not config.progress)
    latency_target = parse_latency_target(config.target_latency) if config.target_latency is not None else None
    if latency_target is None:
        parse_target(config.target)  # a malformed target fails before anything else
    out = _output_path(config, checkpoint, torchvision_model, algorithm.name)
    report_path = out.with_suffix(".json")
    check_output_paths([("--out", out), ("report", report_path)])
    if config.time_latency:  # an unknown or unavailable runtime fails now, in one line, before any work
        _check_runtime(config)
    lock = _device_lock(config) if config.time_latency else None
    source, data, target_macs = _load(config, checkpoint, torchvision_model)
    target_ms: float | None = None
    resolution = source.resolution or data.resolution
    train = config.train_config(resolution, config.train.epochs)
    settings = config.latency_settings(resolution)

    model = source.model
    before = _stats(model, data, train, resolution)
    unpruned = copy.deepcopy(model) if config.time_latency else None  # prepare() rewires ``model`` in place
    widths_before = layer_widths(model)
    console.log(f"{source.label}: {format_macs(before.macs)} MACs, top-1 {before.accuracy:.4f}; "
                f"target {format_macs(target_macs)}")

    example = torch.zeros(1, 3, resolution, resolution)
    groups = find_groups(model, example).groups
    macs_cost = CostModel(model, groups, example)  # of the unpruned model: where the MACs went, for the report
    table = None
    calibration: Calibration | None = None
    if latency_target is not None:
        assert lock is not None
        if not hasattr(algorithm, "latency_table"):
            raise PruningError(f"{algorithm.name} has no latency target")
        plan_path = Path(config.latency_plan) if config.latency_plan else None
        key = plan_key(source.label, {g.root: g.size for g in groups}, settings.to_dict(), str(config.target_latency),
                       config.calibration_rounds)
        plan = load_plan(plan_path, key, macs_cost) if plan_path is not None else None
        if plan is not None:
            console.log(f"latency plan read from {plan_path} (measured once for every run of this model and target)")
            target_cost(model, groups, example, plan.table, plan.target_ms)  # a target below one channel: refused
        else:
            plan = _measure_plan(model, groups, example, settings, latency_target, config, lock, console, plan_path, key)
        table, target_ms, target_macs, calibration = plan.table, plan.target_ms, plan.budget_ms, plan.calibration
        # the algorithms' cost is then the predicted latency (`pruning.latency_table`)
        algorithm.latency_table = table
        algorithm.latency_measure = harness(settings, lock)  # type: ignore[attr-defined]
    steps_per_epoch = max(1, len(data.train_labels) // train.batch_size)
    work = algorithm.prepare(model, target_macs, example, steps_per_epoch, epochs=train.epochs)
    regularized = getattr(algorithm, "regularized", True)
    if regularized:  # magnitude pruning has no regularised training
        train_deploy(
            work, data, train, param_groups=algorithm.param_groups, after_backward=algorithm.regularize,
            progress=config.progress,
        )
    accuracy_before_prune = evaluate_accuracy(work, data, train)  # the trained model, before conversion
    pruned = algorithm.prune(work)
    accuracy_after_prune = evaluate_accuracy(pruned, data, train)
    if config.finetune_epochs:
        train_deploy(pruned, data, config.train_config(resolution, config.finetune_epochs), progress=config.progress)
    pruned = pruned.cpu().eval()
    after = _stats(pruned, data, train, resolution)
    if target_ms is None and after.macs > target_macs:  # the algorithm's promise; never write a model that breaks it
        raise RuntimeError(f"{algorithm.name}: pruned model has {after.macs} MACs, above the target {target_macs:.0f}")
    latency: dict[str, Any] | None = None
    if unpruned is not None:
        console.log("timing the unpruned and the pruned model, interleaved, under the device lock")
        timed = compare_latency(unpruned, pruned, settings, lock)
        before = dataclasses.replace(before, latency_ms=timed.before.median_ms, latency_noisy=timed.before.noisy)
        after = dataclasses.replace(after, latency_ms=timed.after.median_ms, latency_noisy=timed.after.noisy)
        latency = {"before": timed.before.to_dict(), "after": timed.after.to_dict()}
        if target_ms is not None and table is not None:
            latency |= {"target_ms": target_ms, "predicted_ms": table.predict(_group_widths(algorithm)),
                        "met": timed.after.median_ms <= target_ms, "table": table.to_dict(),
                        "calibration": calibration.to_dict() if calibration is not None else None,
                        "where_latency_went": table.where_latency_went(_group_widths(algorithm))}
            if timed.after.median_ms > target_ms:
                raise TargetMissed(
                    f"{algorithm.name}: the pruned model runs in {timed.after.median_ms:.4g} ms (measured), above the "
                    f"latency target {target_ms:.4g} ms (predicted {latency['predicted_ms']:.4g} ms); nothing written"
                )

    widths_after = layer_widths(pruned)
    summary = {**algorithm.summary(), "where_macs_went": _where_macs_went(macs_cost, _group_widths(algorithm))}
    report = PruneReport(
        method=algorithm.name, source=source.label, target=config.target or str(config.target_latency),
        target_macs=target_macs if target_ms is None else float(before.macs),
        before=before, after=after, accuracy_after_prune=accuracy_after_prune,
        accuracy_before_prune=accuracy_before_prune,
        widths={k: (v, widths_after.get(k, 0)) for k, v in widths_before.items()},
        algorithm=summary, settings=_settings(config, regularized), resolution=resolution,
        epochs={"regularized": config.train.epochs if regularized else 0, "finetune": config.finetune_epochs},
        latency_settings=settings.to_dict() if config.time_latency else None, output=str(out), latency=latency,
    )
    metrics = _metrics(report)
    write_together([(out, lambda path: source.save(path, pruned, metrics)), (report_path, report.write_json)])
    return pruned, report


def _measure_plan(model: nn.Module, groups: tuple[ChannelGroup, ...], example: torch.Tensor, settings: LatencySettings,
                  latency_target: LatencyTarget, config: RunConfig, lock: DeviceLock, console: Console,
                  path: Path | None, key: dict[str, Any]) -> LatencyPlan:
    """The latency table, the target in ms and the calibrated budget, measured under the device lock;
    stored at ``path`` (when given) unless a whole-model timing was taken on a busy machine."""
    console.log("measuring the latency table (every layer at its candidate widths), under the device lock")
    busy: list[bool] = []
    with lock.measuring():
        table = build_table(model, groups, example, settings, harness(settings, busy=busy))
    target_ms = latency_target.resolve(table.base_ms)
    calibration = None
    if config.calibration_rounds:
        target_cost(model, groups, example, table, target_ms)  # a target below one channel: refused first
        # each whole-model timing under the lock on its own: a busy one is retried after a pause outside it
        calibration = calibrate_budget(model, groups, example, table, target_ms,
                                       harness(settings, lock, busy=busy, untrusted_retries=UNTRUSTED_RETRIES),
                                       rounds=config.calibration_rounds)
        console.log(_calibration_line(calibration))
    plan = LatencyPlan(table, target_ms, calibration.budget_ms if calibration is not None else target_ms, calibration)
    if path is not None and any(busy):
        console.log(f"[yellow]latency plan not stored in {path}: timed on a busy machine")
    elif path is not None:
        save_plan(path, key, plan)
    return plan


def _calibration_line(calibration: Calibration) -> str:
    first = calibration.rounds[0]
    unverified = "" if calibration.verified else " (not verified: no plan measured under the target)"
    return (f"latency target {calibration.target_ms:.4g} ms: the widths the table plans for it measured "
            f"{first.measured_ms:.4g} ms (predicted {first.predicted_ms:.4g}); planning with a "
            f"{calibration.budget_ms:.4g} ms predicted budget after {len(calibration.rounds)} measurement(s){unverified}")


def _settings(config: RunConfig, regularized: bool) -> dict[str, Any]:
    """The run's configuration as it ran: without regularised training, ``train.epochs`` is 0, not the unused default."""
    settings = dataclasses.asdict(config)
    if not regularized:  # else a method comparison at equal epochs would count the recipe's 10 unrun epochs
        settings["train"]["epochs"] = 0
    return settings


def _group_widths(algorithm: PruningAlgorithm) -> dict[str, int]:
    """Per group root: the width the algorithm pruned it to (ResRep: kept channels; C-SGD: clusters)."""
    summary = algorithm.summary()
    if "kept_widths" in summary:
        return {r: int(w) for r, w in summary["kept_widths"].items()}
    return {r: int(w[1]) for r, w in summary.get("widths", {}).items()}


def _where_macs_went(cost: CostModel, widths: dict[str, int], top: int = 5) -> list[dict[str, Any]]:
    """The groups whose cut alone removes the most deploy MACs, largest first."""
    rows = [{"group": root, "width": [cost.groups[root].size, width],
             "saved_macs": cost.total_macs - cost.macs({root: range(width, cost.groups[root].size)})}
            for root, width in widths.items() if root in cost.groups and width < cost.groups[root].size]
    return sorted(rows, key=lambda row: -int(row["saved_macs"]))[:top]  # type: ignore[call-overload]


def _check_runtime(config: RunConfig) -> None:
    try:
        check_runtime(LatencySettings(device=config.latency_device, threads=config.latency_threads,
                                      runtime=config.latency_runtime))
    except ValueError as exc:  # RuntimeUnavailable, or settings the runtime refuses
        raise PruningError(str(exc)) from None


def _device_lock(config: RunConfig) -> DeviceLock:
    from searchspace.device_lock import DeviceLock  # here: importing searchspace loads all of it (optuna)

    try:
        return DeviceLock(config.device_lock, device=config.latency_device)
    except ValueError as exc:
        raise PruningError(str(exc)) from None


def _load(
    config: RunConfig, checkpoint: str | None, torchvision_model: str | None
) -> tuple[ModelSource, ImageDataset, float]:
    """The model (deploy form, CPU), the data and the target in MACs; cheap checks come first."""
    target = parse_target(config.target) if config.target else None  # None: a latency target, resolved later
    source = load_source(checkpoint, None, num_classes=0) if torchvision_model is None else None
    macs = count_macs(source.model, source.resolution) if source is not None else None
    if macs is not None and target is not None:
        target.resolve(macs)  # a target at or above the current FLOPs fails before the data loads
    data = load_dataset(config.data)
    if source is None:
        source = load_source(checkpoint, torchvision_model, num_classes=data.num_classes)
        macs = count_macs(source.model, data.resolution)
    if source.num_classes != data.num_classes:
        raise PruningError(
            f"the model has {source.num_classes} outputs but {config.data.name} has {data.num_classes} classes"
        )
    source.model.cpu().eval()
    assert macs is not None
    return source, data, target.resolve(float(macs)) if target is not None else float(macs)


def _stats(model: nn.Module, data: ImageDataset, train: TrainConfig, resolution: int) -> ModelStats:
    """Params, deploy MACs and accuracy; the latency is filled in later (`pruning.timing`)."""
    model = model.cpu().eval()
    macs = count_macs(model, resolution)
    accuracy = evaluate_accuracy(model, data, train)
    model.cpu()
    return ModelStats(count_params(model), macs, None, accuracy)


def _metrics(report: PruneReport) -> dict[str, Any]:
    return {
        "accuracy": report.after.accuracy, "macs": report.after.macs, "params": report.after.params,
        "unpruned_accuracy": report.before.accuracy, "unpruned_macs": report.before.macs,
        "method": report.method, "target": report.target,
    }


def _output_path(config: RunConfig, checkpoint: str | None, torchvision_model: str | None, method: str) -> Path:
    if config.out is not None:
        out = Path(config.out)
    elif torchvision_model is not None:
        out = Path(f"{torchvision_model}_{method}.pt")
    else:
        out = Path(checkpoint or "model.pt").with_suffix("")
        out = out.with_name(f"{out.name}_{method}.pt")
    if checkpoint is not None and Path(checkpoint).resolve() == out.resolve():
        raise PruningError(f"--out {str(out)!r} would overwrite the input checkpoint")
    return out


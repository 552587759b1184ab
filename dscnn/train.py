"""Short, fixed proxy training that scores a sampled architecture for the search.

``train_and_evaluate(model, data, TrainConfig(...), on_epoch=...)`` trains ``model`` in place on an
`ImageDataset` kept as uint8 tensors on the target device: per-image random crop with padding and
horizontal flip on whole batches, normalisation (the training split's channel statistics) and,
if the model's input size differs from the data's, bilinear resizing on the fly. SGD (nesterov) or
AdamW, linear warm-up then cosine decay to 0 per step, label smoothing; no weight decay on biases
and normalisation parameters. After each epoch the validation accuracy is measured in ``eval()``
and ``inference_mode`` and passed to ``on_epoch(epoch, accuracy)``, which is how the search reports
to Optuna (an ``optuna.TrialPruned`` raised there propagates). A non-finite loss or logit raises
`TrainingDiverged`; a CUDA out-of-memory error propagates unchanged. On CPU a run is deterministic
given ``seed``.

Speed (SPEC 9): training runs in the memory format a per-process probe measured faster on the
device (`dscnn.memory_format`; the model is returned in the default format), and multi-branch
blocks use their exact fast path (`dscnn.blocks.fast_branch`) unless ``branch_impl="reference"``.
``train_form="online"`` trains OREPA's online form instead (`dscnn.online`, a different training
method, converted in place); the default ``"exact"`` is the paper form. The result records all three.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress
from torch import Tensor, nn

from dscnn.allocator import pin_malloc
from dscnn.blocks.fast_branch import BRANCH_IMPLS, branch_impl
from dscnn.data import ImageDataset
from dscnn.data.augment import prepare_batch, random_crop_flip
from dscnn.memory_format import MEMORY_FORMATS, choose_memory_format
from dscnn.online import TRAIN_FORMS, to_online

OPTIMIZERS = ("sgd", "adamw")

__all__ = [
    "OPTIMIZERS", "ParamGroups", "TrainConfig", "TrainResult", "TrainingDiverged", "evaluate_accuracy",
    "train_and_evaluate",
]

#: Builds the optimizer's parameter groups (dicts with "params" and per-group overrides such as
#: "weight_decay" or "momentum") from the model and the recipe; replaces the default grouping.
ParamGroups = Callable[[nn.Module, "TrainConfig"], list[dict[str, Any]]]


class TrainingDiverged(RuntimeError):
    """The loss (or the validation logits) stopped being finite; fails the trial."""

    def __init__(self, epoch: int, step: int, what: str = "loss") -> None:
        super().__init__(f"training diverged: non-finite {what} at epoch {epoch}, step {step}")
        self.epoch = epoch
        self.step = step


@dataclass(frozen=True)
class TrainConfig:
    """The proxy-training recipe; the same for every trial of a search."""

    epochs: int = 5  # passes over the training split
    batch_size: int = 128  # the last incomplete batch of each epoch is dropped
    optimizer: str = "sgd"  # "sgd" (momentum, nesterov) or "adamw"
    lr: float = 0.1  # peak learning rate (after warm-up); about 1e-3 suits adamw
    momentum: float = 0.9  # SGD momentum (adamw: beta1)
    weight_decay: float = 5e-4  # on conv / linear weights only (not biases, BN, layer scales)
    label_smoothing: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up length, then cosine decay to 0
    crop_padding: int = 4  # random crop after this much zero padding (data pixels); 0 = off
    hflip: bool = True  # random horizontal flip
    resolution: int = 0  # model input size; 0 = model.config.resolution if any, else the data's
    eval_batch_size: int = 512
    seed: int = 0  # data order, augmentation and the model's own randomness (dropout)
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto" (cuda when available)
    amp: bool = False  # bfloat16 autocast (for GPUs; usually slower on CPUs)
    memory_format: str = "auto"  # "auto" (measured per device), "channels_last" or "contiguous"
    branch_impl: str = "fast"  # multi-branch blocks in train mode: "fast" (exact) or "reference"
    train_form: str = "exact"  # "exact" (paper form) or "online" (OREPA; a different method)

    def __post_init__(self) -> None:
        for name, valid in (("optimizer", OPTIMIZERS), ("memory_format", MEMORY_FORMATS),
                            ("branch_impl", BRANCH_IMPLS), ("train_form", TRAIN_FORMS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; valid: {', '.join(valid)}")
        positive = ("epochs", "batch_size", "lr", "eval_batch_size")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "label_smoothing", "warmup_epochs", "crop_padding", "resolution"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class TrainResult:
    """What one proxy training produced."""

    val_accuracies: tuple[float, ...]  # per epoch, in [0, 1]
    train_losses: tuple[float, ...]  # mean training loss per epoch
    seconds: float  # wall time, training and evaluation
    train_images_per_second: float  # training throughput, evaluation excluded
    resolution: int  # the input size the model was trained at
    memory_format: str = "contiguous"  # the activations' layout during training
    memory_format_probe: dict[str, Any] | None = None  # the probe's timings when "auto" decided
    branch_impl: str = "fast"  # multi-branch blocks' train-mode implementation
    train_form: str = "exact"  # "exact" or "online"

    @property
    def final_accuracy(self) -> float:
        return self.val_accuracies[-1]

    @property
    def best_accuracy(self) -> float:
        return max(self.val_accuracies)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "final_accuracy": self.final_accuracy, "best_accuracy": self.best_accuracy}


def train_and_evaluate(
    model: nn.Module,
    data: ImageDataset,
    config: TrainConfig,
    *,
    on_epoch: Callable[[int, float], None] | None = None,
    progress: bool = False,
    param_groups: ParamGroups | None = None,
    after_backward: Callable[[], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place (it ends in eval mode) and return per-epoch validation accuracy.

    Args:
        model: any classifier mapping (N, 3, R, R) float images to (N, data.num_classes) logits.
        data: the data set; moved to ``config.device`` (pass it already there to avoid a copy).
        config: the recipe.
        on_epoch: called as ``on_epoch(epoch, val_accuracy)`` after each epoch (epoch from 0).
        progress: show a rich progress bar on stderr.
        param_groups: the optimizer's parameter groups; None = decay on weights only (see `_optimizer`).
        after_backward: called after each ``loss.backward()``, before the optimizer step (e.g. to
            edit gradients: pruning's regularizers).
    """
    device = resolve_device(config.device)
    if device.type == "cpu":
        pin_malloc()  # else every step page-faults its activations back in (see `dscnn.allocator`)
    if config.train_form == "online":
        to_online(model)
    run = _Run(model.to(device), data.to(device), config, param_groups, after_backward)
    accuracies: list[float] = []
    losses: list[float] = []
    train_seconds = 0.0
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []), Progress(
        console=Console(stderr=True), transient=True, disable=not progress
    ) as bar, branch_impl(config.branch_impl), run.in_memory_format():
        torch.manual_seed(config.seed)  # the model's own randomness (dropout, drop-path)
        task = bar.add_task("training", total=run.steps * config.epochs)
        for epoch in range(config.epochs):
            t0 = time.perf_counter()
            losses.append(run.train_epoch(epoch, lambda: bar.advance(task)))
            train_seconds += time.perf_counter() - t0  # train_epoch ends with a device sync
            accuracies.append(run.evaluate(epoch))
            bar.update(task, description=f"epoch {epoch + 1}/{config.epochs}: val acc {accuracies[-1]:.3f}")
            if on_epoch is not None:
                on_epoch(epoch, accuracies[-1])
    images = run.steps * run.batch * config.epochs
    fmt = run.format_choice
    return TrainResult(
        tuple(accuracies), tuple(losses), time.perf_counter() - start, images / max(train_seconds, 1e-9),
        run.resolution, fmt.name, fmt.to_dict() if config.memory_format == "auto" else None,
        config.branch_impl, config.train_form,
    )


class _Run:
    """The state of one training run: model, data on its device, optimizer, schedule, RNG."""

    def __init__(
        self,
        model: nn.Module,
        data: ImageDataset,
        config: TrainConfig,
        param_groups: ParamGroups | None = None,
        after_backward: Callable[[], None] | None = None,
    ) -> None:
        self.model, self.data, self.config = model, data, config
        self.after_backward = after_backward
        model_resolution = getattr(getattr(model, "config", None), "resolution", 0)
        self.resolution = config.resolution or model_resolution or data.resolution
        mean, std = data.channel_stats
        self.mean = torch.tensor(mean, device=data.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=data.device).view(1, 3, 1, 1) * 255
        self.steps, self.batch = _steps_per_epoch(len(data.train_labels), config.batch_size)
        self.format_choice = choose_memory_format(data.device, config.memory_format)
        self.memory_format = self.format_choice.memory_format
        self.optimizer = _optimizer(model, config, param_groups)
        warmup = round(config.warmup_epochs * self.steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _cosine_with_warmup(self.steps * config.epochs, warmup)
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        device_type = data.device.type
        self.autocast = torch.autocast(device_type, dtype=torch.bfloat16) if config.amp else nullcontext()
        # Checking finiteness syncs the device; on a GPU check in blocks so the launch queue stays full.
        self.check_every = 1 if device_type == "cpu" else 25

    def inputs(self, images: Tensor) -> Tensor:
        return prepare_batch(images, self.mean, self.std, self.resolution).contiguous(memory_format=self.memory_format)

    @contextmanager
    def in_memory_format(self) -> Iterator[None]:
        """The model's parameters in the run's memory format meanwhile, back to the default after."""
        self.model.to(memory_format=self.memory_format)
        try:
            yield
        finally:
            self.model.to(memory_format=torch.contiguous_format)

    def train_epoch(self, epoch: int, advance: Callable[[], None]) -> float:
        """One pass over a fresh random order of the training split; returns its mean loss."""
        self.model.train()
        data, config = self.data, self.config
        order = torch.randperm(len(data.train_labels), generator=self.generator)[: self.steps * self.batch]
        step_losses = torch.zeros(self.steps, device=data.device)
        checked = 0
        for step, indices in enumerate(order.view(self.steps, self.batch).to(data.device)):
            images = random_crop_flip(data.train_images[indices], config.crop_padding, config.hflip, self.generator)
            with self.autocast:
                logits = self.model(self.inputs(images))
            loss = F.cross_entropy(logits.float(), data.train_labels[indices], label_smoothing=config.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.after_backward is not None:
                self.after_backward()
            self.optimizer.step()
            self.scheduler.step()
            step_losses[step] = loss.detach()
            if step + 1 - checked >= self.check_every or step + 1 == self.steps:
                _check_finite(step_losses[checked : step + 1], epoch, checked)
                checked = step + 1
            advance()
        return float(step_losses.mean())

    def evaluate(self, epoch: int) -> float:
        """Top-1 accuracy on the validation split, in eval mode."""
        self.model.eval()
        data, size = self.data, self.config.eval_batch_size
        correct = torch.zeros((), dtype=torch.int64, device=data.device)
        finite = torch.ones((), dtype=torch.bool, device=data.device)
        with torch.inference_mode(), self.autocast:
            for images, labels in zip(data.val_images.split(size), data.val_labels.split(size)):
                logits = self.model(self.inputs(images))
                finite &= torch.isfinite(logits).all()
                correct += (logits.argmax(1) == labels).sum()
        if not bool(finite):  # the weights went non-finite in the epoch's last update
            raise TrainingDiverged(epoch, self.steps, "validation logits")
        return int(correct) / len(data.val_labels)


def _check_finite(losses: Tensor, epoch: int, first_step: int) -> None:
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        raise TrainingDiverged(epoch, first_step + int(bad[0]))


def _steps_per_epoch(num_images: int, batch_size: int) -> tuple[int, int]:
    """(steps, batch): full batches only, or one batch of everything when there is less than one."""
    if num_images < batch_size:
        return 1, num_images
    return num_images // batch_size, batch_size


def evaluate_accuracy(model: nn.Module, data: ImageDataset, config: TrainConfig) -> float:
    """Top-1 validation accuracy of ``model`` exactly as `train_and_evaluate` measures it, no training.

    Uses ``config``'s device, resolution and evaluation batch size; ``model`` is moved there.
    """
    device = resolve_device(config.device)
    run = _Run(model.to(device), data.to(device), config)
    with run.in_memory_format():
        return run.evaluate(0)


def _optimizer(model: nn.Module, config: TrainConfig, param_groups: ParamGroups | None = None) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # Decay only weight matrices / kernels: decaying BN affine, biases and layer scales hurts.
    groups = param_groups(model, config) if param_groups is not None else [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))


def _cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def resolve_device(name: str) -> torch.device:
    """``name`` ("cpu", "cuda", "cuda:N", "auto") as a concrete device; clear error without CUDA."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if device.index is None:  # name the index, so data.to() sees data already there as there
            device = torch.device("cuda", torch.cuda.current_device())
    return device

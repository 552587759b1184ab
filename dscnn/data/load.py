"""Data sets for training (search trials, pruning, studies), as uint8 tensors held in memory.

``load_dataset(DataConfig(...))`` lists the data (no decoding), takes a seeded class-balanced
subset if asked, decodes it once with ``torchvision.io`` and caches the uint8 arrays (see
`dscnn.data.cache`), so later loads, e.g. by every trial of a search, are fast.

Data sets: ``embedded`` (default: a CIFAR-10 subset shipped in the package), ``cifar10`` /
``cifar100`` (image tree, .npz or torchvision pickles), ``tiny-imagenet`` (the standard
``tiny-imagenet-200/`` layout) and ``imagefolder`` (``train/`` + ``val/`` class trees). Where to
look: ``DataConfig.data_dir`` (the ``--data-dir`` flag) > the ``REPNAS_DATA`` environment variable,
a folder that may hold several data sets (``cifar10/``, ``tiny-imagenet-200/``, ...).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dscnn.data import cache
from dscnn.data._common import DATA_FLAG_HINT, DataError, RawDataset, RawSplit, balanced_subset
from dscnn.data.cifar import read_cifar
from dscnn.data.decode import decode_all, fit_square
from dscnn.data.embedded import read_embedded
from dscnn.data.imagefolder import read_imagefolder
from dscnn.data.tiny_imagenet import read_tiny_imagenet

DATA_ENV = "REPNAS_DATA"
_READERS: dict[str, Callable[[Path], RawDataset]] = {
    "cifar10": functools.partial(read_cifar, "cifar10"),
    "cifar100": functools.partial(read_cifar, "cifar100"),
    "tiny-imagenet": read_tiny_imagenet,
    "imagefolder": read_imagefolder,
}
DATASETS = ("embedded", *_READERS)

__all__ = ["DATASETS", "DATA_ENV", "DataConfig", "ImageDataset", "load_dataset"]


@dataclass(frozen=True)
class DataConfig:
    """Which data to load and how much of it."""

    name: str = "embedded"  # one of DATASETS
    data_dir: str | None = None  # folder with the data (or its parent); None = $REPNAS_DATA; unused by embedded
    train_per_class: int = 0  # seeded class-balanced subset: at most this many per class; 0 = all
    val_per_class: int = 0  # the same for the validation split (the held-out split when holdout_per_class = 0)
    # > 0: validation = this many images per class held out of the (train_per_class) TRAINING split,
    # seeded, and the data set's own held-out split becomes the test split, never used to choose
    holdout_per_class: int = 0
    test_per_class: int = 0  # class-balanced subset of the test split (holdout_per_class > 0); 0 = all
    seed: int = 0  # seed of the subset choice
    resolution: int = 0  # 0 = native size; else resize (shorter side) + centre-crop once, at load
    cache_dir: str | None = None  # None = $REPNAS_CACHE/datasets or ~/.cache/repnas/datasets

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ValueError(f"unknown dataset {self.name!r}; valid: {', '.join(DATASETS)}")
        for field in ("train_per_class", "val_per_class", "holdout_per_class", "test_per_class", "resolution"):
            if getattr(self, field) < 0:
                raise ValueError(f"DataConfig.{field} must be >= 0, got {getattr(self, field)}")
        if self.holdout_per_class and self.val_per_class:
            raise ValueError("DataConfig: give holdout_per_class (validation from the training split) or "
                             "val_per_class (a subset of the held-out split as validation), not both")


@dataclass(frozen=True)
class ImageDataset:
    """Decoded train/val (and, with a holdout, test) splits as uint8 (N, 3, H, W) tensors plus int64 labels."""

    name: str
    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor  # what training reports and the search selects on
    val_labels: Tensor
    class_names: tuple[str, ...]
    test_images: Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0, 3, 1, 1, dtype=torch.uint8))
    test_labels: Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))

    @property
    def has_test(self) -> bool:
        """A test split exists (``holdout_per_class > 0``): it is never used to choose."""
        return len(self.test_labels) > 0

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """(images, labels) of "train", "val" or "test"."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}: train, val or test")
        if name == "test" and not self.has_test:
            raise ValueError(f"{self.name}: no test split; load it with DataConfig(holdout_per_class=...)")
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def resolution(self) -> int:
        """Native (stored) image size; images are square."""
        return int(self.train_images.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.train_images.device

    def test_view(self) -> ImageDataset:
        """The same data with the test split in the validation slot, for code that evaluates "val"
        (`dscnn.train.evaluate_accuracy`): reporting on the test split, never choosing with it."""
        if not self.has_test:
            raise DataError(f"{self.name}: no test split (set holdout_per_class to hold validation out of training)")
        return dataclasses.replace(self, val_images=self.test_images, val_labels=self.test_labels)

    def to(self, device: torch.device | str) -> ImageDataset:
        """The same data on ``device`` (self when already there), e.g. kept on the GPU for training."""
        if self.device == torch.device(device):
            return self
        moved = {f: getattr(self, f).to(device) for f in ("train_images", "train_labels", "val_images", "val_labels",
                                                           "test_images", "test_labels")}
        return dataclasses.replace(self, **moved)

    @functools.cached_property
    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training images, in [0, 1] units (for normalising)."""
        total = torch.zeros(3, dtype=torch.float64, device=self.device)
        squares = torch.zeros_like(total)
        for chunk in self.train_images.split(4096):  # chunks: a float copy of all of it can be GBs
            x = chunk.to(torch.float64) / 255
            total += x.sum((0, 2, 3))
            squares += x.square().sum((0, 2, 3))
        count = max(1, self.train_images.numel() // 3)
        mean = total / count
        std = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
        return tuple(mean.tolist()), tuple(std.tolist())

    def __repr__(self) -> str:
        return (
            f"ImageDataset({self.name!r}, {self.num_classes} classes, train {len(self.train_labels)}, "
            f"val {len(self.val_labels)}{f', test {len(self.test_labels)}' if self.has_test else ''}, "
            f"{self.resolution}x{self.resolution})"
        )


def load_dataset(config: DataConfig) -> ImageDataset:
    """Load (decoding once, then from the cache) the data set ``config`` describes; with
    ``holdout_per_class`` the validation split is carved out of the training split (seeded) and
    the data set's own held-out split is returned as ``test``."""
    data = _load(config)
    return _with_holdout(data, config) if config.holdout_per_class else data


def _with_holdout(data: ImageDataset, config: DataConfig) -> ImageDataset:
    labels = data.train_labels.numpy()
    chosen = balanced_subset(labels, config.holdout_per_class, config.seed + 2)
    if len(chosen) >= len(labels) or any((labels[chosen] == c).sum() >= (labels == c).sum() for c in set(labels)):
        raise DataError(f"{config.name}: holdout_per_class={config.holdout_per_class} leaves a class without "
                        "training images; hold out fewer")
    keep = np.setdiff1d(np.arange(len(labels)), chosen)
    test = balanced_subset(data.val_labels.numpy(), config.test_per_class, config.seed + 3)
    idx, rest = torch.as_tensor(chosen), torch.as_tensor(keep)
    return dataclasses.replace(
        data, train_images=data.train_images[rest], train_labels=data.train_labels[rest],
        val_images=data.train_images[idx], val_labels=data.train_labels[idx],
        test_images=data.val_images[torch.as_tensor(test)], test_labels=data.val_labels[torch.as_tensor(test)],
    )


def _load(config: DataConfig) -> ImageDataset:
    raw = read_embedded() if config.name == "embedded" else _READERS[config.name](_data_root(config))
    train = raw.train.select(balanced_subset(raw.train.labels, config.train_per_class, config.seed))
    val = raw.val.select(balanced_subset(raw.val.labels, config.val_per_class, config.seed + 1))
    if not len(train.labels) or not len(val.labels):
        raise DataError(f"{config.name}: {raw.source} holds an empty train or validation split")
    if train.encoded is None:  # already decoded arrays (npz, pickles): nothing worth caching
        x, vx = _resized(train, config), _resized(val, config)
        _check_sizes(config.name, x.shape, vx.shape)
        return _dataset(config.name, x, train.labels, vx, val.labels, raw.class_names)
    path = cache.cache_path(
        cache.cache_dir(config.cache_dir), config.name, source=raw.source, signature=raw.signature,
        train_per_class=config.train_per_class, val_per_class=config.val_per_class, seed=config.seed,
        resolution=config.resolution,
    )
    arrays = cache.load_cached(path)
    if arrays is None:
        arrays = _decode(config, train, val, raw.class_names)
        cache.save_cached(path, arrays)
    return _dataset(
        config.name, arrays["train_images"], arrays["train_labels"], arrays["val_images"], arrays["val_labels"],
        tuple(str(c) for c in arrays["class_names"]),
    )


def _data_root(config: DataConfig) -> Path:
    root = config.data_dir or os.environ.get(DATA_ENV)
    if not root:
        raise DataError(
            f"{config.name}: no data folder given. {DATA_FLAG_HINT}: the data set's folder, or a folder "
            f"holding it (e.g. cifar10/, tiny-imagenet-200/)."
        )
    path = Path(root).expanduser().resolve()
    if not path.exists():
        raise DataError(f"{config.name}: data folder {path} does not exist. {DATA_FLAG_HINT}.")
    return path


def _decode(config: DataConfig, train: RawSplit, val: RawSplit, class_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    assert train.encoded is not None and val.encoded is not None
    train_images = decode_all(train.encoded, config.resolution, label=f"decoding {config.name} train")
    val_images = decode_all(val.encoded, config.resolution, label=f"decoding {config.name} val")
    _check_sizes(config.name, train_images.shape, val_images.shape)  # before caching them
    return {
        "train_images": train_images.numpy(), "train_labels": train.labels,
        "val_images": val_images.numpy(), "val_labels": val.labels, "class_names": np.asarray(class_names),
    }


def _resized(split: RawSplit, config: DataConfig) -> np.ndarray | Tensor:
    assert split.images is not None
    if not config.resolution:
        return split.images
    return torch.cat([fit_square(c, config.resolution) for c in torch.from_numpy(split.images).split(4096)])


def _check_sizes(name: str, train_shape: tuple[int, ...], val_shape: tuple[int, ...]) -> None:
    train_hw, val_hw = tuple(train_shape[-2:]), tuple(val_shape[-2:])
    if train_hw[0] != train_hw[1] or train_hw != val_hw:
        raise DataError(
            f"{name}: train images are {train_hw}, val images {val_hw}; both must be the same square size: "
            "set a resolution to resize and centre-crop them"
        )


def _dataset(
    name: str, x: np.ndarray | Tensor, y: np.ndarray, vx: np.ndarray | Tensor, vy: np.ndarray, classes: tuple[str, ...]
) -> ImageDataset:
    return ImageDataset(
        name, torch.as_tensor(x).contiguous(), torch.as_tensor(y, dtype=torch.int64),
        torch.as_tensor(vx).contiguous(), torch.as_tensor(vy, dtype=torch.int64), classes,
    )

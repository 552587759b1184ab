"""What every on-disk format reader returns, plus the helpers they share.

A reader lists a data set without decoding it: labels plus either encoded images (file paths or
byte tensors that `torchvision.io.decode_image` reads) or already-decoded uint8 arrays. Subsets
are taken on that listing, so a 100-per-class subset of CIFAR-10 decodes 1,000 files, not 60,000.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

DATA_FLAG_HINT = "Point --data-dir (or the REPNAS_DATA environment variable) at it"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class DataError(ValueError):
    """Missing or malformed data; the message names the expected layout and how to point at it."""


def layout_error(dataset: str, problem: str, expected: str) -> DataError:
    """A `DataError` that says what is wrong, what layout was expected and which flag to set."""
    return DataError(f"{dataset}: {problem}. Expected {expected}. {DATA_FLAG_HINT}.")


@dataclass(frozen=True)
class RawSplit:
    """One split before decoding: ``labels`` plus exactly one of ``encoded`` / ``images``."""

    labels: np.ndarray  # int64 (N,), class indices
    encoded: Sequence[str | Tensor] | None = None  # file paths or encoded-image byte tensors
    images: np.ndarray | None = None  # uint8 (N, 3, H, W), already decoded

    def __post_init__(self) -> None:
        items = self.encoded if self.encoded is not None else self.images
        if items is None or (self.encoded is not None and self.images is not None):
            raise ValueError("RawSplit needs exactly one of encoded / images")
        if len(self.labels) != len(items):
            raise ValueError(f"RawSplit: {len(self.labels)} labels for {len(items)} images")

    def select(self, indices: np.ndarray) -> RawSplit:
        labels = self.labels[indices]
        if self.encoded is not None:
            return RawSplit(labels, encoded=[self.encoded[i] for i in indices.tolist()])
        assert self.images is not None
        return RawSplit(labels, images=self.images[indices])


@dataclass(frozen=True)
class RawDataset:
    """A listed (not yet decoded) data set as a reader returns it."""

    train: RawSplit
    val: RawSplit
    class_names: tuple[str, ...]
    source: str  # absolute path the data came from (goes into the cache key)
    signature: str  # changes whenever the source files change (names, sizes, mtimes)


def stat_signature(paths: Iterable[str | Path]) -> str:
    """Hash of every file's name, size and modification time: cheap, and changes on any edit."""
    digest = hashlib.sha256()
    for path in paths:
        st = os.stat(path)
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def file_paths(*splits: RawSplit) -> list[str]:
    """The file paths of splits listed from disk, in order (for `stat_signature`)."""
    return [item for split in splits for item in (split.encoded or ()) if isinstance(item, str)]


def list_images(folder: Path) -> list[str]:
    """Paths of the image files directly in ``folder``, sorted (so labels and order are reproducible).

    Plain strings, not Path objects: for 60,000 files pathlib's overhead would dominate a cached load.
    """
    with os.scandir(folder) as entries:
        return sorted(e.path for e in entries if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file())


def list_class_tree(split_dir: Path, class_names: Sequence[str], dataset: str, expected: str) -> RawSplit:
    """Read a ``<split>/<class>/<image>`` tree whose class folders are ``class_names`` (in label order)."""
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        folder = split_dir / name
        images = list_images(folder) if folder.is_dir() else []
        if not images:
            raise layout_error(dataset, f"no images in {folder}", expected)
        files += images
        labels += [label] * len(images)
    return RawSplit(np.asarray(labels, dtype=np.int64), encoded=files)


def subfolders(folder: Path) -> list[str]:
    """Sorted names of the sub-directories of ``folder`` (the class-index convention of ImageFolder)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def balanced_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``per_class`` randomly chosen (seeded) samples of each class; 0 = all."""
    if per_class < 0:
        raise ValueError(f"per-class subset size must be >= 0 (0 = all), got {per_class}")
    if per_class == 0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen)) if chosen else np.arange(0)

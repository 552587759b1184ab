"""Tiny-ImageNet-200 in its standard ``tiny-imagenet-200/`` layout (64x64 JPEGs, some greyscale).

Classes are the wnid folders of ``train/`` in sorted order (torchvision ImageFolder's convention);
validation labels come from ``val/val_annotations.txt`` (file, wnid, box; tab-separated).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dscnn.data._common import (
    RawDataset,
    RawSplit,
    file_paths,
    layout_error,
    list_images,
    stat_signature,
    subfolders,
)

NAME = "tiny-imagenet"
EXPECTED = (
    "the tiny-imagenet-200/ layout: train/<wnid>/images/*.JPEG and val/images/*.JPEG with labels in "
    "val/val_annotations.txt -- in the folder itself or in a tiny-imagenet-200/ sub-folder"
)


def read_tiny_imagenet(root: Path) -> RawDataset:
    """List Tiny-ImageNet found at ``root`` or ``root/tiny-imagenet-200``."""
    for path in (root, root / "tiny-imagenet-200"):
        if (path / "train").is_dir() and (path / "val" / "val_annotations.txt").is_file():
            return _read(path)
    raise layout_error(NAME, f"no Tiny-ImageNet data found at {root}", EXPECTED)


def _read(root: Path) -> RawDataset:
    wnids = subfolders(root / "train")
    if not wnids:
        raise layout_error(NAME, f"no class folders in {root / 'train'}", EXPECTED)
    files: list[str] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        images = list_images(folder) if folder.is_dir() else []
        if not images:
            raise layout_error(NAME, f"no images in {folder}", EXPECTED)
        files += images
        labels += [label] * len(images)
    val = _read_val(root, {w: i for i, w in enumerate(wnids)})
    annotations = root / "val" / "val_annotations.txt"
    train = RawSplit(np.asarray(labels, dtype=np.int64), encoded=files)
    signature = stat_signature([*file_paths(train, val), annotations])
    return RawDataset(train, val, tuple(wnids), str(root.resolve()), signature)


def _read_val(root: Path, label_of: dict[str, int]) -> RawSplit:
    annotations = root / "val" / "val_annotations.txt"
    files: list[str] = []
    labels: list[int] = []
    for lineno, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label_of:
            problem = f"{annotations}:{lineno}: expected '<file>\\t<wnid of train/>...', got {line!r}"
            raise layout_error(NAME, problem, EXPECTED)
        path = root / "val" / "images" / fields[0]
        if not path.is_file():
            raise layout_error(NAME, f"{annotations}:{lineno} names {path}, which does not exist", EXPECTED)
        files.append(str(path))
        labels.append(label_of[fields[1]])
    if not files:
        raise layout_error(NAME, f"{annotations} lists no images", EXPECTED)
    return RawSplit(np.asarray(labels, dtype=np.int64), encoded=files)

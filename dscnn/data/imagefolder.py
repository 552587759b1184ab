"""Any ``train/<class>/<image>`` + ``val/<class>/<image>`` tree (torchvision ImageFolder convention).

Classes are the sorted folder names of ``train/``; ``val/`` must use the same class folders.
"""

from __future__ import annotations

from pathlib import Path

from dscnn.data._common import (
    RawDataset,
    file_paths,
    layout_error,
    list_class_tree,
    stat_signature,
    subfolders,
)

NAME = "imagefolder"
EXPECTED = "train/<class>/*.jpg|png and val/<class>/*.jpg|png folders with the same class names"


def read_imagefolder(root: Path) -> RawDataset:
    """List the image tree under ``root``."""
    if not ((root / "train").is_dir() and (root / "val").is_dir()):
        raise layout_error(NAME, f"no train/ and val/ folders in {root}", EXPECTED)
    classes = subfolders(root / "train")
    if not classes:
        raise layout_error(NAME, f"no class folders in {root / 'train'}", EXPECTED)
    if subfolders(root / "val") != classes:
        raise layout_error(NAME, f"class folders of {root / 'val'} differ from {root / 'train'}", EXPECTED)
    train = list_class_tree(root / "train", classes, NAME, EXPECTED)
    val = list_class_tree(root / "val", classes, NAME, EXPECTED)
    return RawDataset(train, val, tuple(classes), str(root.resolve()), stat_signature(file_paths(train, val)))

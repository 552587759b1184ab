"""CIFAR-10 / CIFAR-100 in any of three layouts: an image tree, an .npz, or torchvision's pickles.

Looked for in the given folder itself, then in a conventional sub-folder (``cifar10/``,
``cifar-10-batches-py/``, ...), so ``REPNAS_DATA`` can point at a folder holding several data sets.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from dscnn.data._common import (
    RawDataset,
    RawSplit,
    file_paths,
    layout_error,
    list_class_tree,
    stat_signature,
    subfolders,
)

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
_SUBDIRS = {
    "cifar10": ("cifar10", "cifar-10", "CIFAR10", "cifar-10-batches-py"),
    "cifar100": ("cifar100", "cifar-100", "CIFAR100", "cifar-100-python"),
}
# torchvision's pickles: train files, test file, meta file, class-name key, label key.
_PICKLES = {
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta", b"label_names", b"labels"),
    "cifar100": (["train"], "test", "meta", b"fine_label_names", b"fine_labels"),
}


def _expected(name: str) -> str:
    sub = _SUBDIRS[name]
    return (
        f"one of: train/<class>/*.jpg|png + test/<class>/*.jpg|png folders; an .npz with x_train, "
        f"y_train, x_test, y_test (uint8 NHWC); torchvision's {sub[-1]}/ pickles -- in the folder "
        f"itself or in a {sub[0]}/ sub-folder"
    )


def read_cifar(name: str, root: Path) -> RawDataset:
    """List ``name`` ("cifar10" or "cifar100") found at or under ``root``."""
    candidates = [root] + [root / sub for sub in _SUBDIRS[name]] + [root / f"{name}.npz"]
    for path in candidates:
        if path.is_file() and path.suffix == ".npz":
            return _read_npz(name, path)
        if (path / "train").is_dir() and (path / "test").is_dir():
            return _read_tree(name, path)
        if (path / _PICKLES[name][1]).is_file():
            return _read_pickles(name, path)
    raise layout_error(name, f"no {name} data found at {root}", _expected(name))


def _check_classes(name: str, count: int, where: Path) -> None:
    if count != NUM_CLASSES[name]:
        raise layout_error(name, f"{where} has {count} classes, not {NUM_CLASSES[name]}", _expected(name))


def _read_tree(name: str, root: Path) -> RawDataset:
    classes = subfolders(root / "train")
    _check_classes(name, len(classes), root / "train")
    if subfolders(root / "test") != classes:
        raise layout_error(name, f"class folders of {root / 'test'} differ from {root / 'train'}", _expected(name))
    train = list_class_tree(root / "train", classes, name, _expected(name))
    val = list_class_tree(root / "test", classes, name, _expected(name))
    return RawDataset(train, val, tuple(classes), str(root.resolve()), stat_signature(file_paths(train, val)))


def _read_npz(name: str, path: Path) -> RawDataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as err:
        raise layout_error(name, f"cannot read {path}: {err}", _expected(name)) from err
    missing = sorted({"x_train", "y_train", "x_test", "y_test"} - set(arrays))
    if missing:
        raise layout_error(name, f"{path} lacks {', '.join(missing)}", _expected(name))
    default = CIFAR10_CLASSES if name == "cifar10" else tuple(str(i) for i in range(100))
    classes = tuple(str(c) for c in arrays.get("class_names", default))
    _check_classes(name, len(classes), path)
    train = _nhwc_split(name, path, arrays["x_train"], arrays["y_train"], len(classes))
    val = _nhwc_split(name, path, arrays["x_test"], arrays["y_test"], len(classes))
    return RawDataset(train, val, classes, str(path.resolve()), stat_signature([path]))


def _nhwc_split(name: str, path: Path, x: np.ndarray, y: np.ndarray, num_classes: int) -> RawSplit:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise layout_error(name, f"{path}: images are {x.dtype} {x.shape}, not uint8 (N, H, W, 3)", _expected(name))
    y = np.asarray(y).reshape(-1)
    in_range = len(y) == 0 or (y.min() >= 0 and y.max() < num_classes)
    if len(y) != len(x) or not np.issubdtype(y.dtype, np.integer) or not in_range:
        raise layout_error(name, f"{path}: labels must be {len(x)} integers in [0, {num_classes})", _expected(name))
    return RawSplit(y.astype(np.int64), images=np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _read_pickles(name: str, root: Path) -> RawDataset:
    train_files, test_file, meta_file, names_key, labels_key = _PICKLES[name]
    paths = [root / f for f in (*train_files, test_file, meta_file)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise layout_error(name, f"{root} lacks {', '.join(missing)}", _expected(name))
    classes = tuple(c.decode() for c in _unpickle(name, root / meta_file)[names_key])
    _check_classes(name, len(classes), root / meta_file)
    train = [_pickle_split(name, root / f, labels_key) for f in train_files]
    x = np.concatenate([s[0] for s in train])
    y = np.concatenate([s[1] for s in train])
    vx, vy = _pickle_split(name, root / test_file, labels_key)
    return RawDataset(
        RawSplit(y, images=x), RawSplit(vy, images=vx), classes, str(root.resolve()), stat_signature(paths)
    )


class _DataOnlyUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR batch holds (builtin containers, bytes/str, numpy arrays): a pickle
    in a data folder must never run code, so every other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("copyreg", "_reconstructor"),
        ("builtins", "object"), ("builtins", "bytearray"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: CIFAR files hold only data")
        return super().find_class(module, name)


def _unpickle(name: str, path: Path) -> dict[bytes, Any]:
    try:
        with open(path, "rb") as fh:
            data = _DataOnlyUnpickler(fh, encoding="bytes").load()  # the official files are Python 2 pickles
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError) as err:
        raise layout_error(name, f"cannot read {path}: {err}", _expected(name)) from err
    if not isinstance(data, dict):
        raise layout_error(name, f"{path} is not a CIFAR batch (a {type(data).__name__}, not a dict)", _expected(name))
    return data


def _pickle_split(name: str, path: Path, labels_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(name, path)
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[labels_key], dtype=np.int64)
        return data.reshape(-1, 3, 32, 32), labels  # rows are channel-planar RGB 32x32
    except (KeyError, ValueError) as err:
        raise layout_error(name, f"{path} is not a CIFAR batch ({err})", _expected(name)) from err

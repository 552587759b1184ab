"""On-disk cache of decoded data sets: uint8 arrays in an uncompressed .npz, so a reload is fast.

The key covers everything that changes the arrays: data set name, absolute source path, the
source's file signature (names, sizes, mtimes), subset sizes and seed, and resolution. Files are
written to a temporary name and renamed, so parallel search workers never read a partial file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from dscnn.data._common import DataError

CACHE_ENV = "REPNAS_CACHE"
_FORMAT_VERSION = 1  # bump when the decoding changes, so stale caches are ignored
_ARRAYS = ("train_images", "train_labels", "val_images", "val_labels", "class_names")


def cache_dir(explicit: str | None = None) -> Path:
    """``explicit`` > ``$REPNAS_CACHE/datasets`` > ``~/.cache/repnas/datasets``.

    ``$REPNAS_CACHE`` is the folder of every repnas cache (decoded data sets here, the latency
    cache ``latency.sqlite`` in `dscnn.measure_cache`), so one variable moves them all."""
    if explicit:
        return Path(explicit)
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "repnas") / "datasets"


def cache_path(folder: Path, dataset: str, **key_parts: Any) -> Path:
    """Path of the cache file for ``dataset`` with these key parts (all JSON-serialisable)."""
    key = json.dumps({"version": _FORMAT_VERSION, "dataset": dataset, **key_parts}, sort_keys=True)
    return folder / f"{dataset}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def load_cached(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when there is no usable cache file (a broken one is ignored)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in _ARRAYS}
    except (OSError, KeyError, ValueError):
        return None  # truncated or foreign file: decode again and overwrite it


def save_cached(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` atomically (temporary file + rename); a folder that cannot be written is a `DataError`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            np.savez(fh, **{name: arrays[name] for name in _ARRAYS})  # type: ignore[arg-type]  # numpy stub: allow_pickle
        os.replace(tmp, path)
    except OSError as exc:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise DataError(f"data-set cache {str(path.parent)!r} cannot be written ({exc.strerror or exc}): point "
                        f"{CACHE_ENV} at a writable folder") from None

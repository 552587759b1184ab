"""The mini CIFAR-10 subset shipped inside the package, so the search runs with no data at all.

The file holds the original JPEG bytes of a class-balanced subset of the shared CIFAR-10 copy
(see ``dscnn/data/embedded/README.md``): JPEG bytes are a third of the size of the decoded
pixels and decode bit-identically to the source files. Built by ``dscnn/data/make_embedded.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dscnn.data._common import DataError, RawDataset, RawSplit, stat_signature

NAME = "embedded"
EMBEDDED_PATH = Path(__file__).resolve().parent / "embedded" / "cifar10_mini.npz"
SPLITS = ("train", "val")


def read_embedded(path: Path = EMBEDDED_PATH) -> RawDataset:
    """List the embedded subset (JPEG bytes, decoded later like files on disk)."""
    if not path.is_file():
        raise DataError(
            f"embedded: {path} is missing from the installation; rebuild it with "
            "`python -m dscnn.data.make_embedded --source <cifar10 folder>` or pass --dataset and --data-dir"
        )
    with np.load(path, allow_pickle=False) as npz:
        splits = [_split(npz[f"{s}_jpeg"], npz[f"{s}_offsets"], npz[f"{s}_labels"]) for s in SPLITS]
        classes = tuple(str(c) for c in npz["class_names"])
    return RawDataset(splits[0], splits[1], classes, str(path), stat_signature([path]))


def _split(blob: np.ndarray, offsets: np.ndarray, labels: np.ndarray) -> RawSplit:
    data = torch.from_numpy(blob)
    encoded = [data[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    return RawSplit(labels.astype(np.int64), encoded=encoded)


def pack_split(jpeg_bytes: list[bytes], labels: list[int], files: list[str], prefix: str) -> dict[str, np.ndarray]:
    """Arrays of one split in the embedded file's format (used by make_embedded)."""
    offsets = np.cumsum([0] + [len(b) for b in jpeg_bytes]).astype(np.int64)
    return {
        f"{prefix}_jpeg": np.frombuffer(b"".join(jpeg_bytes), dtype=np.uint8),
        f"{prefix}_offsets": offsets,
        f"{prefix}_labels": np.asarray(labels, dtype=np.uint8),
        f"{prefix}_files": np.asarray(files),
    }

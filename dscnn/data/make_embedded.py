"""Build the embedded mini data set: ``python -m dscnn.data.make_embedded --source ../shared/data/cifar10``.

Takes a seeded, class-balanced random subset of a CIFAR-10 image tree (``train/<class>/*.jpg``,
``test/<class>/*.jpg``) and stores the files' original JPEG bytes with their labels and names in
``dscnn/data/embedded/cifar10_mini.npz`` (format: `dscnn.data.embedded`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dscnn.data._common import DataError, RawSplit, balanced_subset
from dscnn.data.cifar import read_cifar
from dscnn.data.embedded import EMBEDDED_PATH, pack_split

PROVENANCE = (
    "Class-balanced random subset (seed {seed}) of CIFAR-10 (Krizhevsky, 2009) as stored in the shared "
    "offline copy: JPEG quality 75, 4:2:0 chroma, original file bytes; see shared/data/README.md."
)


def _split_arrays(split: RawSplit, per_class: int, seed: int, prefix: str, root: Path) -> dict[str, np.ndarray]:
    chosen = split.select(balanced_subset(split.labels, per_class, seed))
    files = [Path(p) for p in chosen.encoded or () if isinstance(p, str)]
    if not files:
        raise DataError(f"make_embedded needs an image tree (train/<class>/*.jpg), got arrays at {root}")
    names = [str(p.relative_to(root)) for p in files]
    return pack_split([p.read_bytes() for p in files], chosen.labels.tolist(), names, prefix)


def build(source: Path, output: Path, train_per_class: int, val_per_class: int, seed: int) -> dict[str, np.ndarray]:
    """Write the embedded file from the CIFAR-10 tree at ``source``; returns what was written."""
    raw = read_cifar("cifar10", source.resolve())
    root = Path(raw.source)
    arrays = {
        **_split_arrays(raw.train, train_per_class, seed, "train", root),
        **_split_arrays(raw.val, val_per_class, seed + 1, "val", root),  # the tree's test/ split
        "class_names": np.asarray(raw.class_names),
        "provenance": np.asarray(PROVENANCE.format(seed=seed)),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(output, **arrays)  # type: ignore[arg-type]  # numpy stub: allow_pickle
    return arrays


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="CIFAR-10 image tree (train/, test/)")
    parser.add_argument("--output", type=Path, default=EMBEDDED_PATH)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--val-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    arrays = build(args.source, args.output, args.train_per_class, args.val_per_class, args.seed)
    print(
        f"wrote {args.output}: {len(arrays['train_labels'])} train + {len(arrays['val_labels'])} val images, "
        f"{args.output.stat().st_size / 1e6:.2f} MB"
    )


if __name__ == "__main__":
    main()

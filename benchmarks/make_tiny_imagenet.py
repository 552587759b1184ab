"""A small synthetic data set in the standard ``tiny-imagenet-200/`` layout, for the GPU suite's search.

``/work/shared/data/README.md`` says its real copies must never be committed into the project, so
the suite does not ship Tiny-ImageNet images: this script writes, deterministically (seeded), a
folder that `dscnn.data` reads exactly as it reads the real one: ``wnids.txt``, ``words.txt``,
``train/<wnid>/images/<wnid>_<k>.JPEG``, ``train/<wnid>/<wnid>_boxes.txt``, ``val/images/val_<i>.JPEG``
and ``val/val_annotations.txt`` (file, wnid, box; tab-separated), 64x64 JPEGs, one greyscale
image per class as in the original. Each class is a stripe pattern of its own orientation, period
and colour plus noise, so a few epochs learn something; the defaults (10 classes x 20 train + 5 val)
write about 0.2 MB.

    python benchmarks/make_tiny_imagenet.py OUT_DIR [--classes 10] [--train 20] [--val 5]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64


def class_image(label: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """A 64x64x3 uint8 image of class ``label``: oriented stripes in the class colour, random phase and noise."""
    angle = math.pi * label / classes
    period = 6 + 3 * (label % 4)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    phase = rng.uniform(0, 2 * math.pi)
    stripes = 0.5 + 0.5 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period + phase)
    hue = np.array([math.cos(2 * math.pi * label / classes + s) for s in (0.0, 2.1, 4.2)], dtype=np.float32)
    colour = 0.5 + 0.4 * hue
    image = stripes[..., None] * colour[None, None, :] + rng.normal(0, 0.08, (SIZE, SIZE, 3))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def write(root: Path, classes: int = 10, train: int = 20, val: int = 5, seed: int = 0) -> Path:
    """Write the data set under ``root/tiny-imagenet-200`` and return that folder."""
    if min(classes, train, val) < 1:
        raise ValueError(f"classes, train and val must be >= 1, got {classes}, {train}, {val}")
    rng = np.random.default_rng(seed)
    out = root / "tiny-imagenet-200"
    wnids = [f"n{90000000 + i:08d}" for i in range(classes)]
    (out / "val" / "images").mkdir(parents=True, exist_ok=True)
    (out / "wnids.txt").write_text("".join(w + "\n" for w in wnids))
    (out / "words.txt").write_text("".join(f"{w}\tsynthetic class {i}\n" for i, w in enumerate(wnids)))
    annotations: list[str] = []
    for label, wnid in enumerate(wnids):
        folder = out / "train" / wnid / "images"
        folder.mkdir(parents=True, exist_ok=True)
        boxes = []
        for k in range(train):
            image = Image.fromarray(class_image(label, classes, rng))
            if k == 0:
                image = image.convert("L")  # the original has greyscale images too
            image.save(folder / f"{wnid}_{k}.JPEG", quality=90)
            boxes.append(f"{wnid}_{k}.JPEG\t0\t0\t{SIZE - 1}\t{SIZE - 1}\n")
        (out / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
        for _ in range(val):
            name = f"val_{len(annotations)}.JPEG"
            Image.fromarray(class_image(label, classes, rng)).save(out / "val" / "images" / name, quality=90)
            annotations.append(f"{name}\t{wnid}\t0\t0\t{SIZE - 1}\t{SIZE - 1}\n")
    (out / "val" / "val_annotations.txt").write_text("".join(annotations))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder to write tiny-imagenet-200/ into")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train", type=int, default=20, help="train images per class")
    p.add_argument("--val", type=int, default=5, help="val images per class")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        folder = write(Path(a.out), a.classes, a.train, a.val, a.seed)
    except ValueError as exc:
        p.error(str(exc))
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())

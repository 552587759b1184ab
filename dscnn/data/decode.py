"""Decode encoded images into one uint8 NCHW tensor, fast, with progress for large sets."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from rich.console import Console
from rich.progress import Progress
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from dscnn.data._common import DataError

PROGRESS_MIN_ITEMS = 2000  # below this, decoding takes about a second: no progress bar
_CHUNK = 256


def fit_square(images: Tensor, size: int) -> Tensor:
    """Resize the shorter side to ``size`` (bilinear, antialiased) and centre-crop to size x size.

    Works on one uint8 (3, H, W) image or a (N, 3, H, W) batch; returns uint8.
    """
    if images.shape[-2:] == (size, size):
        return images
    return TF.center_crop(TF.resize(images, [size], antialias=True), [size, size])


def _decode_one(item: str | Tensor, resolution: int) -> Tensor:
    try:
        image = decode_image(item, mode=ImageReadMode.RGB)  # greyscale / RGBA / palette -> RGB
    except (RuntimeError, ValueError) as err:
        where = item if isinstance(item, str) else "an embedded image"
        raise DataError(f"cannot decode {where}: {err}") from err
    return fit_square(image, resolution) if resolution else image


def _decode_chunk(items: Sequence[str | Tensor], resolution: int) -> list[Tensor]:
    return [_decode_one(item, resolution) for item in items]


def decode_all(items: Sequence[str | Tensor], resolution: int = 0, *, label: str = "decoding") -> Tensor:
    """Decode ``items`` (file paths or encoded byte tensors) into a uint8 (N, 3, H, W) tensor.

    Args:
        items: what `torchvision.io.decode_image` accepts: a path or a 1-D uint8 tensor of bytes.
        resolution: 0 keeps the native size (all images must then share it); otherwise every image
            is resized and centre-cropped to resolution x resolution.
        label: text of the progress bar (shown only for large sets).
    """
    if not items:
        return torch.empty(0, 3, max(resolution, 1), max(resolution, 1), dtype=torch.uint8)
    chunks = [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]
    # decode_image releases the GIL, so threads overlap file reads and decoding.
    workers = max(1, min(4, os.cpu_count() or 1))
    decoded: list[Tensor] = []
    # torchvision 0.29 warns on every decode that torchcodec will take over; the pinned release works.
    with warnings.catch_warnings(), ThreadPoolExecutor(workers) as pool, Progress(
        console=Console(stderr=True), transient=True, disable=len(items) < PROGRESS_MIN_ITEMS
    ) as progress:
        warnings.filterwarnings("ignore", "The image decoding and encoding capabilities", DeprecationWarning)
        task = progress.add_task(label, total=len(items))
        for chunk in pool.map(lambda c: _decode_chunk(c, resolution), chunks):
            decoded += chunk
            progress.advance(task, len(chunk))
    return _stack(decoded, items)


def _stack(images: list[Tensor], items: Sequence[str | Tensor]) -> Tensor:
    size = images[0].shape[-2:]
    for image, item in zip(images, items):
        if image.shape[-2:] != size:
            where = item if isinstance(item, str) else "an embedded image"
            raise DataError(
                f"images differ in size ({tuple(size)} first, {tuple(image.shape[-2:])} in {where}); "
                "set a resolution so every image is resized to a common square size"
            )
    return torch.stack(images)

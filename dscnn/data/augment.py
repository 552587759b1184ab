"""Batched augmentation and input preparation on uint8 image tensors already in memory.

On a 2-core machine per-image PIL transforms in loader workers dominate a small model's training
step; here a whole batch is cropped and flipped with a few tensor ops, on whichever device holds
it. Each image gets its own crop offset and flip (unlike a v2 transform applied to a batch tensor,
which would use one crop for the whole batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop_flip(images: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Per-image random crop after ``padding`` zero pixels each side, and random horizontal flip.

    Args:
        images: uint8 (N, C, H, W) on any device.
        padding: zero padding before cropping back to H x W; 0 = no crop.
        flip: flip each image left-right with probability 1/2.
        generator: a CPU generator (so results are reproducible on any device).
    """
    n, c, h, w = images.shape
    device = images.device
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(device)
        rows = (offsets[0, :, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (offsets[1, :, None] + torch.arange(w, device=device))[:, None, None, :]
        batch = torch.arange(n, device=device)[:, None, None, None]
        channel = torch.arange(c, device=device)[None, :, None, None]
        images = padded[batch, channel, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(device)[:, None, None, None]
        images = torch.where(mask, images.flip(3), images)
    return images


def prepare_batch(images: Tensor, mean: Tensor, std: Tensor, resolution: int) -> Tensor:
    """uint8 (N, 3, H, W) -> normalised float32, resized (bilinear) to ``resolution`` if it differs.

    ``mean`` and ``std`` are (1, 3, 1, 1) in uint8 units (0..255). Resizing happens per batch so
    one cached copy of the data serves models built for any input size; downscaling is antialiased.
    """
    x = (images.float() - mean) / std
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                          antialias=resolution < x.shape[-1])
    return x

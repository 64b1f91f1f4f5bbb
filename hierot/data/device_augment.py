"""The ``crop_flip`` augmentation of whole batches on their device (``data.device_augment``).

One CPU worker runs torchvision's per-image ``RandomCrop`` + ``RandomHorizontalFlip`` on
32 px images at about 5 000-8 000 images/s, a small share of what a GPU trains a ResNet-18
at 32 px on (``docs/results/loaders.md``). With ``data.device_augment=true`` the loader
only indexes the in-memory images and the same random crop and flip run here, as a few
batched tensor ops on the device after the batch is copied there: one gather for the crop
and the flip together, every image (and every view) drawing its own offset and flip, and
no value read back to the host.

``crop_flip`` draws as torchvision does: each offset uniform over the ``2 * padding + 1``
positions of the zero-padded image, the flip with probability 1/2 (``tests/test_loaders.py``
checks the two against each other, cell by cell).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["crop_flip"]


def crop_flip(
    images: torch.Tensor, padding: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``(..., C, H, W)`` images (any leading dimensions, any dtype), each cropped to its
    size at a uniform random offset of its copy zero-padded by ``padding`` on every side, then
    flipped left-right with probability 1/2: ``v2.RandomCrop(size, padding=padding)`` then
    ``v2.RandomHorizontalFlip()`` of every image, drawn from ``generator`` (default: the
    device's global generator, which checkpoints save)."""
    c, h, w = images.shape[-3:]
    x = images.reshape(-1, c, h, w)
    n, device = x.shape[0], x.device
    top = torch.randint(0, 2 * padding + 1, (n, 1), device=device, generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n, 1), device=device, generator=generator)
    flip = torch.rand(n, 1, device=device, generator=generator) < 0.5
    # a flip after the crop reads column w-1-j of the crop
    j = torch.arange(w, device=device)
    cols = left + torch.where(flip, w - 1 - j, j)  # (n, w), in the padded image
    rows = top + torch.arange(h, device=device)  # (n, h)
    wide = w + 2 * padding
    index = (rows[:, :, None] * wide + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    padded = F.pad(x, (padding, padding, padding, padding)).view(n, c, -1)
    return padded.gather(2, index).view(images.shape)

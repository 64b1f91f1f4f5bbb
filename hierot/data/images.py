"""Image datasets yielding ``(uint8 (C, S, S) tensor, fine label)``, and their transforms.

Images stay uint8 until they reach the device (``HierarchyDataModule`` normalizes there);
per-sample augmentation runs in the DataLoader workers with torchvision's v2 transforms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from hierot.errors import DataError

Transform = Callable[[torch.Tensor], torch.Tensor]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def eval_transform(image_size: int) -> Transform:
    """Shorter side to ``image_size``, then the central square."""
    return v2.Compose([v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)])


def train_transform(image_size: int, augment: str = "crop_flip") -> Transform:
    """``crop_flip``: resize as ``eval_transform``, random crop with 1/8 padding, horizontal
    flip (the standard CIFAR recipe); ``resized_crop``: random resized crop + flip (the
    ImageNet recipe); ``none``: ``eval_transform``."""
    if augment == "none":
        return eval_transform(image_size)
    if augment == "crop_flip":
        return v2.Compose(
            [
                eval_transform(image_size),
                v2.RandomCrop(image_size, padding=max(1, image_size // 8)),
                v2.RandomHorizontalFlip(),
            ]
        )
    if augment == "resized_crop":
        return v2.Compose(
            [
                v2.RandomResizedCrop(image_size, scale=(0.35, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
            ]
        )
    raise DataError(f"data.augment: unknown '{augment}'; available: crop_flip, resized_crop, none")


class TensorImages(Dataset):
    """In-memory images: (N, C, H, W) uint8 decoded once, labels (N,)."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, transform: Transform | None = None
    ) -> None:
        self.images, self.labels, self.transform = images, labels.long(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        return (self.transform(x) if self.transform else x), int(self.labels[i])


def read_image(path: str | Path) -> torch.Tensor:
    """(3, H, W) uint8 RGB; a file that does not decode is a ``DataError`` naming it.

    PIL rather than ``torchvision.io``, whose decoders are deprecated since torchvision 0.29.
    """
    try:
        with Image.open(path) as image:
            return v2.functional.pil_to_tensor(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: corrupt or unreadable image ({reason})") from None


class FileImages(Dataset):
    """Images decoded from files on access (in the DataLoader workers)."""

    def __init__(
        self, paths: Sequence[str], labels: Sequence[int], transform: Transform | None = None
    ) -> None:
        self.paths, self.labels, self.transform = list(paths), torch.as_tensor(labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = read_image(self.paths[i])
        return (self.transform(x) if self.transform else x), int(self.labels[i])


def carve_validation(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_idx, val_idx)``: a seeded random ``fraction`` of ``range(n)`` held out."""
    if not 0 < fraction < 1:
        raise DataError(f"data.val_fraction must be in (0, 1), got {fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(fraction * n))
    return order[n_val:], order[:n_val]

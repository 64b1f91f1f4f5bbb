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


AUGMENTS = ("crop_flip", "crop_flip_rotate", "resized_crop", "imagenet", "robustness", "none")
# The ImageNet colour principal components (AlexNet's lighting noise), as robustness ships
# them: eigenvalues, and eigenvectors as columns.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def eval_transform(image_size: int, resize: int | None = None) -> Transform:
    """Shorter side to ``resize`` (default ``image_size``), then the central square of
    ``image_size`` (ImageNet's convention is 256 then 224)."""
    side = resize or image_size
    return v2.Compose([v2.Resize(side, antialias=True), v2.CenterCrop(image_size)])


def lighting(image: torch.Tensor, std: float = 0.05) -> torch.Tensor:
    """robustness' ``Lighting(0.05, IMAGENET_PCA)``: one random colour shift along the
    ImageNet principal components per image, here on a uint8 image (rounded and clipped)."""
    alpha = torch.randn(3) * std
    eigvec = torch.tensor(PCA_EIGVEC)
    rgb = (eigvec * (alpha * torch.tensor(PCA_EIGVAL))[None, :]).sum(1)
    shifted = image.float() + 255 * rgb[:, None, None]
    return shifted.round_().clamp_(0, 255).to(torch.uint8)


def crop_padding(image_size: int) -> int:
    """The padding of the ``crop_flip`` random crop at ``image_size``: 1/8 of the side, at
    least 1 (4 at 32 px)."""
    return max(1, image_size // 8)


def train_transform(image_size: int, augment: str = "crop_flip") -> Transform:
    """``crop_flip``: resize as ``eval_transform``, random crop with 1/8 padding, horizontal
    flip (the standard CIFAR recipe); ``crop_flip_rotate``: that plus a random rotation of up
    to 15 degrees (the OT-CPCC authors' CIFAR-100); ``resized_crop``: random resized crop
    (35-100 % of the area) + flip; ``imagenet``: torchvision's ImageNet recipe, random resized
    crop (8-100 % of the area) + flip; ``robustness``: robustness' ImageNet training transform,
    which the BREEDS benchmark uses (random resized crop of 8-100 % of the area, flip, colour
    jitter 0.1, PCA lighting noise 0.05); ``none``: ``eval_transform``."""
    if augment == "none":
        return eval_transform(image_size)
    if augment in ("crop_flip", "crop_flip_rotate"):
        steps: list[Transform] = [
            eval_transform(image_size),
            v2.RandomCrop(image_size, padding=crop_padding(image_size)),
            v2.RandomHorizontalFlip(),
        ]
        if augment == "crop_flip_rotate":
            steps.append(v2.RandomRotation(15))
        return v2.Compose(steps)
    if augment == "resized_crop":
        return v2.Compose(
            [
                v2.RandomResizedCrop(image_size, scale=(0.35, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
            ]
        )
    if augment == "imagenet":
        return v2.Compose(
            [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
        )
    if augment == "robustness":
        return v2.Compose(
            [
                v2.RandomResizedCrop(image_size, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1),
                lighting,
            ]
        )
    raise DataError(f"data.augment: unknown '{augment}'; available: {', '.join(AUGMENTS)}")


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


class Views(Dataset):
    """Each item of ``dataset`` drawn ``views`` times, stacked: ``((V, C, H, W), label)``;
    each draw runs the dataset's random augmentation anew (identical views without one)."""

    def __init__(self, dataset: Dataset, views: int) -> None:
        self.dataset, self.views = dataset, views

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        draws = [self.dataset[i] for _ in range(self.views)]
        return torch.stack([x for x, _ in draws]), int(draws[0][1])


def carve_validation(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_idx, val_idx)``: a seeded random ``fraction`` of ``range(n)`` held out."""
    if not 0 < fraction < 1:
        raise DataError(f"data.val_fraction must be in (0, 1), got {fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(fraction * n))
    return order[n_val:], order[:n_val]

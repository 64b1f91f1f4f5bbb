"""Procedural hierarchical image data: 32 x 32 RGB pictures generated from a seed, no files.

Every fine class is a (palette, shape, texture) triple, so the tree has three levels:
palette -> shape -> texture. Colour is the most salient cue and the fine texture the least,
which puts the visual similarity of classes in the same order as the tree. Every class has
several *modes* (a dark-background and a light-background variant with shifted hues): its
pictures form separate clusters, the case where class means summarise a class badly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset

from hierot.data.module import HierarchyDataModule, check_split
from hierot.errors import require_integer
from hierot.hierarchy import Hierarchy

SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond")
TEXTURES = ("solid", "hstripes", "vstripes", "checker", "dstripes", "dots")
# Hue names around the colour wheel; palette p of P sits at hue p / P.
HUES = (
    "red",
    "orange",
    "yellow",
    "lime",
    "green",
    "spring",
    "cyan",
    "azure",
    "blue",
    "violet",
    "magenta",
    "rose",
)
MAX_PALETTES = 6
LEVEL_NAMES = ("palette", "shape")  # the coarse levels; the third is the fine class


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of the synthetic problem; ``num_classes = palettes * shapes * textures``."""

    palettes: int = 3
    shapes: int = 2
    textures: int = 4
    modes: int = 2
    image_size: int = 32
    noise: float = 0.08
    # turns every palette's hue by this share of the gap between palettes: 0.5 puts the
    # colours halfway between the default ones, colours a default-trained model never saw
    hue_offset: float = 0.0

    def __post_init__(self) -> None:
        limits = {
            "palettes": (1, MAX_PALETTES),
            "shapes": (1, len(SHAPES)),
            "textures": (2, len(TEXTURES)),
            "modes": (1, 4),
            "image_size": (16, 512),
        }
        for name, (lo, hi) in limits.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ValueError(f"synthetic data: {name}={value} is outside {lo}..{hi}")
        if self.palettes * self.shapes < 2:
            raise ValueError("synthetic data: needs at least 2 palettes * shapes for a tree")
        if not 0 <= self.noise <= 1:
            raise ValueError(f"synthetic data: noise={self.noise} is outside 0..1")

    @property
    def num_classes(self) -> int:
        return self.palettes * self.shapes * self.textures

    def class_parts(self, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(palette, shape, texture) indices of fine labels; shapes are unique per palette."""
        texture = label % self.textures
        group = label // self.textures
        return group // self.shapes, group, texture


def class_names(spec: SyntheticSpec) -> list[str]:
    names = []
    for p in range(spec.palettes):
        palette = HUES[round(len(HUES) * p / spec.palettes) % len(HUES)]
        for s in range(spec.shapes):
            shape = SHAPES[(p * spec.shapes + s) % len(SHAPES)]
            names += [f"{palette}-{shape}-{TEXTURES[t]}" for t in range(spec.textures)]
    return names


def synthetic_hierarchy(spec: SyntheticSpec) -> Hierarchy:
    """palette -> palette-shape -> palette-shape-texture, leaves in label order."""
    paths = []
    for name in class_names(spec):
        palette, shape, _ = name.split("-")
        paths.append([palette, f"{palette}-{shape}", name])
    return Hierarchy.from_paths(paths, source="synthetic")


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(N,) hue in turns, saturation, value -> (N, 3) RGB in [0, 1]."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + h[:, None] * 6) % 6
    return v[:, None] - v[:, None] * s[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))


def _shape_masks(kind: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor):
    ax, ay = dx.abs(), dy.abs()
    rad = torch.sqrt(dx**2 + dy**2)
    masks = {
        "disc": rad <= r,
        "square": torch.maximum(ax, ay) <= 0.82 * r,
        # pointing up: the half-width grows linearly from the apex (dy = -r) to the base
        "triangle": (dy >= -r) & (dy <= 0.75 * r) & (ax <= (dy + r) * 0.6),
        "ring": (rad <= r) & (rad >= 0.55 * r),
        "cross": ((ax <= 0.33 * r) & (ay <= r)) | ((ay <= 0.33 * r) & (ax <= r)),
        "diamond": ax + ay <= 1.1 * r,
    }
    out = torch.zeros_like(dx, dtype=torch.bool)
    for i, name in enumerate(SHAPES):
        sel = kind == i
        out[sel] = masks[name][sel]
    return out


def _textures(kind: torch.Tensor, x: torch.Tensor, y: torch.Tensor, period: torch.Tensor):
    """Brightness factor in {1, 0.4} of each texture, selected per image."""
    half = period / 2
    h = torch.floor(y / half) % 2 == 0
    v = torch.floor(x / half) % 2 == 0
    patterns = {
        "solid": torch.ones_like(h),
        "hstripes": h,
        "vstripes": v,
        "checker": h ^ v,
        "dstripes": torch.floor((x + y) / half) % 2 == 0,
        "dots": ((x % period) - half).abs() + ((y % period) - half).abs() > half * 0.9,
    }
    out = torch.zeros_like(h)
    for i, name in enumerate(TEXTURES):
        sel = kind == i
        out[sel] = patterns[name][sel]
    return torch.where(out, 1.0, 0.4)


def render(
    labels: torch.Tensor, modes: torch.Tensor, spec: SyntheticSpec, generator: torch.Generator
) -> torch.Tensor:
    """(N, 3, S, S) uint8 images of the given fine labels and modes, random within a mode."""
    n, size = labels.numel(), spec.image_size
    scale = size / 32

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    palette, group, texture = spec.class_parts(labels)
    shape = group % len(SHAPES)
    # Modes: alternate dark/light background and move the hue to either side of the palette's.
    light = (modes % 2).float()
    side = (modes - (spec.modes - 1) / 2) / max(spec.modes - 1, 1) * 2  # in [-1, 1]
    hue = (palette.float() + spec.hue_offset) / spec.palettes + side * 0.05 + uniform(-0.02, 0.02)
    fg = _hsv_to_rgb(hue % 1, uniform(0.7, 1.0), uniform(0.75, 1.0))
    bg_level = torch.where(light > 0, uniform(0.7, 0.9), uniform(0.05, 0.25))
    bg = bg_level[:, None] + uniform(-0.05, 0.05)[:, None] * torch.tensor([1.0, 0.0, -1.0])

    r = uniform(8, 11.5) * scale
    cx = size / 2 + uniform(-1, 1) * (size / 2 - r - 1)
    cy = size / 2 + uniform(-1, 1) * (size / 2 - r - 1)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = coords[None, :, None], coords[None, None, :]
    dx = (xx - cx[:, None, None]).expand(n, size, size)
    dy = (yy - cy[:, None, None]).expand(n, size, size)
    shape_img = shape[:, None, None].expand(n, size, size)
    mask = _shape_masks(shape_img, dx, dy, r[:, None, None])
    period = (torch.full((n,), 4.0) * scale).round().clamp_min(2)[:, None, None]
    phase_x = uniform(0, 4)[:, None, None]
    phase_y = uniform(0, 4)[:, None, None]
    tex = _textures(
        texture[:, None, None].expand(n, size, size),
        (xx + phase_x).expand(n, size, size),
        (yy + phase_y).expand(n, size, size),
        period,
    )
    fg_img = fg[:, :, None, None] * tex[:, None]
    img = torch.where(mask[:, None], fg_img, bg[:, :, None, None])
    img = img + spec.noise * torch.randn(img.shape, generator=generator)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def split_modes(modes: int, split: str) -> list[int]:
    """The modes (subpopulations) of every class that ``split`` draws from: ``source`` the
    first half (rounded down), ``target`` the rest, ``all`` every mode."""
    check_split(split)
    if split != "all" and modes < 2:
        raise ValueError(f"data.split={split} needs data.modes >= 2 to halve, got {modes}")
    half = modes // 2
    return {"all": list(range(modes)), "source": list(range(half))}.get(
        split, list(range(half, modes))
    )


def make_split(
    spec: SyntheticSpec, per_class: int, seed: int, modes_used: list[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images uint8 (N,3,S,S), labels (N,), modes (N,))`` with ``per_class`` images of every
    class spread evenly over ``modes_used`` (default: all its modes), shuffled; the same
    seed gives the same split.

    A split is a function of its arguments, so the last few rendered are kept in the
    process (``_rendered``) and handed out as copies: a process that builds the same data
    again (a sweep's jobs, a test suite) renders it once."""
    used = tuple(modes_used) if modes_used is not None else tuple(range(spec.modes))
    return tuple(t.clone() for t in _rendered(spec, per_class, seed, used))  # type: ignore[return-value]


@functools.lru_cache(maxsize=6)  # a train, val and test split of two data settings
def _rendered(
    spec: SyntheticSpec, per_class: int, seed: int, modes_used: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    used = torch.tensor(modes_used)
    if per_class < len(used):
        raise ValueError(f"synthetic data: {per_class} images per class < {len(used)} modes")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(spec.num_classes).repeat_interleave(per_class)
    modes = used[torch.arange(per_class).repeat(spec.num_classes) % len(used)]
    order = torch.randperm(labels.numel(), generator=generator)
    labels, modes = labels[order], modes[order]
    chunks = [
        render(labels[i : i + 4096], modes[i : i + 4096], spec, generator)
        for i in range(0, labels.numel(), 4096)
    ]
    return torch.cat(chunks), labels, modes


def mode_separation(images: torch.Tensor, labels: torch.Tensor, modes: torch.Tensor) -> float:
    """Mean over classes of (distance between mode centroids) / (mean distance of an image to
    its mode centroid), in pixel space: above 1 means the modes are separate clusters."""
    x = images.flatten(1).float() / 255
    ratios = []
    for c in labels.unique():
        cents, spreads = [], []
        for m in modes[labels == c].unique():
            xm = x[(labels == c) & (modes == m)]
            cents.append(xm.mean(0))
            spreads.append((xm - cents[-1]).norm(dim=1).mean())
        cents_t = torch.stack(cents)
        gap = torch.pdist(cents_t).mean()
        ratios.append(float(gap / torch.stack(spreads).mean()))
    return math.fsum(ratios) / len(ratios)


class SyntheticDataModule(HierarchyDataModule):
    """The embedded default data: ``palettes * shapes * textures`` classes on a 3-level tree,
    each split generated from its own seed derived from ``seed`` (train, val, test differ).

    Args:
        palettes, shapes, textures, modes, noise: see ``SyntheticSpec``.
        train_per_class, val_per_class, test_per_class: images per class in each split.
        seed: the data seed (the same seed gives the same images).
        split: ``all``, or ``source`` / ``target``: the same classes drawn from a disjoint
            half of every class's modes (its subpopulations; see ``split_modes``), the
            subpopulation shift of the OT-CPCC protocol.
        hue_offset: see ``SyntheticSpec`` (``ood=synthetic_ood`` sets 0.5).
        kwargs: ``HierarchyDataModule`` options (``batch_size``, ``image_size``, ...).
    """

    def __init__(
        self,
        palettes: int = 3,
        shapes: int = 2,
        textures: int = 4,
        modes: int = 2,
        noise: float = 0.08,
        train_per_class: int = 400,
        val_per_class: int = 50,
        test_per_class: int = 100,
        seed: int = 0,
        image_size: int = 32,
        split: str = "all",
        hue_offset: float = 0.0,
        **kwargs: object,
    ) -> None:
        kwargs.setdefault("level_names", LEVEL_NAMES)
        super().__init__(image_size=image_size, **kwargs)  # type: ignore[arg-type]
        self.spec = SyntheticSpec(palettes, shapes, textures, modes, image_size, noise, hue_offset)
        self.split = split
        self.modes_used = split_modes(modes, split)
        self.per_class = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
        for name, count in self.per_class.items():
            # every class needs an image of each mode it is drawn from
            require_integer(count, f"data.{name}_per_class", len(self.modes_used))
        self.seed = seed
        self._made: dict[str, TensorDataset] = {}

    def read_metadata(self) -> Hierarchy:
        return synthetic_hierarchy(self.spec)

    def _split(self, name: str) -> TensorDataset:
        if name not in self._made:
            offset = {"train": 0, "val": 1, "test": 2}[name]
            images, labels, _ = make_split(
                self.spec, self.per_class[name], self.seed * 3 + offset, self.modes_used
            )
            self._made[name] = TensorDataset(images, labels)
        return self._made[name]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_set = self._split("train")
        if stage in (None, "fit", "validate"):
            self.val_set = self._split("val")
        if stage in (None, "test", "predict"):
            self.test_set = self._split("test")

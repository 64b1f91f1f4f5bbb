"""Base LightningDataModule for hierot: a label tree, three splits, uint8 images normalized on
the device (a quarter of the host-to-device traffic of float32)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from hierot.checks import config_check
from hierot.data.coarse import (
    CoarseLabels,
    check_coarse,
    coarse_labels,
    coarse_nodes,
    coarse_targets,
    dataset_labels,
)
from hierot.data.images import Transform, Views, eval_transform
from hierot.data.sampling import ResumableSampler
from hierot.errors import ConfigError, DataError, require_integer
from hierot.hierarchy import Hierarchy
from hierot.hierarchy.distance_files import disagreement, read_class_distances
from hierot.hierarchy.labels import label_names

log = logging.getLogger(__name__)


def data_root(root: str | None, holds: str) -> Path:
    """``data.root`` as an existing folder; ``holds`` says what it should contain."""
    if not root:
        raise DataError(f"data.root: not set (the folder holding {holds})")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root: no such folder: {path}")
    return path


def warn_leaves_without_data(tree: Hierarchy, classes: Sequence[str]) -> list[str]:
    """Log (and return) the leaves of a tree file that no class of the data matches: they
    are left out of the run, which is usually a typo, or a CSV/TSV header row read as a
    path (those files have none: every row is a path, top level first)."""
    known = set(classes)
    missing = [leaf for leaf in tree.leaves if leaf not in known]
    if missing:
        shown = ", ".join(f"'{n}'" for n in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        hint = ""
        if tree.source.lower().endswith((".csv", ".tsv")):
            hint = " (a header row? hierarchy CSV/TSV files have none: every row is a path)"
        count = "1 leaf has" if len(missing) == 1 else f"{len(missing)} leaves have"
        log.warning(
            "%s: %s no data and %s left out: %s%s%s", tree.source or "the hierarchy", count,
            "is" if len(missing) == 1 else "are", shown, more, hint,
        )  # fmt: skip
    return missing


def check_height(height: object, heights: Sequence[int], dataset: str) -> int:
    """``data.height`` if it is one of the tree heights ``dataset`` ships, else a one-line
    ``DataError``."""
    if height not in heights:
        available = ", ".join(str(h) for h in heights)
        raise DataError(
            f"data.height: {height!r} is not a tree height of {dataset}; available: {available}"
        )
    return height  # type: ignore[return-value]


# Data splits of the OT-CPCC protocol: everything, or the source / target part.
SPLITS = ("all", "source", "target")


def check_split(split: str) -> str:
    """``split`` if it is one of ``SPLITS``, else a one-line ``DataError``."""
    if split not in SPLITS:
        raise DataError(f"data.split: unknown '{split}'; available: {', '.join(SPLITS)}")
    return split


def split_by_parent(
    parents: Sequence[Hashable], split: str, n_target: Callable[[int], int | None]
) -> list[int]:
    """Class ids of ``split`` (``parents[i]`` is class i's parent): within each parent's
    classes, in id order, the first ``n_target(count)`` are ``target`` and the others
    ``source``; a parent whose ``n_target`` is None is in neither. ``all`` is every class.
    The rule of the OT-CPCC papers' class splits (CIFAR-100, iNaturalist)."""
    check_split(split)
    if split == "all":
        return list(range(len(parents)))
    members: dict[Hashable, list[int]] = {}
    for i, parent in enumerate(parents):
        members.setdefault(parent, []).append(i)
    kept = []
    for ids in members.values():
        n = n_target(len(ids))
        if n is not None:
            kept += ids[:n] if split == "target" else ids[n:]
    return sorted(kept)


def device_batch(batch_size: int, devices: int) -> int:
    """Each device's share of ``data.batch_size``, the global batch (what one process reads,
    whatever the number of devices); a one-line error when it does not divide."""
    if batch_size % devices:
        raise ConfigError(
            f"data.batch_size {batch_size} is the global batch and does not split evenly "
            f"across {devices} devices (trainer.devices x trainer.num_nodes): use a multiple "
            f"of {devices}"
        )
    return batch_size // devices


@config_check
def check_batch_config(cfg: DictConfig) -> None:
    """``data.batch_size``: an integer that splits evenly across the processes
    (``trainer.devices x trainer.num_nodes``) when those are counts."""
    batch = require_integer(cfg.data.get("batch_size"), "data.batch_size", 1)
    trainer = cfg.get("trainer") or {}
    devices, nodes = trainer.get("devices"), trainer.get("num_nodes", 1)
    if all(isinstance(v, int) and v > 0 for v in (devices, nodes)):
        device_batch(batch, devices * nodes)


@config_check
def check_coarse_config(cfg: DictConfig) -> None:
    """``data.coarse_fraction``, ``data.coarse_level`` and ``data.coarse_seed`` (the data
    module checks the same); absent keys are their defaults (0, null, 0)."""
    data = cfg.data
    check_coarse(
        data.get("coarse_fraction", 0), data.get("coarse_level"), data.get("coarse_seed", 0)
    )


def training_progress(trainer: L.Trainer) -> tuple[int, bool]:
    """(batches trained in the current epoch, whether the epoch is done), from the loop's
    counters."""
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    return done, done >= trainer.num_training_batches


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, which schedulers set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers(cores: int | None = None) -> int:
    """DataLoader workers when the config leaves ``num_workers`` unset (null): one core
    stays with the training process, and more than 8 rarely helps these datasets."""
    cores = available_cores() if cores is None else cores
    return max(0, min(8, cores - 1))


def eval_sampler(dataset: Dataset, rank: int, world: int) -> Sampler | None:
    """The samples of an evaluation split that process ``rank`` of ``world`` reads, in order:
    every ``world``-th, none repeated (None on one process: all of them). Lightning leaves a
    ``DistributedSampler`` in place; every rank needs a sample, or the others would wait for
    it at the end of the epoch."""
    if world == 1:
        return None
    n = len(dataset)  # type: ignore[arg-type]
    if 0 < n < world:
        raise DataError(
            f"an evaluation split of {n} images cannot be shared by {world} processes "
            f"(each needs one): evaluate on {n} device{'s' if n > 1 else ''} or fewer"
        )
    return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)


class HierarchyDataModule(L.LightningDataModule):
    """Lightning's contract: ``__init__`` takes and checks arguments only (no file is
    opened), ``setup`` reads the images into ``train_set``/``val_set``/``test_set``; each
    item is ``(image, label)`` with a (C, H, W) uint8 or float image. The metadata (the
    classes, the tree over them, the level names) is read on first use of ``hierarchy`` or
    ``level_names`` by the subclass's ``read_metadata``, from the dataset's class lists and
    tree files without its images: the model is built from it before any image is loaded.

    Args:
        batch_size: samples per batch (the CPCC regularizer sees the classes of one batch).
        num_workers: DataLoader worker processes; None chooses from the available cores.
        image_size: side of the (square) images; ViT backbones are built for it.
        mean, std: per-channel normalization of images in [0, 1].
        level_names: names of the coarse levels, top first, for metric keys.
        resnet_stem: the ResNet stem that suits these images; configs read it as
            ``data.resnet_stem`` (``standard``, ``small`` or ``cifar``).
        vit_stem: the ViT stem that suits these images (``patch`` or ``conv``), read as
            ``data.vit_stem``.
        views: augmented views of every training image per batch (``(B, V, C, H, W)``
            batches when above 1), for contrastive objectives (``objective=supcon``).
        distances: a file of LCA heights between the classes that the dataset ships
            (``hierot.hierarchy.distance_files``), read by ``lca_heights`` instead of the
            heights recomputed from the tree; None: recomputed.
        coarse_fraction: the fraction of the class-labelled training images relabelled to
            an ancestor of their class (``hierot.data.coarse``), coarsely-labelled data
            simulated; 0: none (the training set as the subclass made it).
        coarse_level: the level those labels move to (1: the top level); None: each
            class's parent. A class no deeper than it keeps its label.
        coarse_seed: the seed of the draw of the relabelled images.

    A subclass's ``setup`` assigns ``train_set`` the training images it made (after any
    validation split is carved out of them); with ``coarse_fraction`` reading it gives them
    with the drawn labels moved (``CoarseLabels``).
    """

    val_set: Dataset
    test_set: Dataset

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int | None = 0,
        image_size: int = 32,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
        level_names: Sequence[str] | None = None,
        resnet_stem: str | None = None,
        vit_stem: str | None = None,
        views: int = 1,
        distances: str | None = None,
        coarse_fraction: float = 0.0,
        coarse_level: int | None = None,
        coarse_seed: int = 0,
    ) -> None:
        super().__init__()
        require_integer(batch_size, "data.batch_size", 1)  # the config check calls the same
        check_coarse(coarse_fraction, coarse_level, coarse_seed)  # and this
        self.coarse_fraction = float(coarse_fraction)
        self.coarse_level, self.coarse_seed = coarse_level, coarse_seed
        self.views = require_integer(views, "data.views", 1)
        if num_workers is None:
            num_workers = default_workers()
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self._hierarchy: Hierarchy | None = None
        self._level_names = list(level_names) if level_names else None
        self.resnet_stem = resnet_stem
        self.vit_stem = vit_stem
        self.distances = distances
        # {inner node: training images labelled at it} (``hierot.hierarchy.labels``), set
        # by the readers whose data may label images only to a node of the tree
        self._inner_labels: dict[str, int] = {}
        self._mean = torch.tensor(mean).view(1, -1, 1, 1)
        self._std = torch.tensor(std).view(1, -1, 1, 1)

    def read_metadata(self) -> Hierarchy:
        """The tree over the classes (its leaves are the classes in label order), read from
        the dataset's metadata, never its images; sets the default ``_level_names`` where
        the dataset has its own and they were not given. Called once, on first use."""
        raise NotImplementedError

    @property
    def hierarchy(self) -> Hierarchy:
        """The label tree (``read_metadata`` on first use)."""
        if self._hierarchy is None:
            self._hierarchy = self.read_metadata()
        return self._hierarchy

    @hierarchy.setter
    def hierarchy(self, tree: Hierarchy) -> None:
        self._hierarchy = tree

    @property
    def inner_nodes(self) -> list[str]:
        """The inner nodes of the tree that training images may be labelled at (labels K and
        above, ``hierot.hierarchy.labels``), from the metadata and the options alone (no
        image is read): those of the reader's data (``_inner_labels``), then those
        ``coarse_fraction`` moves labels to. Empty for most data; what the config check
        and the model (``HierarchyModule.use_inner_labels``) judge."""
        self.hierarchy  # noqa: B018 -- the metadata finds the reader's
        nodes = list(self._inner_labels)
        if self.coarse_fraction > 0:
            nodes += [n for n in coarse_nodes(self.hierarchy, self.coarse_level) if n not in nodes]
        return nodes

    @property
    def inner_labels(self) -> dict[str, int]:
        """``{inner node: images}``: the training images labelled only to a node of the
        tree above the classes, nodes without any left out: the reader's (known with the
        metadata), plus those ``coarse_fraction`` moved (known once ``setup`` has made the
        training set). What the run's log and its ``data.json`` report."""
        self.hierarchy  # noqa: B018 -- the metadata finds the reader's
        counts = dict(self._inner_labels)
        for node, n in self._coarse_counts.items():
            counts[node] = counts.get(node, 0) + n
        return {node: n for node, n in counts.items() if n}

    # The training set as the subclass made it, and as read (``CoarseLabels`` over it with
    # ``coarse_fraction``, else the same object), with the images moved per node.
    _train_made: Dataset | None = None
    _train_read: Dataset | None = None
    _coarse_counts: dict[str, int] = {}  # noqa: RUF012 -- replaced, never mutated

    @property
    def train_set(self) -> Dataset:
        """The training images (``setup``); an ``AttributeError`` before, so that
        ``hasattr(self, "train_set")`` says whether they were made."""
        if self._train_read is None:
            raise AttributeError("train_set: not set up yet (setup('fit') makes it)")
        return self._train_read

    @train_set.setter
    def train_set(self, dataset: Dataset) -> None:
        self._train_made = self._train_read = dataset
        self._coarse_counts = {}
        if self.coarse_fraction == 0:
            return
        tree = self.hierarchy
        labels = dataset_labels(dataset)
        moved = coarse_labels(
            labels, coarse_targets(tree, self.coarse_level), self.coarse_fraction,
            self.coarse_seed,
        )  # fmt: skip
        self._train_read = CoarseLabels(dataset, moved)
        changed = moved[moved != labels] - tree.num_classes
        names = label_names(tree)[tree.num_classes :]
        counts = torch.bincount(changed, minlength=len(names)).tolist()
        self._coarse_counts = {names[i]: n for i, n in enumerate(counts) if n}

    @property
    def level_names(self) -> list[str] | None:
        """Names of the coarse levels, top first (None: numbered); given or the dataset's."""
        self.hierarchy  # noqa: B018 -- the metadata may name the levels
        return self._level_names

    @level_names.setter
    def level_names(self, names: Sequence[str] | None) -> None:
        self._level_names = list(names) if names else None

    def _world(self) -> tuple[int, int]:
        """(this process's rank, processes): from the trainer this module is attached to."""
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def device_batch(self, devices: int) -> int:
        return device_batch(self.batch_size, devices)

    def eval_loader(self, dataset: Dataset) -> DataLoader:
        """``dataset`` in order, in batches of this device's share, with the training
        loader's settings: ``num_workers`` workers, kept between epochs, and pinned memory
        where CUDA is, so that Lightning's copy to the device (``non_blocking=True`` for every
        tensor, ``lightning.fabric.utilities.apply_func.move_data_to_device``) overlaps the
        step. The validation, test and predict loaders (``hierot.evaluate``'s features), and
        ``hierot.transfer``'s features.

        Under DDP each rank reads every ``world``-th sample (``eval_sampler``): the ranks
        together read each sample once, one batch more or less apiece when the split does
        not divide (Lightning's own ``DistributedSampler`` would repeat samples to even
        them out, and every metric would count the copies)."""
        rank, world = self._world()
        return DataLoader(
            dataset,
            batch_size=self.device_batch(world),
            sampler=eval_sampler(dataset, rank, world),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        """Global batches of ``batch_size`` in a shuffled order, each rank reading its equal
        part; the order and position are saved in checkpoints (``ResumableLoader``)."""
        train = self.train_set if self.views == 1 else Views(self.train_set, self.views)
        rank, world = self._world()
        trainer = getattr(self, "trainer", None)
        n = len(train)  # type: ignore[arg-type]
        sampler = ResumableSampler(
            n,
            self.batch_size,
            rank=rank,
            world=world,
            # A last batch of a few samples holds few classes: a noisy CPCC step.
            drop_last=n > self.batch_size,
            progress=None if trainer is None else lambda: training_progress(trainer),
            share_seed=None if world == 1 else lambda s: trainer.strategy.broadcast(s, src=0),
        )
        self._sampler = sampler
        if self._sampler_state is not None:
            self._load_sampler_state()
        return DataLoader(
            train,
            batch_size=self.device_batch(world),
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    # The training order's position and random states go into checkpoints with the data
    # module's state: Lightning restores it before it first builds the training loader (to
    # count the steps of a schedule), which it does before it restores the loops.
    _sampler: ResumableSampler | None = None
    _sampler_state: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self._sampler.state_dict()} if self._sampler is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._sampler_state = state_dict.get("sampler")
        if self._sampler is not None and self._sampler_state is not None:
            self._load_sampler_state()

    def _load_sampler_state(self) -> None:
        assert self._sampler is not None and self._sampler_state is not None
        # without persistent workers each epoch makes a new iterator, which draws a seed
        self._sampler.load_state_dict(self._sampler_state, int(self.num_workers == 0))

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader(self.test_set)

    # The split ``predict_dataloader`` serves: "test", or "train" for the training images
    # without augmentation (``hierot.evaluate``'s kNN bank and prototypes).
    predict_split = "test"

    def predict_dataloader(self) -> DataLoader:
        """The split ``predict_split`` names, in order (``hierot.evaluate`` collects its
        features)."""
        if self.predict_split == "train":
            if getattr(self, "train_set", None) is None:
                self.setup("fit")
            return self.eval_loader(self.plain_train_set())
        return self.test_dataloader()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255
        mean = self._mean.to(x.device)
        std = self._std.to(x.device)
        return (x - mean) / std

    def file_transform(self) -> Transform:
        """What turns a decoded image file of any size ((3, H, W) uint8) into this data's
        test input before ``normalize``, as its test images are transformed (``hierot.predict``):
        by default the shorter side to ``image_size``, then the central square (the identity
        on images already ``image_size`` square, as the embedded data and CIFAR at 32 px are);
        folder data use their own test transform."""
        return eval_transform(self.image_size)

    def plain_train_set(self) -> Dataset:
        """The training images as the test sees them (``unaugmented``), less those labelled
        only to an inner node: what reads them (``hierot.evaluate``'s kNN bank and
        prototypes, linear probes) needs classes."""
        if self._train_made is None:
            raise AttributeError("train_set: not set up yet (setup('fit') makes it)")
        plain = self.unaugmented(self._train_made)
        if not self.inner_nodes:
            return plain
        keep = dataset_labels(self.train_set) < self.hierarchy.num_classes
        return Subset(plain, keep.nonzero().flatten().tolist())

    def unaugmented(self, train: Dataset) -> Dataset:
        """The training set ``train`` (as ``setup`` made it) as the test sees it, without
        augmentation (the features a linear probe is fitted on); data modules that augment
        override it."""
        return train

    def lca_heights(self) -> torch.Tensor:
        """(K, K) heights of the classes' lowest common ancestors: ``data.distances``'s file
        when given, else ``hierarchy.lca_heights()``."""
        tree = self.hierarchy  # its metadata may name the file
        if self.distances is None:
            return tree.lca_heights()
        leaves = tree.leaves
        shipped = read_class_distances(self.distances, leaves)
        if self._distances_checked != self.distances:
            # once per file: a shipped file may disagree with its own tree (making-better-
            # mistakes issue #3), and the metrics then follow the file
            self._distances_checked = self.distances
            differ = disagreement(shipped, tree.lca_heights(), leaves)
            if differ:
                log.warning("data.distances: %s: %s", self.distances, differ)
        return shipped

    _distances_checked: str | None = None

    def description(self) -> dict[str, object]:
        """What a run trained on, for its ``data.json``: the data module, its split, the
        number of images per split (those set up so far) and the class names in class-id
        order. Subclasses whose classes pool several sources add which ones."""
        images = {}
        for split in ("train", "val", "test"):
            dataset = getattr(self, f"{split}_set", None)
            if dataset is not None:
                images[split] = len(dataset)
        out: dict[str, object] = {
            "dataset": type(self).__name__,
            "split": getattr(self, "split", "all"),
            "images": images,
            "classes": list(self.hierarchy.leaves),
        }
        inner = self.inner_labels
        if inner:  # training images per inner node they are labelled at
            out["inner_labels"] = inner
        return out

    # A batched augmentation of the training images on their device (``data.device_augment``,
    # ``hierot.data.device_augment``), run on the uint8 images before the normalization; the
    # loader then leaves them unaugmented. None: the loader augments.
    train_device_transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def on_after_batch_transfer(self, batch: object, dataloader_idx: int) -> object:
        """A batch on its device: training images through ``train_device_transform`` (if
        any), then normalized, in the precision the trainer runs in."""
        images, labels = batch  # type: ignore[misc]
        trainer = self.trainer
        if self.train_device_transform is not None and getattr(trainer, "training", False):
            images = self.train_device_transform(images)
        x = self.normalize(images)
        if trainer is not None:
            # Lightning casts the batch to a "true" precision (bf16-true, 16-true) before
            # this hook; the float32 normalized images must follow it to match the weights.
            x = trainer.precision_plugin.convert_input(x)
        return x, labels

"""Coarsely-labelled training data, simulated: a seeded fraction of the training images
relabelled from their class to an ancestor of it (``data.coarse_fraction``,
``data.coarse_level``, ``data.coarse_seed``), as a dataset labelled partly only to a genus.

A moved label is the ancestor's label (K and above, ``hierot.hierarchy.labels``). The images
are drawn once, at setup, from the class-labelled training images (after any validation
split is carved out); the loader then reads each image's label from one precomputed (n,)
tensor (``CoarseLabels``)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from hierot.errors import ConfigError, DataError, is_number, require_integer
from hierot.hierarchy import Hierarchy
from hierot.hierarchy.labels import label_index, label_names


def check_coarse(fraction: object, level: object, seed: object) -> None:
    """``data.coarse_fraction`` a number in [0, 1], ``data.coarse_level`` null or an
    integer >= 1, ``data.coarse_seed`` an integer >= 0; else a one-line ``ConfigError``."""
    if not is_number(fraction) or not 0 <= fraction <= 1:  # type: ignore[operator]
        raise ConfigError(f"data.coarse_fraction must be a number in [0, 1], got {fraction!r}")
    if level is not None:
        require_integer(level, "data.coarse_level", 1)
    require_integer(seed, "data.coarse_seed", 0)


def coarse_targets(hierarchy: Hierarchy, level: int | None) -> torch.Tensor:
    """``(K,)`` long: the label each class's images move to, its ancestor at ``level``
    (1: the top level), or with None its parent; a class no deeper than ``level`` (or
    whose parent is the root) keeps its own label. One walk up per class, once."""
    index = label_index(hierarchy)
    out = []
    for k, leaf in enumerate(hierarchy.leaves):
        path = hierarchy.path(leaf)  # root first; the class at len(path) - 1
        at = len(path) - 2 if level is None else level
        out.append(index[path[at]] if 1 <= at < len(path) - 1 else k)
    return torch.tensor(out, dtype=torch.long)


def coarse_nodes(hierarchy: Hierarchy, level: int | None) -> list[str]:
    """The inner nodes ``coarse_targets`` moves labels to, in label order; a one-line
    ``DataError`` when no class is deeper than ``level`` (nothing would move)."""
    targets = coarse_targets(hierarchy, level)
    k = hierarchy.num_classes
    names = label_names(hierarchy)
    nodes = [names[t] for t in sorted(set(targets.tolist())) if t >= k]
    if not nodes:
        where = "below the top level" if level is None else f"deeper than level {level}"
        raise DataError(
            f"data.coarse_level={level}: no class of {hierarchy.source or 'the hierarchy'} "
            f"lies {where} (its depth is {hierarchy.depth}): no label would move"
        )
    return nodes


def coarse_labels(
    labels: torch.Tensor, targets: torch.Tensor, fraction: float, seed: int
) -> torch.Tensor:
    """``labels`` with ``round(fraction * n)`` of the n class labels (those below K =
    ``len(targets)``) drawn by a generator seeded with ``seed`` and replaced by their
    class's target; labels already at an inner node stay. A drawn class whose target is
    itself keeps its label."""
    k = len(targets)
    at_class = (labels < k).nonzero().flatten()
    order = torch.randperm(len(at_class), generator=torch.Generator().manual_seed(seed))
    drawn = at_class[order[: round(fraction * len(at_class))]]
    out = labels.clone()
    out[drawn] = targets[labels[drawn]]
    return out


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """``(n,)`` long: the labels of a training dataset without reading an image: its
    ``labels`` tensor (``TensorImages``, ``FileImages``, ``CoarseLabels``), a
    ``TensorDataset``'s second tensor, or a ``Subset``'s rows of its dataset's."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor):
        return labels.long()
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return dataset.tensors[1].long()
    raise DataError(
        f"data.coarse_fraction: the training set ({type(dataset).__name__}) has no labels "
        "tensor to relabel (a `labels` attribute, or a TensorDataset's second tensor)"
    )


class CoarseLabels(Dataset):
    """``dataset``'s items with their labels replaced by ``labels`` (n,): an image's own
    item, then one index into the precomputed tensor."""

    def __init__(self, dataset: Dataset, labels: torch.Tensor) -> None:
        if len(labels) != len(dataset):  # type: ignore[arg-type]
            raise ValueError(f"{len(labels)} labels for {len(dataset)} images")  # type: ignore[arg-type]
        self.dataset, self.labels = dataset, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[object, int]:
        return self.dataset[i][0], int(self.labels[i])

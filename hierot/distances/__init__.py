"""Class-to-class distances between the feature sets of the classes in a batch.

Every method maps ``(z, y)`` to one distance per class pair, batched over all pairs on the
features' device. Add a method with ``@register_distance("name")``.
"""

from __future__ import annotations

import torch

# Importing the method modules registers them.
from hierot.distances import emd, fastft, l2, sinkhorn, swd  # noqa: F401
from hierot.distances.batch import ClassBatch, group_by_class
from hierot.distances.coupling import monotone_coupling
from hierot.distances.registry import (
    check_options,
    distance_options,
    get_distance,
    list_distances,
    register_distance,
)


def class_distances(
    z: torch.Tensor, y: torch.Tensor, method: str = "l2", **options: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances between the classes present in a batch.

    Args:
        z: (B, d) features (half/bfloat16 are computed in float32, float64 stays float64).
        y: (B,) integer labels.
        method: a registered name: ``l2``, ``emd``, ``sinkhorn``, ``swd``, ``fastft``.
        options: the method's keyword options (e.g. ``reg`` for ``sinkhorn``).
    Returns:
        ``(classes, dist)``: (k,) sorted labels present and (k (k - 1) / 2,) distances of the
        pairs ``(classes[a], classes[b])``, ``a < b``, in ``torch.triu_indices(k, k, 1)`` order.
    """
    fn = get_distance(method)
    check_options(method, options)
    # Autocast would run cdist/matmul in half precision; distances need float32.
    with torch.autocast(z.device.type, enabled=False):
        batch = group_by_class(z, y)
        if batch.num_pairs == 0:
            # empty, but still part of the graph so that a loss built on it can backward
            return batch.classes, batch.z[:0, 0]
        dist = fn(batch, **options)
    return batch.classes, dist


__all__ = [
    "ClassBatch",
    "check_options",
    "class_distances",
    "distance_options",
    "get_distance",
    "group_by_class",
    "list_distances",
    "monotone_coupling",
    "register_distance",
]

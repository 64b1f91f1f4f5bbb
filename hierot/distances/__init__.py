"""Class-to-class distances between the feature sets of the classes in a batch.

Every method maps ``(z, y)`` to one distance per class pair, batched over all pairs on the
features' device. Add a method with ``@register_distance("name")``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

# Importing the method modules registers them.
from hierot.distances import emd, fastft, hyperbolic, means, sinkhorn, swd  # noqa: F401
from hierot.distances.batch import (
    DEFAULT_MEMORY_MB,
    ClassBatch,
    PairMemory,
    check_memory,
    group_by_class,
)
from hierot.distances.coupling import monotone_coupling
from hierot.distances.registry import (
    EVALUATION_SEED,
    batch_centre,
    check_options,
    distance_options,
    evaluation_options,
    get_distance,
    list_distances,
    memory_model,
    register_distance,
)


def class_distance_chunks(
    z: torch.Tensor,
    y: torch.Tensor,
    method: str = "l2",
    memory_mb: float = DEFAULT_MEMORY_MB,
    *,
    labels_below: int | None = None,
    **options: object,
) -> Iterator[tuple[ClassBatch, torch.Tensor]]:
    """``class_distances`` one chunk of class pairs at a time: ``(chunk, dist)`` with
    ``chunk.pair_a``/``chunk.pair_b`` (P_c,) class positions and ``dist`` (P_c,) their
    distances, the chunks in ``triu_indices`` order and each within ``memory_mb``."""
    fn = get_distance(method)
    check_options(method, options)
    # Autocast would run cdist/matmul in half precision; distances need float32. (Entered
    # around each call, not around the yields: autocast state is per thread.)
    with torch.autocast(z.device.type, enabled=False):
        batch = group_by_class(z, y, memory_mb, labels_below)
    model = memory_model(method, batch.z.shape[1], batch.z.element_size(), options)
    for chunk in batch.chunks(model):
        if chunk.num_pairs == 0:
            # empty, but still part of the graph so that a loss built on it can backward
            yield chunk, chunk.z[:0, 0]
            continue
        with torch.autocast(z.device.type, enabled=False):
            dist = fn(chunk, **options)
        yield chunk, dist


def class_distances(
    z: torch.Tensor,
    y: torch.Tensor,
    method: str = "l2",
    memory_mb: float = DEFAULT_MEMORY_MB,
    *,
    labels_below: int | None = None,
    **options: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances between the classes present in a batch.

    Args:
        z: (B, d) features (half/bfloat16 are computed in float32, float64 stays float64).
        y: (B,) integer labels.
        method: a registered name: ``l2``, ``l1``, ``emd``, ``sinkhorn``, ``swd``, ``fastft``,
            ``hyperbolic``.
        memory_mb: budget for the work in flight: class pairs are processed in chunks that
            fit it (the result is the same for any budget, up to rounding), and no (B, B)
            matrix is built beyond it. The (P,) result itself is not counted.
        labels_below: group only the samples labelled below it (``group_by_class``).
        options: the method's keyword options (e.g. ``reg`` for ``sinkhorn``).
    Returns:
        ``(classes, dist)``: (k,) sorted labels present and (k (k - 1) / 2,) distances of the
        pairs ``(classes[a], classes[b])``, ``a < b``, in ``torch.triu_indices(k, k, 1)`` order.
    """
    classes, parts, out, filled = None, [], None, 0
    chunks = class_distance_chunks(z, y, method, memory_mb, labels_below=labels_below, **options)
    for chunk, dist in chunks:
        classes = chunk.classes
        if dist.requires_grad or chunk.num_pairs == chunk.total_pairs:
            parts.append(dist)
            continue
        # Without a graph the chunks go straight into the result: no second (P,) copy.
        if out is None:
            out = dist.new_empty(chunk.total_pairs)
        out[filled : filled + dist.numel()] = dist
        filled += dist.numel()
    if out is not None:
        return classes, out
    return classes, parts[0] if len(parts) == 1 else torch.cat(parts)


__all__ = [
    "DEFAULT_MEMORY_MB",
    "EVALUATION_SEED",
    "ClassBatch",
    "PairMemory",
    "batch_centre",
    "check_memory",
    "check_options",
    "class_distance_chunks",
    "class_distances",
    "distance_options",
    "evaluation_options",
    "get_distance",
    "group_by_class",
    "list_distances",
    "monotone_coupling",
    "register_distance",
]

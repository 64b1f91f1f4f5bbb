"""Name -> class-distance function registry, so a new distance is one decorated function."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Protocol

import torch

from hierot.distances.batch import ClassBatch, PairMemory
from hierot.errors import reject_unknown_options


class DistanceFn(Protocol):
    def __call__(self, batch: ClassBatch, **options: object) -> torch.Tensor: ...


_DISTANCES: dict[str, DistanceFn] = {}
_CHECKS: dict[str, Callable[..., None]] = {}
MemoryModel = Callable[[int, int, Mapping[str, object]], PairMemory]
_MEMORY: dict[str, MemoryModel] = {}
CentreFn = Callable[..., torch.Tensor]
_CENTRES: dict[str, CentreFn] = {}


def register_distance(
    name: str,
    check: Callable[..., None] | None = None,
    memory: MemoryModel | None = None,
    centre: CentreFn | None = None,
) -> Callable[[DistanceFn], DistanceFn]:
    """Decorator: ``@register_distance("name")`` on ``fn(batch: ClassBatch, **options)``
    returning the ``(P,)`` distances of ``batch``'s class pairs.

    ``check(**options)``, if given, receives every option (defaults filled in) and raises
    ``ValueError`` on a bad value; ``check_options`` runs it, so a config is refused before a
    run starts with the same message the distance itself would give.

    ``memory(dim, itemsize, options)`` gives the ``PairMemory`` model the pairs are chunked by, so
    that a batch of any number of classes stays within its memory budget; without it the
    function gets all pairs at once.

    ``centre(z, **options)``, if given, is the centre of a batch's features in the geometry
    the distance measures in (``batch_centre``: the Euclidean mean without it).

    A distance that draws at random takes a ``seed`` option, ``None`` meaning torch's global
    generator (a training regularizer's draws then follow ``torch.manual_seed``); evaluation
    fixes it (``evaluation_options``).
    """

    def add(fn: DistanceFn) -> DistanceFn:
        if name in _DISTANCES and _DISTANCES[name] is not fn:
            raise ValueError(f"class distance '{name}' is already registered")
        _DISTANCES[name] = fn
        if check is not None:
            _CHECKS[name] = check
        if memory is not None:
            _MEMORY[name] = memory
        if centre is not None:
            _CENTRES[name] = centre
        return fn

    return add


def get_distance(name: str) -> DistanceFn:
    try:
        return _DISTANCES[name]
    except KeyError:
        raise ValueError(
            f"unknown class distance '{name}'; available: {', '.join(list_distances())}"
        ) from None


def memory_model(
    name: str, dim: int, itemsize: int, options: Mapping[str, object]
) -> PairMemory | None:
    """The registered ``PairMemory`` of a distance for features of ``dim`` and ``itemsize``
    under ``options`` (defaults filled in)."""
    model = _MEMORY.get(name)
    return None if model is None else model(dim, itemsize, {**distance_options(name), **options})


def batch_centre(name: str, z: torch.Tensor, options: Mapping[str, object]) -> torch.Tensor:
    """(d,) the centre of features ``z`` (B, d) where distance ``name`` measures them: its
    registered ``centre`` (the Einstein midpoint in the Poincare ball for ``hyperbolic``),
    else their mean."""
    fn = _CENTRES.get(name)
    if fn is None:
        return z.mean(0)
    return fn(z, **{**distance_options(name), **options})


def list_distances() -> list[str]:
    return sorted(_DISTANCES)


@functools.cache
def _options_of(fn: DistanceFn) -> dict[str, object]:
    # Keyed by the function, not the name, so it can never go stale; class_distances calls
    # this every training step and inspect.signature is not free.
    params = list(inspect.signature(fn).parameters.values())[1:]
    return {p.name: p.default for p in params}


def distance_options(name: str) -> dict[str, object]:
    """``{option: default}`` of a registered distance (what configs may set)."""
    return dict(_options_of(get_distance(name)))


# The seed of a random distance's draws wherever it evaluates (val/cpcc, test/cpcc,
# hierot.evaluate): the directions of ``swd`` are then the same at every evaluation of a
# run and in every run, and the global generator, which orders the training batches, is
# left alone. 0, as conf/evaluate.yaml's swd column.
EVALUATION_SEED = 0


def evaluation_options(name: str, options: Mapping[str, object]) -> dict[str, object]:
    """``options`` of distance ``name`` for an evaluation: a random distance (one with a
    ``seed`` option) left at ``seed=None`` gets ``EVALUATION_SEED``, so it draws from its own
    seeded generator instead of torch's global one; other options are kept."""
    out = dict(options)
    if "seed" in distance_options(name) and out.get("seed") is None:
        out["seed"] = EVALUATION_SEED
    return out


def check_options(name: str, options: Mapping[str, object]) -> None:
    """Refuse options the distance does not take (naming the ones it does) and values its
    registered check rejects."""
    known = distance_options(name)
    reject_unknown_options(f"class distance '{name}'", known, options)
    if name in _CHECKS:
        _CHECKS[name](**{**known, **options})

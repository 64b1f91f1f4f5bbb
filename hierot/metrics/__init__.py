"""Hierarchy-aware metrics.

- ``mistakes``, ``decoding``, ``hops``: plain tensor code (part of the torch-only core):
  mistake severity, hierarchical distance@k, top-k accuracy, marginal, CRM and hierarchical
  ensembles' decoding, HOPS (Hier-COS's hierarchically ordered preference score).
- ``epoch``: torchmetrics accumulated over a split's batches during training, validation and
  test, synced across ranks: ``LevelAccuracy``, ``MistakeSeverity``, ``MeanCrossEntropy``,
  ``SplitCPCC``.
- ``features``: metrics of a whole split's features at once, for ``hierot.evaluate``:
  TestCPCC under every distance, average hierarchical distance@k, retrieval mAP.

The names below are imported from ``epoch`` and ``features`` on first use, so that
importing ``hierot.metrics.mistakes`` loads no torchmetrics.
"""

from importlib import import_module
from typing import Any

_NAMES = {
    "LevelAccuracy": "epoch",
    "MeanCrossEntropy": "epoch",
    "MistakeSeverity": "epoch",
    "SplitCPCC": "epoch",
    "check_val_cpcc": "epoch",
    "class_subsample": "epoch",
    "average_hierarchical_distance": "features",
    "evaluate_features": "features",
    "retrieval_map": "features",
}


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(import_module(f"hierot.metrics.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'hierot.metrics' has no attribute {name!r}")


__all__ = sorted(_NAMES)

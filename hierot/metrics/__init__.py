"""Hierarchy-aware metrics.

- ``epoch``: torchmetrics accumulated over a split's batches during training, validation and
  test, synced across ranks: ``LevelAccuracy``, ``MistakeSeverity``, ``MeanCrossEntropy``,
  ``SplitCPCC``.
- ``features``: metrics of a whole split's features at once, for ``hierot.evaluate``:
  TestCPCC under every distance, average hierarchical distance@k, retrieval mAP.
"""

from hierot.metrics.epoch import (
    LevelAccuracy,
    MeanCrossEntropy,
    MistakeSeverity,
    SplitCPCC,
    check_val_cpcc,
    class_subsample,
)
from hierot.metrics.features import average_hierarchical_distance, evaluate_features, retrieval_map

__all__ = [
    "LevelAccuracy",
    "MeanCrossEntropy",
    "MistakeSeverity",
    "SplitCPCC",
    "average_hierarchical_distance",
    "check_val_cpcc",
    "class_subsample",
    "evaluate_features",
    "retrieval_map",
]

"""Calibration of the top-1 confidence: expected and maximum calibration error over 15
equal-width confidence bins (Guo et al., 2017), as torchmetrics computes them.

torchmetrics' bins are ``[lo, hi)`` with a bin of its own for a confidence of exactly 1,
where Guo et al. and CRM's code use ``(lo, hi]``: the two agree unless a confidence falls on
a bin edge, and a model whose float32 softmax saturates at 1.0 is the common case where they
do not (the tests give the numbers).
"""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassCalibrationError

from hierot.metrics.decoding import DEFAULT_MEMORY_MB, row_blocks

BINS = 15


def calibration_errors(
    logits: torch.Tensor,
    target: torch.Tensor,
    bins: int = BINS,
    memory_mb: float = DEFAULT_MEMORY_MB,
) -> dict[str, torch.Tensor]:
    """``{"ece": ..., "mce": ...}`` of the softmax of ``logits`` (N, K) against ``target`` (N,)."""
    classes = logits.shape[1]
    errors = {
        name: MulticlassCalibrationError(classes, n_bins=bins, norm=norm).to(logits.device)
        for name, norm in (("ece", "l1"), ("mce", "max"))
    }
    for rows in row_blocks(logits.shape[0], classes * logits.element_size(), memory_mb):
        probs = logits[rows].softmax(dim=1)
        for metric in errors.values():
            metric.update(probs, target[rows])
    return {name: metric.compute() for name, metric in errors.items()}

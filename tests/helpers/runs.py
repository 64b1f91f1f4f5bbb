"""What the tests read back from a finished run."""

from __future__ import annotations

import torch


def loaded_test_scores(module, data) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores (N, K), labels (N,))`` of a loaded model on its data's test split, in the
    test loader's order, as the run's own test read them."""
    data.setup("test")
    scores, labels = [], []
    with torch.no_grad():
        for x, y in data.test_dataloader():
            scores.append(module(data.normalize(x))[1]), labels.append(y)
    return torch.cat(scores), torch.cat(labels)

"""Sample weights of the OT distances: each class's distribution over its samples.

``uniform`` gives every sample of a class the same mass (the default). The OT-CPCC authors
(uiuctml/OTCPCC, ``loss.py``, ``emd_weights``) also weight a sample by the softmax, over its
class's samples in the batch, of its distance to the class mean: ``far`` (their 1,
``softmax(+d)``) puts more mass on the samples far from the mean, ``near`` (their 2,
``softmax(-d)``) on those close to it. The weights are computed without gradient, as there:
they shape the plan, and the plan is a constant of the envelope gradient.
"""

from __future__ import annotations

import torch

from hierot.distances.batch import ClassBatch

WEIGHTS = ("uniform", "far", "near")


def check_weights(method: str, weights: object) -> None:
    if weights not in WEIGHTS:
        raise ValueError(f"{method}: weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")


@torch.no_grad()
def sample_weights(batch: ClassBatch, weights: str) -> torch.Tensor:
    """(B,) mass of each sample within its class (each class's masses sum to 1)."""
    z, inverse, k = batch.z.detach(), batch.inverse, batch.num_classes
    if weights == "uniform":
        return 1 / batch.counts[inverse].to(z.dtype)
    means = batch.class_means.detach()
    dist = torch.linalg.vector_norm(z - means[inverse], dim=1)
    x = dist if weights == "far" else -dist
    # a softmax per class: shifted by the class's largest exponent, as torch.softmax does
    top = torch.full((k,), -torch.inf, dtype=z.dtype, device=z.device)
    top = top.scatter_reduce(0, inverse, x, "amax")
    e = torch.exp(x - top[inverse])
    total = torch.zeros(k, dtype=z.dtype, device=z.device).index_add(0, inverse, e)
    return e / total[inverse]


def pair_weights(batch: ClassBatch, weights: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, n) weights of the two classes of each pair of ``batch``, in ``members`` order and
    0 on padding (``n`` at least the largest class of the pairs)."""
    w = sample_weights(batch, weights)
    table = torch.where(batch.mask, w[batch.members], w.new_zeros(()))
    return table[batch.pair_a, :n], table[batch.pair_b, :n]

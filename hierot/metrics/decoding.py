"""How predictions are read from a classifier's scores.

- ``argmax``: classes ranked by score.
- ``crm``: conditional risk minimisation (Karthik et al., ICLR 2021): classes ranked by their
  expected tree cost ``sum_j p_j C[j, k]`` under the softmax probabilities, lowest first.
- ``hie``: the post-hoc adjustment of hierarchical ensembles (Jain et al., NeurIPS 2023,
  ``post_hoc_adjustment``): ``p'(y) ~ p(y) p(parent(y))``, the parent's probability the summed
  softmax probability of its classes under the same model, or under a second model
  (``parent_logits``: the paper's setting, a coarse model beside the fine one).
- ``marginal_predictions``: a coarse level's prediction as the argmax of the summed fine
  probabilities under each of its concepts (HierarchyCPCC, OTCPCC).

Every function works on row blocks so that its extra memory stays within ``memory_mb``
whatever the number of samples: at 10 000 classes a block is a few dozen rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

DECODINGS = ("argmax", "crm", "hie")
DEFAULT_MEMORY_MB = 256


def check_decode(decode: object, key: str = "decode") -> str:
    """``decode`` if it names a decoding, else a one-line ``ValueError``."""
    if decode not in DECODINGS:
        raise ValueError(f"{key}: unknown decoding {decode!r}; available: {', '.join(DECODINGS)}")
    return str(decode)


def row_blocks(n: int, row_bytes: int, memory_mb: float) -> Iterator[slice]:
    """Slices of ``range(n)`` whose blocks take at most ``memory_mb`` at ``row_bytes`` each
    (at least one row per block)."""
    rows = max(1, int(memory_mb * 2**20) // max(row_bytes, 1))
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


def crm_scores(probs: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """Minus the expected cost of predicting each class: ``-(probs @ cost)``, so that the
    highest score is the CRM prediction.

    Args:
        probs: (N, K) class probabilities; cost: (K, K) costs ``C[true, predicted]``.
    """
    return -(probs @ cost.to(probs))


def hie_probabilities(
    probs: torch.Tensor, parent: torch.Tensor, parent_probs: torch.Tensor | None = None
) -> torch.Tensor:
    """Hierarchical ensembles' adjusted probabilities ``p(y) p(parent(y))``, normalised to sum
    1 over the classes, the parent's probability the summed ``parent_probs`` of its classes
    (default ``probs``: the same model's).

    Args:
        probs: (N, K) class probabilities; parent: (K,) index of every class's parent
            (``Hierarchy.parent_map``); parent_probs: (N, K) another model's class
            probabilities for the same samples, or None.
    """
    parent = parent.to(probs.device)
    marginal = probs if parent_probs is None else parent_probs.to(probs)
    parents = probs.new_zeros(probs.shape[0], int(parent.max()) + 1).index_add_(1, parent, marginal)
    adjusted = probs * parents[:, parent]
    return adjusted / adjusted.sum(dim=1, keepdim=True)


def check_decoding_inputs(
    decode: str, cost: torch.Tensor | None, parent: torch.Tensor | None
) -> None:
    """A one-line ``ValueError`` when ``decode`` lacks what it reads (``crm``: a cost matrix,
    ``hie``: every class's parent)."""
    check_decode(decode)
    if decode == "crm" and cost is None:
        raise ValueError("crm decoding needs a (K, K) cost matrix")
    if decode == "hie" and parent is None:
        raise ValueError("hie decoding needs the (K,) parent of every class")


def decoded_scores(
    logits: torch.Tensor,
    decode: str,
    cost: torch.Tensor | None = None,
    parent: torch.Tensor | None = None,
    parent_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, K) scores whose descending order is ``decode``'s ranking of the classes: the logits
    (``argmax``), minus the expected cost (``crm``) or the adjusted probabilities (``hie``;
    the parents' probabilities from ``parent_logits``' softmax where given, another model's
    scores of the same rows). Whole rows at once: callers pass a block of rows
    (``row_blocks``)."""
    if decode == "crm":
        return crm_scores(logits.softmax(dim=1), cost)  # type: ignore[arg-type]
    if decode == "hie":
        other = None if parent_logits is None else parent_logits.softmax(dim=1)
        return hie_probabilities(logits.softmax(dim=1), parent, other)  # type: ignore[arg-type]
    return logits


def ranked_classes(
    logits: torch.Tensor,
    k: int,
    decode: str = "argmax",
    cost: torch.Tensor | None = None,
    memory_mb: float = DEFAULT_MEMORY_MB,
    parent: torch.Tensor | None = None,
    parent_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, k) long tensor: the k best classes of every sample, best first.

    Args:
        logits: (N, K) scores (``crm`` and ``hie`` take their softmax).
        decode: ``argmax``, ``crm`` or ``hie``; ``crm`` needs ``cost`` (K, K), ``hie`` the
            ``parent`` (K,) of every class (``Hierarchy.parent_map``).
        parent_logits: (N, K) another model's scores of the same samples, whose summed
            softmax gives ``hie`` the parents' probabilities (default: ``logits``').
    """
    check_decoding_inputs(decode, cost, parent)
    n, classes = logits.shape
    k = min(k, classes)
    out = torch.empty(n, k, dtype=torch.long, device=logits.device)
    if cost is not None:
        cost = cost.to(device=logits.device, dtype=logits.dtype)
    if parent is not None:
        parent = parent.to(logits.device)
    # A block holds its probabilities, its scores and (hie) its parents' probabilities and
    # the other model's: at most four (rows, K) tensors.
    for rows in row_blocks(n, 4 * classes * logits.element_size(), memory_mb):
        other = None if parent_logits is None else parent_logits[rows].to(logits.device)
        scores = decoded_scores(logits[rows], decode, cost, parent, other)
        out[rows] = scores.topk(k, dim=1).indices
    return out


def marginal_predictions(
    logits: torch.Tensor, fine_to_level: torch.Tensor, memory_mb: float = DEFAULT_MEMORY_MB
) -> torch.Tensor:
    """(N,) the concept of one level whose classes' summed softmax probability is highest.

    Args:
        logits: (N, K) fine scores; fine_to_level: (K,) concept index of every class
            (``Hierarchy.level_map(level)[1]``).
    """
    n, classes = logits.shape
    fine_to_level = fine_to_level.to(logits.device)
    concepts = int(fine_to_level.max()) + 1
    out = torch.empty(n, dtype=torch.long, device=logits.device)
    for rows in row_blocks(n, (classes + concepts) * logits.element_size(), memory_mb):
        probs = logits[rows].softmax(dim=1)
        summed = probs.new_zeros(probs.shape[0], concepts).index_add_(1, fine_to_level, probs)
        out[rows] = summed.argmax(dim=1)
    return out

"""``haf``: Hierarchy-Aware Features (Garg et al., ECCV 2022; ``07Agarg/HAF``,
``util/arch/custom_wideresnet.py:WideResNet_ours_l5_cejsd_wtconst_dissim`` and its iNat-19
and tieredImageNet twins in ``util/arch/custom_resnet18.py``, with
``util/loss_function/jsd.py`` and ``MBM/better_mistakes/util/dissimilar_pairs.py``): one
weight-normalised head per level, the fine level's cross-entropy, a Jensen-Shannon
consistency between each level's distribution and the finer level's summed to it, a cosine
between each parent's weights and its children's summed, and a margin term that pushes the
distributions of dissimilar pairs apart."""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from hierot.errors import require_integer, require_number
from hierot.hierarchy import Hierarchy
from hierot.objectives.neck import build_neck, check_neck
from hierot.objectives.registry import Objective, register_objective


def check_haf(
    hierarchy: Hierarchy | None,
    jsd: float,
    geometric: float,
    dissimilar: float,
    margin: float,
    pair_slots: int,
    margin_from: int,
    neck: int | None = None,
) -> None:
    for key, value in (("jsd", jsd), ("geometric", geometric), ("dissimilar", dissimilar),
                       ("margin", margin)):  # fmt: skip
        if not math.isfinite(require_number(value, f"haf: {key}", 0)):
            raise ValueError(f"haf: {key} must be finite, got {value!r}")
    require_integer(pair_slots, "haf: pair_slots", 1)
    require_integer(margin_from, "haf: margin_from", 1)
    check_neck(neck, "haf")
    if hierarchy is not None and hierarchy.depth > 1 and margin_from > hierarchy.depth - 1:
        raise ValueError(
            f"haf: margin_from must be a level above the classes, 1 .. {hierarchy.depth - 1} "
            f"(the tree has {hierarchy.depth} levels), got {margin_from}"
        )


def level_parents(hierarchy: Hierarchy) -> list[torch.Tensor]:
    """For the levels ``2 .. depth``: ``(n_l,)`` the index, among level l - 1's concepts, of
    each level-l concept's parent (a leaf shallower than l is its own concept at l, under
    itself at l - 1)."""
    maps = list(hierarchy.label_maps().values())
    return [
        torch.zeros(int(fine.max()) + 1, dtype=torch.long).scatter_(0, fine, coarse)
        for coarse, fine in pairwise(maps)
    ]


def adjacent_pair_counts(
    labels: torch.Tensor, order: torch.Tensor, slots: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference's dissimilar pairs (``create_dissimilar_pairs``) as counts, on the
    device: ``labels`` ``(L, B)`` the samples' concepts at L levels, ``order`` ``(L, B)`` a
    permutation of the samples per level (the reference's ``random.shuffle``).

    The pairs are the neighbours ``(order[j], order[j + 1])`` whose labels differ; the
    reference copies them, in order and over again (up to B passes), into ``slots`` slots.
    Returns ``(first, second, counts, filled)``: ``(L, B - 1)`` the neighbours, how many
    slots each fills (0 for a pair of one label), and ``(L,)`` the slots filled,
    ``min(slots, B m)`` for m dissimilar neighbours."""
    first, second = order[:, :-1], order[:, 1:]
    differ = labels.gather(1, first) != labels.gather(1, second)
    m = differ.sum(1, keepdim=True)
    filled = torch.clamp(order.shape[1] * m, max=slots)
    rank = differ.cumsum(1) - 1  # the pair's place among the dissimilar ones
    # slot t holds the pair of rank t mod m: rank r fills the t < filled with t = r mod m
    counts = torch.where(differ & (rank < filled), (filled - 1 - rank) // m.clamp_min(1) + 1, 0)
    return first, second, counts, filled.squeeze(1)


def kl_to_log_mix(p: torch.Tensor, log_mix: torch.Tensor) -> torch.Tensor:
    """``sum p (log p - log_mix)`` over the last dimension, ``F.kl_div(log_mix, p)``'s value
    (a term with p = 0 is 0) without its gradient there: kl_div's is ``log p + 1``, -inf
    at p = 0, which a softmax's Jacobian (0 there) turns into NaN for every logit of the
    row. Here a p = 0 contributes 0, the limit."""
    safe = torch.where(p > 0, p, torch.ones_like(p))
    return (p * (safe.log() - log_mix)).sum(-1)


def margin_hinges(p: torch.Tensor, q: torch.Tensor, margin: float) -> torch.Tensor:
    """``(...)``: ``JSDDissimilarLoss`` of each pair of distributions (the last dimension),
    ``(relu(margin - KL(p || m)) + relu(margin - KL(q || m))) / 2`` for m their mean,
    clamped to ``[1e-7, 1]`` before its log as the reference's."""
    log_mix = torch.clamp(0.5 * (p + q), 1e-7, 1).log()
    return 0.5 * (
        F.relu(margin - kl_to_log_mix(p, log_mix)) + F.relu(margin - kl_to_log_mix(q, log_mix))
    )


def jensen_shannon(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``JSDSimilarLoss``: ``(KL(p || m) + KL(q || m)) / 2`` for m their mean, clamped to
    ``[1e-7, 1]`` before its log, averaged over the rows."""
    log_mix = torch.clamp(0.5 * (p + q), 1e-7, 1).log()
    return 0.5 * (kl_to_log_mix(p, log_mix) + kl_to_log_mix(q, log_mix)).mean()


@register_objective("haf", check=check_haf)
class HierarchyAwareFeatures(Objective):
    """``CE(h_D(z), y) + jsd sum_l JSD(P_l, Q_l) - geometric sum_l mean_c cos(w_{l,c},
    sum_{c' child of c} w_{l+1,c'}) + dissimilar sum_l M_l`` over the levels l above the
    classes, with ``h_l(z) = z normalize(W_l)^T + b_l`` (unit rows, as the reference's
    ``wtconst`` heads), ``Q_l`` its softmax and ``P_l`` the softmax of level l + 1 summed
    over each concept's children. The class scores are the fine head's logits; the model's
    own head is left untrained (``unused_parameters``).

    ``M_l`` is the reference's margin term on level l: ``pair_slots`` slots filled with the
    dissimilar neighbours of a random order of the batch (``adjacent_pair_counts``), each
    contributing ``margin_hinges`` of the two samples' ``Q_l``, an empty slot ``margin``,
    divided by ``pair_slots``. A KL to the mean of two distributions is at most log 2, so
    at the reference's margin of 3 every hinge is active: ``M_l`` is ``3 - (sum of the
    slots' JSDs) / pair_slots``. The pairs are drawn over the global batch under DDP
    (``batch_loss``), a fresh order per level and step.

    Args:
        jsd: weight of the consistency term (reference: 1).
        geometric: weight of the parent/children cosine, subtracted (reference: 1).
        dissimilar: weight of the margin term (reference: 1; 0 with ``geometric`` 0: the
            reference's ``cejsd`` variant, but with weight-normalised heads).
        margin: the hinge's margin (reference: 3.0).
        pair_slots: the slots of dissimilar pairs (the reference's ``limit``: 256).
        margin_from: the first level whose head gets the margin term, down to the level
            above the classes (reference: 1 on CIFAR-100's 5 levels, 2 on iNat-19's 7, 5 on
            tieredImageNet's 12).
        neck: the hidden units of the references' ResNet-18 neck between the features and
            the heads, ``BatchNorm1d``, ``Linear(d, neck)``, ``BatchNorm1d``, ELU
            (``hierot.objectives.neck``; the iNat-19 and tieredImageNet models: 600, the
            CIFAR-100 WideResNet none); None or 0: the heads read the features. CPCC
            regularises the backbone's features, before the neck.
    """

    # the model's own head is never read: its parameters get no gradient
    unused_parameters = True

    def __init__(
        self,
        hierarchy: Hierarchy,
        num_features: int,
        jsd: float = 1.0,
        geometric: float = 1.0,
        dissimilar: float = 1.0,
        margin: float = 3.0,
        pair_slots: int = 256,
        margin_from: int = 1,
        neck: int | None = None,
    ) -> None:
        super().__init__()
        check_haf(hierarchy, jsd, geometric, dissimilar, margin, pair_slots, margin_from, neck)
        self.jsd, self.geometric, self.dissimilar = float(jsd), float(geometric), float(dissimilar)
        self.margin, self.pair_slots = float(margin), int(pair_slots)
        maps = torch.stack(list(hierarchy.label_maps().values()))  # (D, K), the classes last
        self.register_buffer("maps", maps, persistent=False)
        for level, parent in enumerate(level_parents(hierarchy), start=2):
            self.register_buffer(f"parent{level}", parent, persistent=False)
        self.neck = build_neck(num_features, neck)
        width = self.neck.hidden if self.neck is not None else num_features
        self.heads = nn.ModuleList(nn.Linear(width, int(m.max()) + 1) for m in maps)
        # the levels of the margin term, 1-based: margin_from .. depth - 1
        self.margin_levels = list(range(margin_from, hierarchy.depth))
        self.batch_wide = self.dissimilar > 0 and bool(self.margin_levels)

    def neck_output(self, z: torch.Tensor, update: bool = False) -> torch.Tensor:
        """What the heads read: the neck's output on ``z``, or ``z`` without a neck. Only
        the loss's per-sample pass (``update``) moves the neck's running statistics."""
        return z if self.neck is None else self.neck(z, update)

    def head_logits(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """``(B, n_level)``: the logits of level ``level``'s head (1 the top level, depth
        the classes) on the heads' input ``x`` (``neck_output``), its weight rows
        normalised to unit length."""
        h = self.heads[level - 1]
        return F.linear(x, F.normalize(h.weight, dim=1), h.bias)

    def level_logits(self, z: torch.Tensor) -> dict[int, torch.Tensor]:
        """``{level: (B, concepts) logits}`` of the heads above the classes, levels
        ``1 .. depth - 1`` (concept indices as ``Hierarchy.level_map``): what
        ``hierot.evaluate``'s ``acc_<level>_head`` and ``acc_path`` read."""
        x = self.neck_output(z)
        return {level: self.head_logits(x, level) for level in range(1, len(self.heads))}

    def class_scores(self, z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.head_logits(self.neck_output(z), len(self.heads))

    def sample_loss(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.neck_output(z, update=True)
        outs = [self.head_logits(x, level) for level in range(1, len(self.heads) + 1)]
        loss = F.cross_entropy(outs[-1], y)
        probs = [F.softmax(o, dim=1) for o in outs]
        for level in range(2, len(outs) + 1):
            fine, coarse = probs[level - 1], probs[level - 2]
            parent = getattr(self, f"parent{level}")
            summed = fine.new_zeros(coarse.shape).index_add(1, parent, fine)
            loss = loss + self.jsd * jensen_shannon(summed, coarse)
        if self.geometric:
            loss = loss - self.geometric * self.weight_cosines().sum()
        return loss

    def weight_cosines(self) -> torch.Tensor:
        """``(depth - 1,)``: for each level l above the classes, the mean over its concepts
        of the cosine between a concept's unit weights and the sum of its children's."""
        w = [F.normalize(h.weight, dim=1) for h in self.heads]
        out = []
        for level in range(2, len(w) + 1):
            parent = getattr(self, f"parent{level}")
            summed = w[level - 2].new_zeros(w[level - 2].shape).index_add(0, parent, w[level - 1])
            cos = F.cosine_similarity(w[level - 2], F.normalize(summed, dim=1), dim=1, eps=1e-8)
            out.append(cos.mean())
        return torch.stack(out) if out else w[0].new_zeros(0)

    def pair_orders(self, levels: int, batch: int, device: torch.device) -> torch.Tensor:
        """``(levels, batch)``: an independent random permutation of the batch per level."""
        return torch.rand(levels, batch, device=device).argsort(1)

    def batch_loss(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        levels = self.margin_levels
        labels = self.maps[levels[0] - 1 : levels[-1]][:, y]  # (L, B)
        order = self.pair_orders(len(levels), y.shape[0], z.device)
        first, second, counts, filled = adjacent_pair_counts(labels, order, self.pair_slots)
        # the neck again, on the global batch: its statistics, the running ones left alone
        x = self.neck_output(z)
        loss = z.new_zeros(())
        for i, level in enumerate(levels):
            p = F.softmax(self.head_logits(x, level), dim=1)
            hinge = margin_hinges(p[first[i]], p[second[i]], self.margin)
            empty = (self.pair_slots - filled[i]) * self.margin
            loss = loss + ((counts[i] * hinge).sum() + empty) / self.pair_slots
        return self.dissimilar * loss

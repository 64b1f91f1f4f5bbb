"""07Agarg/HAF (Hierarchy-Aware Features, Garg et al., ECCV 2022) transcribed with its loops,
in float64:

- ``JSDSimilarLoss`` and ``JSDDissimilarLoss``: util/loss_function/jsd.py, as written.
- ``create_dissimilar_pairs``: MBM/better_mistakes/util/dissimilar_pairs.py, as written
  (``random.shuffle``, the 256 slots, the outer loop that rescans the same neighbours).
- ``haf_reference``: the loss of ``WideResNet_ours_l5_cejsd_wtconst_dissim.forward``
  (util/arch/custom_wideresnet.py; the iNat-19 and tieredImageNet models of
  util/arch/custom_resnet18.py are the same with the margin term on fewer levels), its five
  hand-unrolled levels as a loop over the tree's levels; the backbone is left out (it takes
  the features ``x``), and so are the accuracies and the ``.item()`` logging. The
  ``l{i}_to_l{i+1}`` maps (a parent's list of children) come from a hierot ``Hierarchy``.
- ``features_1``: the neck of util/arch/custom_resnet18.py's ResNet-18 models (e.g.
  ``ResNet18_ours_l7_cejsd_wtconst_dissim.__init__``), as written; their ``forward`` runs
  ``x = self.features_1(x)`` on the max-pooled features, then the loss above on ``x``.
"""

from __future__ import annotations

import random
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hierot.hierarchy import Hierarchy

criterion = nn.CrossEntropyLoss()


class JSDSimilarLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.margin = 1.0

    def forward(self, p, q):
        mix = torch.clamp(0.5 * (p + q), 1e-7, 1).log()
        loss = F.kl_div(mix, p, reduction="batchmean")
        loss += F.kl_div(mix, q, reduction="batchmean")
        loss = 0.5 * loss
        return loss


class JSDDissimilarLoss(nn.Module):
    def __init__(self, margin):
        super().__init__()
        self.margin = margin

    def forward(self, p, q, device, margin):
        mix = torch.clamp(0.5 * (p + q), 1e-7, 1).log()
        # the reference's float clip; float64 here so that max() keeps the inputs' dtype
        clip = torch.from_numpy(np.array([0])).double().to(device)
        kl_p = F.kl_div(mix, p, reduction="none")
        kl_q = F.kl_div(mix, q, reduction="none")
        loss = torch.max((margin - kl_p.sum(dim=1)), clip).mean()
        loss += torch.max((margin - kl_q.sum(dim=1)), clip).mean()
        loss = 0.5 * loss
        return loss


def create_dissimilar_pairs(targets, probabs, device, limit=256):
    count = 0
    temp = list(zip(targets, probabs))
    random.shuffle(temp)
    targets, probabs = zip(*temp)
    targets = torch.stack(targets)
    probabs = torch.stack(probabs)
    dissimilar_pairs = torch.zeros((limit, 2, probabs.size()[1]), dtype=probabs.dtype).to(device)
    for _i in range(len(targets)):  # the reference's i: each pass rescans the same pairs
        if count >= limit:
            break
        for j in range(len(targets) - 1):
            if count >= limit:
                break
            if targets[j] != targets[j + 1]:
                dissimilar_pairs[count][0] = probabs[j]
                dissimilar_pairs[count][1] = probabs[j + 1]
                count = count + 1
    return dissimilar_pairs


def features_1(num_ftrs: int, feature_size: int) -> nn.Sequential:
    """``self.features_1`` (``num_ftrs = 512``, ``feature_size = 600``), in float64."""
    return nn.Sequential(
        nn.BatchNorm1d(num_ftrs),
        nn.Linear(num_ftrs, feature_size),
        nn.BatchNorm1d(feature_size),
        nn.ELU(inplace=True),
    ).double()


def children_maps(hierarchy: Hierarchy) -> list[list[list[int]]]:
    """The reference's ``map_l{i}_to_l{i+1}()`` for i = 1 .. depth - 1: for each concept of
    level i (hierot's ``level_map`` order), the indices of its children at level i + 1."""
    maps = list(hierarchy.label_maps().values())
    out = []
    for coarse, fine in pairwise(maps):
        children = [[] for _ in range(int(coarse.max()) + 1)]
        for c, f in sorted({(int(c), int(f)) for c, f in zip(coarse, fine, strict=True)}):
            children[c].append(f)
        out.append(children)
    return out


def level_targets(hierarchy: Hierarchy, targets: torch.Tensor) -> list[torch.Tensor]:
    """``get_targets``: the samples' concepts at the levels 1 .. depth - 1."""
    return [m[targets] for m in list(hierarchy.label_maps().values())[:-1]]


def haf_reference(hierarchy: Hierarchy, x: torch.Tensor, classifiers: list[nn.Linear],
                  targets: torch.Tensor, **options) -> torch.Tensor:  # fmt: skip
    """``self.loss = ce_loss + jsd_loss - l2_weight_loss + dissim_loss``."""
    ce_loss, jsd_loss, l2_weight_loss, dissim_loss = haf_reference_terms(
        hierarchy, x, classifiers, targets, **options
    )
    return ce_loss + jsd_loss - l2_weight_loss + dissim_loss


def haf_reference_terms(
    hierarchy: Hierarchy,
    x: torch.Tensor,
    classifiers: list[nn.Linear],
    targets: torch.Tensor,
    margin_from: int = 1,
    limit: int = 256,
    margin: float = 3.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ce_loss, jsd_loss, l2_weight_loss, dissim_loss)`` of the reference's forward on
    features ``x`` (the terms it logs); ``classifiers[i - 1]`` is ``self.classifier_i[0]``
    (level i, the classes last). The margin term covers the levels ``margin_from ..
    depth - 1`` (the CIFAR-100 model: all of them), drawn in that order, one
    ``random.shuffle`` each."""
    device = x.device
    depth = len(classifiers)
    simloss = JSDSimilarLoss()
    dissimiloss = JSDDissimilarLoss(margin=margin)
    l_to_next = children_maps(hierarchy)
    l_targets = level_targets(hierarchy, targets)
    # ------------------------------------------------------------------------------------------
    classifier_weight = [F.normalize(c.weight, p=2, dim=1) for c in classifiers]
    # ------------------------------------------------------------------------------------------
    out = [torch.mm(x, w.t()) + c.bias for w, c in zip(classifier_weight, classifiers, strict=True)]
    ce_loss = criterion(out[-1], targets)
    # ------------------------------------------------------------------------------------------
    out = [F.softmax(o, dim=1) for o in out]
    classifier_weight = [F.normalize(w, p=2, dim=1) for w in classifier_weight]
    # ------------------------------------------------------------------------------------------
    dissim_loss = torch.tensor(0).to(device)
    for i in range(margin_from, depth):  # l1 .. l4 on CIFAR-100
        dissimilar_pairs = create_dissimilar_pairs(l_targets[i - 1], out[i - 1], device, limit)
        dissim_loss = dissim_loss + dissimiloss(
            dissimilar_pairs[:, 0, :], dissimilar_pairs[:, 1, :], device, margin=margin
        )
    # ------------------------------------------------------------------------------------------
    cosine_sim = nn.CosineSimilarity(dim=1, eps=1e-8)
    l2_weight_loss = torch.tensor(0).to(device)
    for i in range(depth - 1, 0, -1):  # l2_weight_4_5 .. l2_weight_1_2
        cl_weight_hat = torch.zeros_like(classifier_weight[i - 1]).to(device)
        for li in range(len(l_to_next[i - 1])):
            cl_weight_hat[li, :] = torch.sum(classifier_weight[i][l_to_next[i - 1][li], :], dim=0)
        cl_weight_hat = F.normalize(cl_weight_hat, p=2, dim=1)
        l2_weight_loss = l2_weight_loss + torch.mean(
            cosine_sim(classifier_weight[i - 1], cl_weight_hat)
        )
    # ------------------------------------------------------------------------------------------
    jsd_loss = torch.tensor(0).to(device)
    for i in range(depth - 1, 0, -1):  # jsd_level_4_5 .. jsd_level_1_2
        p_hat = torch.zeros_like(out[i - 1]).to(device)
        for li in range(len(l_to_next[i - 1])):
            p_hat[:, li] = torch.sum(out[i][:, l_to_next[i - 1][li]], dim=1)
        jsd_loss = jsd_loss + simloss(p_hat, out[i - 1])
    # ------------------------------------------------------------------------------------------
    return ce_loss, jsd_loss, l2_weight_loss, dissim_loss


def shuffles(seed: int, levels: int, batch: int) -> torch.Tensor:
    """``(levels, batch)``: the orders that ``levels`` calls of ``create_dissimilar_pairs``
    draw after ``random.seed(seed)`` (a shuffle's swaps depend only on the list's length):
    row l lists, for each position of the shuffled batch, the sample it holds."""
    random.seed(seed)
    out = []
    for _ in range(levels):
        order = list(range(batch))
        random.shuffle(order)
        out.append(order)
    return torch.tensor(out, dtype=torch.long)

"""The reference repositories' objectives, transcribed: their loops and their quirks kept, so
that hierot's tensor code is checked against what the papers ran.

- ``hxe_reference``: making-better-mistakes ``HierarchicalLLLoss`` + ``get_exponential_weighting``
  (better_mistakes/model/losses.py, better_mistakes/trees.py), its nltk tree positions
  replaced by root paths.
- ``sumloss_reference``: HierarchyCPCC ``get_layer_prob_from_fine`` (utils.py) and the
  ``sumloss`` branch of ``get_different_loss`` (main.py), applied at every coarse level.
- ``soft_labels_reference``: making-better-mistakes ``make_all_soft_labels`` /
  ``make_batch_soft_labels`` (better_mistakes/model/labels.py) with HierarchyCPCC's
  ``nn.KLDivLoss(reduction="batchmean")(prob.log(), target)``.
- ``quadruplet_reference``: HierarchyCPCC ``QuadrupletLoss.forward`` (loss.py).
- ``group_lasso_reference``: HierarchyCPCC ``GroupLasso`` (loss.py).
- ``lca_height_reference``: the height of each pair's lowest common ancestor, by walking the
  paths.
"""

from __future__ import annotations

from math import exp, fsum

import numpy as np
import torch
import torch.nn.functional as F

from hierot.hierarchy import Hierarchy


def _height(hierarchy: Hierarchy, node: str) -> int:
    kids = hierarchy.children(node)
    return 1 + max(_height(hierarchy, c) for c in kids) if kids else 0


def lca_height_reference(hierarchy: Hierarchy, i: int, j: int) -> int:
    a, b = hierarchy.path(hierarchy.leaves[i]), hierarchy.path(hierarchy.leaves[j])
    lca = [x for x, y in zip(a, b) if x == y][-1]
    return _height(hierarchy, lca)


def _leaves_under(hierarchy: Hierarchy, node: str) -> list[int]:
    if not hierarchy.children(node):
        return [hierarchy.index(node)]
    return [i for c in hierarchy.children(node) for i in _leaves_under(hierarchy, c)]


def hxe_reference(
    hierarchy: Hierarchy, logits: torch.Tensor | None, target: torch.Tensor | None,
    alpha: float, normalize: bool, prepare_only: bool = False, dtype: torch.dtype = torch.float32,
):  # fmt: skip
    """``HierarchicalCrossEntropyLoss(hierarchy, classes, get_exponential_weighting(...))``.

    Edges are named by their lower node (its tree position); a node's weight is
    exp(-alpha * len(position)); the last denominator of every path is the sum of all leaves;
    ``num != 0`` skips terms whose probability sum underflowed. ``prepare_only``: the
    constructor's work only, returning the loss as ``fn(logits, target)`` (the reference
    builds its one-hot tensors once).
    """
    if logits is not None:
        dtype = logits.dtype
    nodes = hierarchy.nodes
    weight = {n: exp(-alpha * hierarchy.node_depth(n)) for n in nodes}
    if normalize:
        total = fsum(weight.values())
        weight = {n: w / total for n, w in weight.items()}
    positions_edges = [n for n in nodes if n != hierarchy.root]
    index_map_edges = {n: i for i, n in enumerate(positions_edges)}
    edges_from_leaf = [
        [index_map_edges[n] for n in hierarchy.path(leaf)[1:][::-1]] for leaf in hierarchy.leaves
    ]
    num_edges = max(len(p) for p in edges_from_leaf)
    leaf_indices = [_leaves_under(hierarchy, n) for n in positions_edges]
    k = hierarchy.num_classes
    onehot_den = torch.zeros(k, k, num_edges, dtype=dtype)
    onehot_num = torch.zeros(k, k, num_edges, dtype=dtype)
    weights = torch.zeros(k, num_edges, dtype=dtype)
    for i in range(k):
        for j, e in enumerate(edges_from_leaf[i]):
            onehot_num[i, leaf_indices[e], j] = 1.0
            weights[i, j] = weight[positions_edges[e]]
        for j, e in enumerate(edges_from_leaf[i][1:]):
            onehot_den[i, leaf_indices[e], j] = 1.0
        onehot_den[i, :, j + 1] = 1.0

    def forward(logits, target):
        inputs = torch.softmax(logits, 1).unsqueeze(1)
        num = torch.squeeze(torch.bmm(inputs, onehot_num[target]), 1)
        den = torch.squeeze(torch.bmm(inputs, onehot_den[target]), 1)
        idx = num != 0
        num = num.clone()
        num[idx] = -torch.log(num[idx] / den[idx])
        num = torch.sum(torch.flip(weights[target] * num, dims=[1]), dim=1)
        return torch.mean(num)

    return forward if prepare_only else forward(logits, target)


def get_layer_prob_from_fine(prob_fine: torch.Tensor, layer_fine_map: np.ndarray) -> torch.Tensor:
    prob_layer = []
    num_layer_targets = len(np.unique(layer_fine_map))
    for cls in range(num_layer_targets):
        members = torch.tensor((layer_fine_map == cls).nonzero()[0])
        prob_layer.append(torch.sum(torch.index_select(prob_fine, 1, members), 1, keepdim=True))
    return torch.cat(prob_layer, dim=1)


def sumloss_reference(
    hierarchy: Hierarchy, logits: torch.Tensor, target: torch.Tensor, weights: list[float]
) -> torch.Tensor:
    """``criterion_ce(output_fine, target_fine) + F.nll_loss(torch.log(prob_coarse),
    target_coarse)`` with one such term per coarse level, each weighted."""
    loss = weights[-1] * F.cross_entropy(logits, target)
    prob_fine = F.softmax(logits, dim=1)
    for w, lvl in zip(weights, hierarchy.levels[:-1], strict=False):
        layer_map = hierarchy.level_map(lvl)[1].numpy()
        prob_coarse = get_layer_prob_from_fine(prob_fine, layer_map)
        loss = loss + w * F.nll_loss(torch.log(prob_coarse), torch.tensor(layer_map)[target])
    return loss


def make_all_soft_labels(distances, classes, hardness):
    distance_matrix = torch.tensor(
        [[distances[c1, c2] for c1 in classes] for c2 in classes], dtype=torch.float64
    )
    max_distance = torch.max(distance_matrix)
    distance_matrix /= max_distance
    return torch.exp(-hardness * distance_matrix) / torch.sum(
        torch.exp(-hardness * distance_matrix), dim=0
    )


def make_batch_soft_labels(all_soft_labels, target, num_classes, batch_size):
    soft_labels = torch.zeros((batch_size, num_classes), dtype=all_soft_labels.dtype)
    for i in range(batch_size):
        soft_labels[i, :] = all_soft_labels[:, target[i]]
    return soft_labels


def soft_labels_reference(
    hierarchy: Hierarchy, logits: torch.Tensor, target: torch.Tensor, beta: float
) -> torch.Tensor:
    k = hierarchy.num_classes
    distances = {(i, j): lca_height_reference(hierarchy, i, j) for i in range(k) for j in range(k)}
    all_soft = make_all_soft_labels(distances, list(range(k)), beta).to(logits.dtype)
    target_distribution = make_batch_soft_labels(all_soft, target, k, len(target))
    prob_fine = F.softmax(logits, dim=1)
    return torch.nn.KLDivLoss(reduction="batchmean")(prob_fine.log(), target_distribution)


def quadruplet_reference(
    representation: torch.Tensor, target_fine: torch.Tensor, fine2coarse: np.ndarray,
    m1: float = 0.25, m2: float = 0.15,
) -> torch.Tensor | int:  # fmt: skip
    """``QuadrupletLoss(dataset, m1, m2).forward``. Its ``memo`` is keyed by ``t.item()``
    but looked up with the tensor ``t``, which hashes by identity: every anchor recomputes
    its candidates, so the cache never changes the result (kept as written)."""

    def l2(x1, x2):
        return (x1 - x2).pow(2).sum()

    in_coarse = 0
    out_coarse = 0
    memo = dict()
    valid_quads = 0
    pairwise_distM = torch.cdist(representation, representation) ** 2
    for idx, t in enumerate(target_fine):
        if t not in memo:
            t = t.item()
            r_coarse_cls = fine2coarse[t]
            same_coarse_idx = (fine2coarse == r_coarse_cls).nonzero()[0]
            p_minus_maps = torch.zeros((len(target_fine),))
            negative_maps = torch.ones((len(target_fine),))
            for a in same_coarse_idx:
                if a != t:
                    p_minus_maps += target_fine == a
                negative_maps *= target_fine != a
            all_r = target_fine == t
            all_r[idx] = False
            try_all_p_plus = all_r.nonzero()
            try_all_p_minus = p_minus_maps.nonzero()
            try_all_negative = negative_maps.nonzero()
            if len(try_all_p_plus) == 0 or len(try_all_p_minus) == 0 or len(try_all_negative) == 0:
                memo[t] = None
            else:
                memo[t] = (try_all_p_plus[:, 0], try_all_p_minus[:, 0], try_all_negative[:, 0])
        if memo[t] is None:
            continue
        valid_quads += 1
        r = idx
        p_pluss, p_minuss, ns = memo[t]
        p_plus = p_pluss[range(len(p_pluss))[0]]
        distance_positive = l2(representation[r], representation[p_plus])
        p_minus_losses = torch.relu(distance_positive - pairwise_distM[p_minuss, r] + m1 - m2)
        p_minus = p_minuss[torch.argmax(p_minus_losses)]
        distance_pos_coarse = l2(representation[r], representation[p_minus])
        n_losses = torch.relu(distance_pos_coarse - pairwise_distM[ns, r] + m2)
        n = ns[torch.argmax(n_losses)]
        distance_neg_coarse = l2(representation[r], representation[n])
        in_coarse_loss = torch.relu(distance_positive - distance_pos_coarse + m1 - m2)
        out_coarse_loss = torch.relu(distance_pos_coarse - distance_neg_coarse + m2)
        if in_coarse_loss == 0 or out_coarse_loss == 0:
            valid_quads -= 1
        else:
            in_coarse += in_coarse_loss
            out_coarse += out_coarse_loss
    if valid_quads == 0:
        return 0
    return (in_coarse + out_coarse) / (2 * valid_quads)


def group_lasso_reference(
    coarse_map: np.ndarray, fc_weights: torch.Tensor, fc_bias: torch.Tensor, lamb: float = 0.01
) -> torch.Tensor:
    root_gamma, coarse_gamma, fine_gamma = 2 * lamb, 4 * lamb, 6 * lamb
    groups = {root_gamma: [np.array(range(len(coarse_map)))], coarse_gamma: [], fine_gamma: []}
    for fine in range(len(coarse_map)):
        groups[coarse_gamma].append((coarse_map == fine).nonzero()[0])
    for fine in range(len(coarse_map)):
        groups[fine_gamma].append(np.array(fine))
    total = torch.tensor(0, dtype=fc_weights.dtype)
    for depth in groups:
        for group in groups[depth]:
            total = total + depth * torch.norm(fc_weights[group, :]) ** 2
            total = total + depth * torch.norm(fc_bias[group]) ** 2
    return total

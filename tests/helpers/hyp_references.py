"""HypStructure's CPCC (uiuctml/HypStructure loss.py ``CPCCLoss.forward``) and the geometry it
calls (geom/poincare.py, geom/pmath.py, geom/nn.py ``ToPoincare``), transcribed with their
loops and constants; and HierarchyCPCC's ``poincare`` class distance (loss.py).

``quirks=False`` sets the constants that change values to 0: the ``+ 1e-5`` in pmath's
batched Mobius addition and in ``ToPoincare``'s clipping norm. Everything else is as written.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hierot.hierarchy import Hierarchy

MIN_NORM = 1e-15
BALL_EPS = {torch.float32: 4e-3, torch.float64: 1e-5}


# ---------------------------------------------------------------- geom/poincare.py
def poincare_project(x, eps=None):
    """``eps``: the radius margin; the reference's ``BALL_EPS[x.dtype]`` by default
    (hierot keeps float32's in every dtype)."""
    norm = x.norm(dim=-1, p=2, keepdim=True).clamp_min(MIN_NORM)
    maxnorm = 1 - (BALL_EPS[x.dtype] if eps is None else eps)
    return torch.where(norm > maxnorm, x / norm * maxnorm, x)


def poincare_expmap0(u, eps=None):
    u_norm = u.norm(dim=-1, p=2, keepdim=True).clamp_min(MIN_NORM)
    return poincare_project(torch.tanh(u_norm) * u / u_norm, eps)


def poincare_mobius_add(x, y):
    x2 = torch.sum(x * x, dim=-1, keepdim=True)
    y2 = torch.sum(y * y, dim=-1, keepdim=True)
    xy = torch.sum(x * y, dim=-1, keepdim=True)
    num = (1 + 2 * xy + y2) * x + (1 - x2) * y
    denom = 1 + 2 * xy + x2 * y2
    return num / denom.clamp_min(MIN_NORM)


def poincare_pairwise_distance(x):
    a, b = x.unsqueeze(-2), x.unsqueeze(-3)
    norm = poincare_mobius_add(-a, b).norm(dim=-1, p=2, keepdim=True)
    return (2.0 * torch.atanh(norm.clamp(-1 + MIN_NORM, 1 - MIN_NORM))).squeeze(-1)


# ---------------------------------------------------------------- geom/pmath.py
def pmath_tanh(x, clamp=15):
    return x.clamp(-clamp, clamp).tanh()


class Artanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x = x.clamp(-1 + 1e-5, 1 - 1e-5)
        ctx.save_for_backward(x)
        return (torch.log_(1 + x).sub_(torch.log_(1 - x))).mul_(0.5)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output / (1 - x**2)


class RiemannianGradient(torch.autograd.Function):
    c = 1

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        scale = (1 - RiemannianGradient.c * x.pow(2).sum(-1, keepdim=True)).pow(2) / 4
        return grad_output * scale


def pmath_project(x, c):
    norm = torch.clamp_min(x.norm(dim=-1, keepdim=True, p=2), 1e-5)
    maxnorm = (1 - 1e-3) / (c**0.5)
    return torch.where(norm > maxnorm, x / norm * maxnorm, x)


def pmath_expmap0(u, c):
    sqrt_c = c**0.5
    u_norm = torch.clamp_min(u.norm(dim=-1, p=2, keepdim=True), 1e-5)
    return pmath_tanh(sqrt_c * u_norm) * u / (sqrt_c * u_norm)


def p2k(x, c):
    return 2 * x / (1 + c * x.pow(2).sum(-1, keepdim=True))


def k2p(x, c):
    return x / (1 + torch.sqrt(1 - c * x.pow(2).sum(-1, keepdim=True)))


def poincare_mean(x, dim=0, c=1.0):
    x = p2k(x, c)
    lamb = 1 / torch.sqrt(1 - c * x.pow(2).sum(dim=-1, keepdim=True))
    mean = torch.sum(lamb * x, dim=dim, keepdim=True) / torch.sum(lamb, dim=dim, keepdim=True)
    return k2p(mean, c).squeeze(dim)


def mobius_addition_batch(x, y, c, quirks=True):
    xy = torch.einsum("ij,kj->ik", (x, y))
    x2 = x.pow(2).sum(-1, keepdim=True)
    y2 = y.pow(2).sum(-1, keepdim=True)
    num = 1 + 2 * c * xy + c * y2.permute(1, 0)
    num = num.unsqueeze(2) * x.unsqueeze(1)
    num = num + (1 - c * x2).unsqueeze(2) * y
    denom = 1 + 2 * c * xy + c**2 * x2 * y2.permute(1, 0)
    return num / (denom.unsqueeze(2) + (1e-5 if quirks else 0.0))


def dist_matrix(x, y, c=1.0, quirks=True):
    sqrt_c = c**0.5
    norm = torch.norm(mobius_addition_batch(-x, y, c, quirks), dim=-1)
    return 2 / sqrt_c * Artanh.apply(sqrt_c * norm)


def to_poincare(x, c, clip_r, riemannian=True, quirks=True):
    """geom/nn.py ``ToPoincare(c, riemannian, clip_r)`` without a trained origin."""
    if clip_r is not None:
        x_norm = torch.norm(x, dim=-1, keepdim=True) + (1e-5 if quirks else 0.0)
        x = x * torch.minimum(torch.ones_like(x_norm), clip_r / x_norm)
    out = pmath_project(pmath_expmap0(x, c), c)
    if riemannian:
        RiemannianGradient.c = c
        out = RiemannianGradient.apply(out)
    return out


# ---------------------------------------------------------------- loss.py CPCCLoss
def label_map_strings(hierarchy: Hierarchy) -> np.ndarray:
    """hierarchy/data.py ``get_label_mapping``: each class's path from the leaf up to the
    root, padded with '' in front to the longest path."""
    paths = [hierarchy.path(leaf)[::-1] for leaf in hierarchy.leaves]
    width = max(len(p) for p in paths)
    out = np.empty((len(paths), width), dtype=object)
    for i, p in enumerate(paths):
        out[i] = [""] * (width - len(p)) + p
    return out


def node_tree_distance(hierarchy: Hierarchy, a: str, b: str) -> float:
    pa, pb = hierarchy.path(a), hierarchy.path(b)
    shared = len([x for x, y in zip(pa, pb) if x == y])
    return (len(pa) - shared) + (len(pb) - shared)


def hypstructure_cpcc(
    hierarchy: Hierarchy, representations: torch.Tensor, targets_fine: torch.Tensor,
    distance_type: str, leaf_only: bool = False, hyp_c: float = 1.0, clip_r: float = 2.3,
    quirks: bool = True,
) -> torch.Tensor:  # fmt: skip
    """``CPCCLoss(dataset, args).forward`` (1 - CPCC; 1 on a degenerate batch)."""
    label_map_str = label_map_strings(hierarchy)
    if leaf_only:
        label_map_str = label_map_str[:, 0].reshape(-1, 1)
    str2int, int2str = {}, {}
    label_map_int = np.zeros(label_map_str.shape, dtype=int)
    for i in range(label_map_str.shape[0]):
        for j in range(label_map_str.shape[1]):
            string = label_map_str[i, j]
            if string not in str2int:
                str2int[string] = len(str2int)
                int2str[str2int[string]] = string
            label_map_int[i, j] = str2int[string]
    empty_int = str2int.get("", -1)
    targets = torch.tensor(label_map_int)[targets_fine]
    all_unique_int = [
        torch.unique(targets[:, col][targets[:, col] != empty_int])
        for col in range(targets.shape[1])
    ]
    all_unique_str, target_mean_list = [], []
    if distance_type == "poincare_mean":
        representations_poincare = poincare_expmap0(representations)
    for col, unique_values in enumerate(all_unique_int):
        for val in unique_values:
            rows = (targets[:, col] == val).nonzero(as_tuple=True)[0]
            if distance_type == "poincare_mean":
                column_mean = poincare_mean(
                    torch.index_select(representations_poincare, 0, rows), dim=0, c=1.0
                )
            else:
                column_mean = torch.mean(torch.index_select(representations, 0, rows), 0)
            target_mean_list.append(column_mean)
            all_unique_str.append(int2str[val.item()])
    sorted_sums = torch.stack(target_mean_list, 0)
    k = len(all_unique_str)
    condensed_idx = torch.triu_indices(k, k, offset=1)
    if distance_type == "l2":
        pairwise_dist = F.pdist(sorted_sums, p=2.0)
    elif distance_type == "l1":
        pairwise_dist = F.pdist(sorted_sums, p=1.0)
    elif distance_type == "poincare_exp_c":
        sorted_sums_exp = to_poincare(sorted_sums, hyp_c, clip_r, quirks=quirks)
        matrix = dist_matrix(sorted_sums_exp, sorted_sums_exp, c=hyp_c, quirks=quirks)
        pairwise_dist = matrix[condensed_idx[0], condensed_idx[1]]
    elif distance_type == "poincare_mean":
        matrix = poincare_pairwise_distance(sorted_sums)
        pairwise_dist = matrix[condensed_idx[0], condensed_idx[1]]
    else:
        raise ValueError(distance_type)
    tree_pairwise_dist = torch.tensor(
        [node_tree_distance(hierarchy, all_unique_str[i], all_unique_str[j])
         for i in range(k) for j in range(i + 1, k)],
        dtype=pairwise_dist.dtype,
    )  # fmt: skip
    res = 1 - torch.corrcoef(torch.stack([pairwise_dist, tree_pairwise_dist], 0))[0, 1]
    if torch.isnan(res):
        return torch.tensor(1)
    return res


def hierarchy_cpcc_poincare(means: torch.Tensor) -> torch.Tensor:
    """HierarchyCPCC loss.py ``CPCCLoss`` with ``distance_type='poincare'``: the (P,) pair
    distances of class means after rescaling each to norm 1 - 1e-5."""
    epsilon = 1e-5
    all_norms = torch.norm(means, dim=1, p=2).unsqueeze(-1)
    normalized = means * (1 - epsilon) / all_norms
    normalized_norms = torch.norm(normalized, dim=1, p=2)
    k = len(means)
    idx = torch.triu_indices(k, k, offset=1)
    numerator = torch.sum((normalized[None, :] - normalized[:, None]) ** 2, -1)[idx[0], idx[1]]
    denominator_square = (1 - normalized_norms**2).reshape(-1, 1) @ (
        1 - normalized_norms**2
    ).reshape(1, -1)
    denominator = denominator_square[idx[0], idx[1]]
    return torch.acosh(1 + 2 * (numerator / denominator))


def supcon_reference(features, labels, temperature=0.1, base_temperature=0.07):
    """SupContrast's ``SupConLoss(temperature).forward(features, labels)`` as HypStructure
    ships it (loss.py), contrast_mode 'all'; ``features`` (bsz, n_views, p)."""
    batch_size = features.shape[0]
    labels = labels.contiguous().view(-1, 1)
    mask = torch.eq(labels, labels.T).to(features.dtype)
    contrast_count = features.shape[1]
    contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor_feature, anchor_count = contrast_feature, contrast_count
    anchor_dot_contrast = torch.div(torch.matmul(anchor_feature, contrast_feature.T), temperature)
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    mask = mask.repeat(anchor_count, contrast_count)
    logits_mask = torch.scatter(
        torch.ones_like(mask), 1, torch.arange(batch_size * anchor_count).view(-1, 1), 0
    )
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.view(anchor_count, batch_size).mean()

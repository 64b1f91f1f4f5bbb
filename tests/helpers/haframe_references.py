"""HAFrame (ltong1130ztr/HAFrame) transcribed, float64, loops and checks kept, printing left
out; adapted only to take the tree from a hierot ``Hierarchy``:

- ``distance_matrix``: what ``MBM/better_mistakes/model/init.py`` builds from the
  ``DistanceDict`` of ``MBM/better_mistakes/trees.py`` (the pickled LCA heights, here
  computed from the tree: the LCA from the root paths, a node's height the longest way down
  to a leaf).
- ``map_hdistance_to_cosine_similarity_exponential_decay``,
  ``cls_weights_matrix_factorization_solver``, ``find_max_separation_matrix_factorization_solver``,
  ``distance_matrix_to_haf_cls_weights`` and ``hdistance_to_similarity_matrix``:
  ``HAFrame/solve_HAF.py``.
- ``PointResidualTransformationLayer``, ``NarrowResidualTransformationHead`` and
  ``features_1``: ``util/arch/HAF_resnet.py`` (``HAFrameResNet50``'s head after pooling).
- ``mixing_ratio_scheduler``, ``GeneralSquareCosineSimilarityLoss`` and
  ``MixedLoss_CEandGeneralSCSL``: ``HAFrame/losses.py``; ``make_batch_soft_labels``:
  ``MBM/better_mistakes/model/labels.py`` (on the CPU).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn

from hierot.hierarchy import Hierarchy

# -- the distances -------------------------------------------------------------------------


class DistanceDict(dict):
    def __init__(self, distances):
        self.distances = {tuple(sorted(t)): v for t, v in distances.items()}

    def __getitem__(self, i):
        if i[0] == i[1]:
            return 0
        else:
            return self.distances[(i[0], i[1]) if i[0] < i[1] else (i[1], i[0])]


def lca_height_distances(hierarchy: Hierarchy) -> DistanceDict:
    """The pickled ``{(a, b): height of lca(a, b)}`` of every pair of classes."""
    heights: dict[str, int] = {}

    def height(node):
        if node not in heights:
            kids = hierarchy.children(node)
            heights[node] = 1 + max(height(c) for c in kids) if kids else 0
        return heights[node]

    leaves = hierarchy.leaves
    distances = {}
    for i, a in enumerate(leaves):
        for b in leaves[i + 1 :]:
            pa, pb = hierarchy.path(a), hierarchy.path(b)
            common = [u for u, v in zip(pa, pb, strict=False) if u == v]
            distances[(a, b)] = height(common[-1])
    return DistanceDict(distances)


def distance_matrix(hierarchy: Hierarchy) -> np.ndarray:
    distances = lca_height_distances(hierarchy)
    class_str_labels = hierarchy.leaves
    return np.array([[distances[c1, c2] for c1 in class_str_labels] for c2 in class_str_labels])


# -- solve_HAF.py ----------------------------------------------------------------------------


def map_hdistance_to_cosine_similarity_exponential_decay(**kwargs):
    hdistance, gamma, min_similarity = (
        kwargs["hdistance"],
        kwargs["gamma"],
        kwargs["min_similarity"],
    )
    assert min_similarity >= -1
    max_similarity = 1.0
    hd_max = np.max(hdistance)
    similarity_range = max_similarity - min_similarity
    s = similarity_range * np.exp(-gamma * hdistance / hd_max) + min_similarity
    return s


def cls_weights_matrix_factorization_solver(num_features, num_classes, cos_similarity):
    w, v = np.linalg.eigh(cos_similarity)
    epsilon = 1e-6
    idx = np.abs(w) < epsilon
    w_prime = w.copy()
    w_prime[idx] = 0
    if np.min(w_prime) < 0:
        raise ValueError("cosine similarity matrix is not P.S.D.")
    d_sqrt = np.sqrt(np.diag(w_prime))
    # random rotation + projection
    # the global legacy stream, as the reference draws it (its run's --seed)
    tp = np.sqrt(2.0 / num_classes) * np.random.randn(num_features, num_classes)  # noqa: NPY002
    q, _ = np.linalg.qr(tp)
    cls_weights = d_sqrt @ v.T
    cls_weights = q @ cls_weights
    return cls_weights.T


def find_max_separation_matrix_factorization_solver(
    hdistance, num_classes, n_samples, mapping, gamma=None
):
    min_sims = np.linspace(-1.0 / (num_classes - 1), -1.0, n_samples)
    ret_min_sim = float("inf")
    for _i, s in enumerate(min_sims):
        if gamma is None:
            cos_sim = mapping(hdistance=hdistance, min_similarity=s)
        else:
            cos_sim = mapping(hdistance=hdistance, gamma=gamma, min_similarity=s)
        w, _v = np.linalg.eigh(cos_sim)
        epsilon = 1e-6
        idx = np.abs(w) < epsilon
        w_prime = w.copy()
        w_prime[idx] = 0
        if np.min(w_prime) < 0:
            pass
        else:
            ret_min_sim = min(ret_min_sim, s)
    return ret_min_sim


def distance_matrix_to_haf_cls_weights(hdist, classes, num_features, gamma):
    num_classes = hdist.shape[0]
    num_samples = 100
    similarity_min = find_max_separation_matrix_factorization_solver(
        hdist,
        num_classes,
        num_samples,
        map_hdistance_to_cosine_similarity_exponential_decay,
        gamma,
    )
    similarity_matrix = map_hdistance_to_cosine_similarity_exponential_decay(
        hdistance=hdist, gamma=gamma, min_similarity=similarity_min
    )
    cls_weights = cls_weights_matrix_factorization_solver(
        num_features, num_classes, similarity_matrix
    )
    return cls_weights, similarity_matrix, similarity_min


def hdistance_to_similarity_matrix(hd_mat, gamma, num_classes=10):
    num_samples = 100
    similarity_min = find_max_separation_matrix_factorization_solver(
        hd_mat,
        num_classes,
        num_samples,
        map_hdistance_to_cosine_similarity_exponential_decay,
        gamma,
    )
    similarity_matrix = map_hdistance_to_cosine_similarity_exponential_decay(
        hdistance=hd_mat, gamma=gamma, min_similarity=similarity_min
    )
    return similarity_matrix


# -- HAF_resnet.py ---------------------------------------------------------------------------


def get_activation_function(activation_function, input_channels):
    if activation_function == "relu":
        return nn.ReLU()
    elif activation_function == "elu":
        return nn.ELU()
    elif activation_function == "tanh":
        return nn.Tanh()
    elif activation_function == "prelu":
        return nn.PReLU(num_parameters=input_channels)
    else:
        raise ValueError(f"activation function '{activation_function}' unrecognized")


class PointResidualTransformationLayer(nn.Module):
    def __init__(
        self, in_channels, hidden_channels, out_channels, activation_function="relu", dropout=False
    ):
        super().__init__()
        self.dropout = dropout
        self.linear1 = nn.Linear(in_channels, hidden_channels, bias=False)
        self.bn1 = nn.BatchNorm1d(hidden_channels)
        self.act_func1 = get_activation_function(activation_function, hidden_channels)
        self.linear2 = nn.Linear(hidden_channels, out_channels, bias=False)
        self.bn2 = nn.BatchNorm1d(out_channels)
        self.act_func2 = get_activation_function(activation_function, out_channels)
        if in_channels == out_channels:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(nn.Linear(in_channels, out_channels, bias=False))

    def forward(self, x):
        r = self.residual(x)
        x = self.linear1(x)
        x = self.bn1(x)
        x = self.act_func1(x)
        x = self.linear2(x)
        x = self.bn2(x)
        x = self.act_func2(x)
        y = x + r
        return y


class NarrowResidualTransformationHead(nn.Module):
    def __init__(self, in_channels, out_channels, activation_layer, dropout=False,
                 res_layer=PointResidualTransformationLayer):  # fmt: skip
        super().__init__()
        # the reference's `isinstance(res_layer, PointResidualTransformationLayer)` is False
        # for the class itself: this branch, without dropout, always
        self.residual_layer1 = res_layer(in_channels, out_channels, out_channels, activation_layer)
        self.residual_layer2 = res_layer(out_channels, out_channels, out_channels, activation_layer)

    def forward(self, x):
        x = self.residual_layer1(x)
        x = self.residual_layer2(x)
        return x


def features_1(num_classes):
    """``HAFrameResNet50.features_1``, after pooling and flattening."""
    return nn.Sequential(
        nn.BatchNorm1d(num_classes),
        NarrowResidualTransformationHead(num_classes, num_classes, "prelu"),
    )


# -- losses.py -------------------------------------------------------------------------------


def mixing_ratio_scheduler(sargs, epoch):
    if sargs.loss_schedule == "linear-decrease":
        alpha = 1 - epoch / sargs.epochs
        beta = 1.0 - alpha
    elif sargs.loss_schedule == "linear-increase":
        alpha = epoch / sargs.epochs
        beta = 1.0 - alpha
    elif sargs.loss_schedule == "cosine":
        p = float(sargs.loss_schedule_period)
        alpha = 0.5 * (1 - np.cos(2 * (np.pi / p) * epoch))
        beta = 1.0 - alpha
    elif sargs.loss_schedule == "cosine-linear-increase":
        p = float(sargs.loss_schedule_period)
        alpha = 0.5 * (1 - np.cos(2 * (np.pi / p) * epoch)) * epoch / sargs.epochs
        beta = 1.0 - alpha
    elif sargs.loss_schedule == "cosine-linear-decrease":
        p = float(sargs.loss_schedule_period)
        beta = 0.5 * (1 - np.cos(2 * (np.pi / p) * epoch)) * epoch / sargs.epochs
        alpha = 1.0 - beta
    else:
        alpha = float(sargs.loss_schedule)
        if alpha <= 1.0:
            beta = 1.0 - alpha
        else:
            beta = 1.0
    return beta, alpha


def make_batch_soft_labels(all_soft_labels, target, num_classes, batch_size):
    soft_labels = torch.zeros((batch_size, num_classes), dtype=torch.float64)
    for i in range(batch_size):
        this_label = all_soft_labels[:, target[i]]
        soft_labels[i, :] = this_label
    return soft_labels


class GeneralSquareCosineSimilarityLoss(nn.Module):
    def __init__(self, num_classes, reduction="batchmean"):
        super().__init__()
        self.num_classes = num_classes
        self.reduction = reduction

    def forward(self, fixed_cls, x, y):
        sim = []
        for c in range(self.num_classes):
            sim.append(
                torch.unsqueeze(nn.functional.cosine_similarity(fixed_cls[c], x, dim=1), dim=1)
            )
        sim = torch.cat(sim, dim=1)
        sq_diff = torch.square(sim - y)
        if self.reduction == "batchmean":
            loss = torch.sum(sq_diff)
            loss = loss / y.size()[0]
        elif self.reduction == "sum":
            loss = torch.sum(sq_diff)
        else:
            raise ValueError(f"unrecognized reduction '{self.reduction}'")
        return loss


class MixedLoss_CEandGeneralSCSL(nn.Module):
    def __init__(self, num_classes, reduction="batchmean"):
        super().__init__()
        self.num_classes = num_classes
        self.reduction = reduction
        if self.reduction == "batchmean":
            self.CE = nn.CrossEntropyLoss(reduction="mean")
            self.GSCSL = GeneralSquareCosineSimilarityLoss(
                self.num_classes, reduction=self.reduction
            )
        elif self.reduction == "sum":
            self.CE = nn.CrossEntropyLoss(reduction="sum")
            self.GSCSL = GeneralSquareCosineSimilarityLoss(
                self.num_classes, reduction=self.reduction
            )

    def forward(self, beta, alpha, fixed_cls, x, y_scaler, y_simlabel):
        logits = torch.matmul(x, fixed_cls.T)
        loss = beta * self.CE(logits, y_scaler) + alpha * self.GSCSL(fixed_cls, x, y_simlabel)
        return loss


# -- one training step of run_xent.py (``haframe_resnet50``, ``mixed-ce-gscsl``) -------------


def haframe_step(hierarchy, head, fixed_cls, pooled, target, loss_schedule, gamma):
    """``(loss, output)`` of run_xent.py's step: ``features = penultimate_feature``
    (``head`` on the pooled, downsampled features), ``output = features @ W^T``, the loss
    with the soft labels of ``hdistance_to_similarity_matrix``."""
    opts = SimpleNamespace(loss_schedule=str(loss_schedule), epochs=100)
    classes = hierarchy.leaves
    soft_labels = hdistance_to_similarity_matrix(distance_matrix(hierarchy), gamma, len(classes))
    mixing_beta, mixing_alpha = mixing_ratio_scheduler(opts, 0)
    features = head(pooled)
    output = torch.matmul(features, fixed_cls.T)
    target_similarity = make_batch_soft_labels(
        torch.from_numpy(soft_labels), target, len(classes), len(target)
    )
    loss_function = MixedLoss_CEandGeneralSCSL(len(classes))
    loss = loss_function(mixing_beta, mixing_alpha, fixed_cls, features, target, target_similarity)
    return loss, output

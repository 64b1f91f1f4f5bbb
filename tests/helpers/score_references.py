"""The reference repositories of the objectives that score the classes themselves, transcribed
with their loops and quirks kept (nltk tree positions replaced by root paths), in float64:

- ``SoftmaxCascadeReference`` and ``yolo_reference``: making-better-mistakes
  ``SoftmaxCascade`` (better_mistakes/data/softmax_cascade.py), ``YOLOLoss``
  (better_mistakes/model/losses.py), ``get_exponential_weighting`` and
  ``get_classes(output_all_nodes=True)`` (better_mistakes/trees.py), and the
  ``yolo2_corrector`` of scripts/start_training.py.
- ``unitsphere_reference`` and ``cosine_plus_xent_reference``: cvjena/semantic-embeddings
  ``ClassHierarchy`` heights and ``lcs_height`` (class_hierarchy.py) and
  ``unitsphere_embedding`` (compute_class_embedding.py); making-better-mistakes
  ``CosinePlusXentLoss`` (better_mistakes/model/losses.py) on the embeddings normalised as
  scripts/start_training.py does, and ``accuracy_from_wordvecs``'s ranking
  (better_mistakes/model/performance.py).
- ``HierCOSReference``: Depanshu-Sani/Hier-COS ``map_tree_to_ids_bfs``,
  ``get_hiercos_parameters_hierarchical_labels`` (identity basis, ``fa`` and ``fd``),
  ``get_distances`` and ``HierCOS_Loss.forward`` (util/hiercos_construction.py), without
  its printing.
"""

from __future__ import annotations

from collections import deque
from math import exp, fsum

import numpy as np
import torch
import torch.nn.functional as F

from hierot.hierarchy import Hierarchy


def all_node_classes(hierarchy: Hierarchy) -> list[str]:
    """``get_classes(output_all_nodes=True)``: the leaves (here in class order, the
    reference's sorted dataset order), then the other nodes, the root included, sorted."""
    leaves = set(hierarchy.leaves)
    return [*hierarchy.leaves, *sorted(n for n in hierarchy.nodes if n not in leaves)]


class SoftmaxCascadeReference:
    def __init__(self, hierarchy: Hierarchy, classes: list[str]):
        position = {n: tuple(hierarchy.path(n)) for n in hierarchy.nodes}  # root: (root,)
        positions_edges = [position[c] for c in classes]
        num_edges = len(positions_edges)
        index_map_edges = {p: i for i, p in enumerate(positions_edges)}
        index_map_children: dict[object, list[int]] = {}
        for p in positions_edges:
            if len(p) > 1:  # skip the root
                index_map_children.setdefault(p[:-1], []).append(index_map_edges[p])
            else:
                index_map_children.setdefault("ROOT", []).append(index_map_edges[p])
        self.softmax_masks = torch.zeros([len(index_map_children), num_edges], dtype=torch.bool)
        for i, children in enumerate(index_map_children.values()):
            for j in children:
                self.softmax_masks[i, j] = True
        edges_from_leaf = [
            [index_map_edges[p[:i]] for i in range(len(p), 0, -1)] for p in positions_edges
        ]
        self.path_onehot = torch.zeros([num_edges, num_edges], dtype=torch.float64)
        for p, edges in zip(positions_edges, edges_from_leaf, strict=True):
            leaf_idx = index_map_edges[p]
            self.path_onehot[leaf_idx, leaf_idx] = 1
            for j in edges:
                self.path_onehot[leaf_idx, j] = 1

    def normalise(self, inputs, norm_fn=torch.softmax):
        out = inputs * 0
        for mask in self.softmax_masks:
            out[:, mask] = norm_fn(inputs[:, mask], dim=1)
        return out

    def cross_entropy(self, inputs, target, weights):
        batch_size = inputs.size()[0]
        normalised_inputs = self.normalise(inputs, norm_fn=torch.log_softmax)
        onehot = self.path_onehot[target]
        return -torch.sum(normalised_inputs * onehot * weights) / batch_size

    def final_probabilities(self, inputs, norm_fn=torch.exp):
        log_prob = self.normalise(inputs, norm_fn=torch.log_softmax)
        return norm_fn(torch.mm(log_prob, torch.transpose(self.path_onehot, 0, 1)))


def exponential_weights(hierarchy: Hierarchy, alpha: float, normalize: bool) -> dict[str, float]:
    """``get_exponential_weighting``: exp(-alpha * len(position)) of every node, the root
    included, over their sum with ``normalize``."""
    weights = {n: exp(-alpha * hierarchy.node_depth(n)) for n in hierarchy.nodes}
    total = fsum(weights.values())
    return {n: w / total for n, w in weights.items()} if normalize else weights


def yolo_reference(hierarchy, inputs, target, alpha, normalize):
    """``YOLOLoss(hierarchy, classes, weights)(inputs, target)`` and the corrector's class
    probabilities; ``inputs`` (B, |V|) are logits in ``all_node_classes`` order."""
    classes = all_node_classes(hierarchy)
    cascade = SoftmaxCascadeReference(hierarchy, classes)
    weights_dict = exponential_weights(hierarchy, alpha, normalize)
    weights = torch.tensor([weights_dict[c] for c in classes], dtype=torch.float64)[None]
    loss = cascade.cross_entropy(inputs, target, weights)
    probs = cascade.final_probabilities(inputs)[:, : hierarchy.num_classes]
    return loss, probs


# -- Barz & Denzler ------------------------------------------------------------------------


class ClassHierarchyReference:
    """semantic-embeddings' ``ClassHierarchy`` on a tree: heights, depths, ``lcs``."""

    def __init__(self, hierarchy: Hierarchy):
        self.children = {n: hierarchy.children(n) for n in hierarchy.nodes}
        self.children = {n: c for n, c in self.children.items() if c}
        self.parents = {n: [hierarchy.parent(n)] for n in hierarchy.nodes if hierarchy.parent(n)}
        self.nodes = set(self.parents) | set(self.children)
        self.heights: dict[str, int] = {}
        for node in self.nodes:
            self._height(node)
        self.max_height = max(self.heights.values())

    def _height(self, id):
        if id not in self.heights:
            self.heights[id] = (
                1 + max((self._height(c) for c in self.children[id]), default=-1)
                if id in self.children
                else 0
            )
        return self.heights[id]

    def all_hypernym_depths(self, id):
        depths = {}
        if id not in self.parents or len(self.parents[id]) == 0:
            depths[id] = 1
        else:
            for parent in self.parents[id]:
                depths.update(self.all_hypernym_depths(parent))
            depths[id] = 1 + max(depths[p] for p in self.parents[id])
        return depths

    def lcs(self, a, b):
        hypernym_depths = self.all_hypernym_depths(a)
        common = set(hypernym_depths) & set(self.all_hypernym_depths(b))
        return max(common, key=lambda hyp: hypernym_depths[hyp], default=None)

    def lcs_height(self, a, b):
        return self.heights[self.lcs(a, b)] / self.max_height


def unitsphere_embedding(class_sim):
    nc = class_sim.shape[0]
    embeddings = np.zeros((nc, nc))
    embeddings[0, 0] = 1.0
    for c in range(1, nc):
        embeddings[c, :c] = np.linalg.solve(embeddings[:c, :c], class_sim[c, :c])
        embeddings[c, c] = np.sqrt(1.0 - np.sum(embeddings[c, :c] ** 2))
    return embeddings


def unitsphere_reference(hierarchy: Hierarchy) -> np.ndarray:
    """``compute_class_embedding.py --method unitsphere`` on the classes in class order,
    each row then divided by its norm (making-better-mistakes' start_training.py)."""
    tree = ClassHierarchyReference(hierarchy)
    labels = hierarchy.leaves
    sem_class_dist = np.zeros((len(labels), len(labels)))
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            sem_class_dist[i, j] = sem_class_dist[j, i] = tree.lcs_height(labels[i], labels[j])
    embedding = unitsphere_embedding(1.0 - sem_class_dist)
    return embedding / np.linalg.norm(embedding, axis=1, keepdims=True)


def cosine_plus_xent_reference(embeddings, inputs, target, xent_weight=0.1):
    """``CosinePlusXentLoss(emb_layer, xent_weight)(inputs, target)``."""
    emb_target = F.embedding(target, embeddings)
    inputs_cosine = F.normalize(inputs, p=2, dim=1)
    loss_cosine = 1 - F.cosine_similarity(inputs_cosine, emb_target).mean()
    loss_xent = F.cross_entropy(inputs, target).mean()
    return loss_cosine + xent_weight * loss_xent


def wordvec_ranking(output, word2vec_mat, maxk):
    """``accuracy_from_wordvecs``' predicted classes, nearest first."""
    output_arr = output.detach().numpy()
    output_class_arr = (
        1
        - (
            1
            + np.dot(output_arr / np.linalg.norm(output_arr, axis=1, keepdims=True), word2vec_mat.T)
        )
        / 2
    )
    return np.argsort(output_class_arr, axis=1)[:, :maxk]


# -- Hier-COS ------------------------------------------------------------------------------


class HierCOSReference:
    """``get_hiercos_parameters_hierarchical_labels`` + ``HierCOS_Loss`` (alpha) with the
    identity basis; ``ids`` maps node names to the reference's BFS coordinates."""

    def __init__(self, hierarchy: Hierarchy, alpha: float, fa: bool = True, fd: bool = True):
        root = hierarchy.root
        # map_tree_to_ids_bfs (the root skipped)
        ids: dict[str, int] = {}
        queue = deque([root])
        while queue:
            node = queue.popleft()
            if node not in ids and node != root:
                ids[node] = len(ids)
            queue.extend(hierarchy.children(node))
        self.ids = ids
        # count_nodes_at_each_level(...)[1:]
        counts: list[int] = []
        for n in hierarchy.nodes:
            d = hierarchy.node_depth(n)
            counts += [0] * (d + 1 - len(counts))
            counts[d] += 1
        num_nodes_per_level = counts[1:]
        max_level = len(num_nodes_per_level)
        dim = len(ids)
        basis = torch.eye(dim, dtype=torch.float64)
        level_wise_node_ids = []
        low, high = 0, num_nodes_per_level[0]
        for level in range(max_level):
            level_wise_node_ids.append(torch.tensor(range(low, high)))
            if level < max_level - 1:
                low += num_nodes_per_level[level]
                high += num_nodes_per_level[level + 1]

        def descendants(node):
            out = set()
            for c in hierarchy.children(node):
                out.add(ids[c])
                out |= descendants(c)
            return out

        relations = {
            ids[n]: {
                "ancestors": {ids[a] for a in hierarchy.path(n)[1:-1]},
                "descendants": descendants(n),
            }
            for n in hierarchy.nodes
            if n != root
        }
        classes = hierarchy.leaves
        projections = torch.zeros((len(classes), dim, dim), dtype=torch.float64)
        for label in classes:
            class_idx = classes.index(label)
            node_id = ids[label]
            if fa:
                for a in relations[node_id]["ancestors"]:
                    projections[class_idx] += basis[a][:, None] @ basis[a][None, :]
            projections[class_idx] += basis[node_id][:, None] @ basis[node_id][None, :]
            if fd:
                for d in relations[node_id]["descendants"]:
                    projections[class_idx] += basis[d][:, None] @ basis[d][None, :]
        labels, node_prob = [], []
        for class_ in classes:
            hierarchy_labels = [ids[n] for n in hierarchy.path(class_)[1:]]
            labels.append(
                [
                    hl - level_wise_node_ids[lvl].min().item()
                    for lvl, hl in enumerate(hierarchy_labels)
                ]
            )
            arr = np.arange(len(hierarchy_labels), 0, -1)
            node_prob.append(np.square(np.exp(1 / arr) / np.linalg.norm(np.exp(1 / arr))).tolist())
            for _ in range(len(hierarchy_labels), max_level):
                labels[-1].append(-100)
                node_prob[-1].append(0)
        self.params = {
            "alpha": alpha,
            "orthonormal_basis_vectors": basis,
            "projections": projections,
            "level_wise_node_ids": level_wise_node_ids,
            "leaf_class_to_hierarchical_labels": torch.tensor(labels),
            "node_prob_distribution": torch.tensor(node_prob, dtype=torch.float64),
            "leaf_classes": len(classes),
            "num_nodes_per_level": num_nodes_per_level,
        }

    @staticmethod
    def get_distances(logits, projections, n_classes):
        batch_size, dim = logits.shape
        logits = logits.view(batch_size, 1, dim)
        projections = projections.view(1, n_classes, dim, dim)
        projected_points = torch.einsum("abcd,ead->ebc", projections, logits)
        return torch.norm(projected_points, dim=2)

    def __call__(self, logits, labels):
        """``(loss, out)`` of ``HierCOS_Loss.forward``: out the (B, K) projection norms."""
        p = self.params
        out = self.get_distances(logits, p["projections"], p["leaf_classes"])
        max_level = p["leaf_class_to_hierarchical_labels"].shape[1]
        l_gt = torch.zeros(logits.shape[0], logits.shape[1], dtype=logits.dtype)
        l_aux = 0
        for level in range(max_level):
            ids = p["level_wise_node_ids"][level]
            level_labels = p["leaf_class_to_hierarchical_labels"][labels, level]
            level_projections = torch.matmul(logits, p["orthonormal_basis_vectors"][ids].t()).abs()
            if level_labels[level_labels > 0].shape[0] > 0:
                level_cos_sim = (level_projections / level_projections.norm(dim=1)[:, None])[
                    level_labels >= 0
                ]
                ohe = F.one_hot(level_labels[level_labels >= 0], p["num_nodes_per_level"][level])
                l_aux += (ohe - level_cos_sim).abs().sum(1).mean()
            if (level_labels >= 0).prod() == 0:
                l_aux += level_projections[level_labels < 0].sum(1).mean()
            l_gt[level_labels >= 0, ids.min().item() : ids.max().item() + 1] = (
                F.one_hot(level_labels[level_labels >= 0], p["num_nodes_per_level"][level])
                * p["node_prob_distribution"][labels[level_labels >= 0], level, None]
            )
        l_kl = torch.nn.KLDivLoss(reduction="batchmean")(
            torch.log_softmax(logits.abs(), dim=1), l_gt
        )
        return l_kl + p["alpha"] * l_aux, out

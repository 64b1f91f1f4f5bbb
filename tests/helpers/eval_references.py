"""The reference repositories' evaluation code, transcribed: their loops and their quirks
kept, so that ``hierot.evaluate`` is checked against the numbers the papers printed.

- ``mbm_table``: making-better-mistakes ``run`` (better_mistakes/model/run_xent.py, with
  ``accuracy`` of model/performance.py and ``_make_best_hier_similarities``): per-batch
  accumulators over batches of ``batch_size`` (the last partial batch dropped, as its
  ``drop_last=True`` loader does), a distance lookup per (sample, rank).
- ``crm_table``: CRM-Better-Mistakes ``get_all_cost_sensitive``, ``get_topk`` and
  ``get_metrics`` (src/compute_results.py): numpy float64 softmax, one Python loop per sample.
- ``guo_ece``, ``mce``: CRM-Better-Mistakes src/helper.py (``ECE`` with ``ece_full=False``,
  ``ECE_helper``, ``compute_acc_bin``, ``MCE_helper``): bins ``(lo, hi]`` from
  ``np.arange(bin_size, 1 + bin_size, bin_size)``, the first one holding 0.
- ``marginal_reference``: HierarchyCPCC ``get_layer_prob_from_fine`` (utils.py) and the
  argmax its main.py takes.
- ``silhouette_reference``, ``knn_reference``, ``average_precision_reference``,
  ``macro_precision_recall``: what scikit-learn's ``silhouette_score``,
  ``KNeighborsClassifier(k, metric="cosine").predict``, ``average_precision_score`` and
  ``precision_score``/``recall_score(average="macro")`` compute, one sample at a time
  (HierarchyCPCC and HypStructure call the first two, OTCPCC the others; scikit-learn is not a
  dependency).
- OOD: HierarchyCPCC ``ood_detection`` (main.py: a one-component ``GaussianMixture`` per
  class, i.e. the class's Gaussian with its biased covariance + ``reg_covar`` 1e-6, scored by
  scipy's ``multivariate_normal.logpdf`` here), HypStructure ``get_scores_one_cluster`` (SSD),
  its faiss ``IndexFlatL2`` k-th neighbour (``knn_ood_reference``), ``get_mean_prec`` and
  ``get_Mahalanobis_score``, ``get_measures`` / ``fpr_and_fdr_at_recall`` / ``get_fpr`` /
  ``get_pr_sklearn`` (utils.py), with scikit-learn's ``roc_auc_score`` as the Mann-Whitney
  statistic with average ranks.
- ``otcpcc_retrieval``: OTCPCC ``retrieval`` (downstream.py): prototypes as class means, a
  cosine per (test sample, prototype), AP per prototype, macro precision and recall.
"""

from __future__ import annotations

import heapq

import numpy as np
import torch


def mbm_table(
    output: np.ndarray,
    target: np.ndarray,
    dist: np.ndarray,
    batch_size: int,
    topk: tuple[int, ...] = (1, 5),
) -> dict[str, float]:
    """making-better-mistakes' summary keys, ``dist`` (K, K) standing for its
    ``DistanceDict`` (``distances[(classes[pred], classes[true])]``)."""
    classes = dist.shape[0]
    max_dist = dist.max()
    best_hier_similarities = np.zeros([classes, classes])
    for i in range(classes):
        best_hier_similarities[i, :] = 1 - np.sort(dist[i, :]) / max_dist
    num_logged = 0
    norm_mistakes_accum = 0.0
    flat = np.zeros(len(topk))
    hdist = np.zeros(len(topk))
    hdist_top = np.zeros(len(topk))
    hdist_mistakes = np.zeros(len(topk))
    hprecision = np.zeros(len(topk))
    hmap = np.zeros(len(topk))
    for start in range(0, len(target) - batch_size + 1, batch_size):
        out = torch.as_tensor(output[start : start + batch_size])
        tgt = torch.as_tensor(target[start : start + batch_size])
        num_logged += 1
        _, pred_ = out.topk(max(topk), 1, True, True)
        pred = pred_.t()
        correct = pred.eq(tgt.view(1, -1).expand_as(pred))
        accuracies = [correct[:k].reshape(-1).float().sum(0) / batch_size for k in topk]
        topk_hdist = np.empty([batch_size, topk[-1]])
        for i in range(batch_size):
            for j in range(max(topk)):
                topk_hdist[i, j] = dist[int(pred_[i][j]), int(tgt[i])]
        mistakes_ids = np.where(topk_hdist[:, 0] != 0)[0]
        norm_mistakes_accum += len(mistakes_ids)
        topk_hdist_mistakes = topk_hdist[mistakes_ids, :]
        topk_hsimilarity = 1 - topk_hdist / max_dist
        # The denominator sums the best similarities of every class, not of the batch's.
        topk_ap = [
            np.sum(topk_hsimilarity[:, :k]) / np.sum(best_hier_similarities[:, :k])
            for k in range(1, max(topk) + 1)
        ]
        for i, k in enumerate(topk):
            flat[i] += accuracies[i].item()
            hdist[i] += np.mean(topk_hdist[:, :k])
            hdist_top[i] += np.mean([np.min(topk_hdist[b, :k]) for b in range(batch_size)])
            hdist_mistakes[i] += np.sum(topk_hdist_mistakes[:, :k])
            hprecision[i] += topk_ap[k - 1]
            hmap[i] += np.mean(topk_ap[:k])
    summary = {}
    for i, k in enumerate(topk):
        summary[f"accuracy_top/{k:02d}"] = flat[i] / num_logged
        summary[f"_avg/{k:02d}"] = hdist[i] / num_logged
        summary[f"_top/{k:02d}"] = hdist_top[i] / num_logged
        summary[f"_mistakes/avg{k:02d}"] = hdist_mistakes[i] / (norm_mistakes_accum * k)
        summary[f"_precision/{k:02d}"] = hprecision[i] / num_logged
        summary[f"_mAP/{k:02d}"] = hmap[i] / num_logged
    return summary


def _softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(x) / np.sum(np.exp(x))


def crm_table(
    logits: np.ndarray, target: np.ndarray, dist: np.ndarray, rerank: bool = True
) -> dict[str, float]:
    """CRM's ``get_metrics`` on its ``row_softmax`` of the logits (``rerank``: CRM on)."""
    output = np.array([_softmax(row) for row in logits])
    classes = dist.shape[0]
    if rerank:
        cost = [[0 for _ in range(classes)] for _ in range(classes)]
        for i in range(classes):
            for j in range(classes):
                cost[i][j] = dist[i, j]
        output = -1 * np.dot(output, cost)

    def get_topk(prediction: np.ndarray, truth: int, k: int) -> list[float]:
        ind = heapq.nlargest(k, range(len(prediction)), prediction.take)
        return [dist[i, truth] for i in ind]

    top1, mistake, avg_1, avg_5, avg_20 = [], [], [], [], []
    for i in range(len(output)):
        if output[i].argmax() == target[i]:
            top1.append(1)
        else:
            top1.append(0)
            mistake.append(dist[target[i], output[i].argmax()])
        avg_1.extend(get_topk(output[i], target[i], 1))
        avg_5.append(get_topk(output[i], target[i], 5))
        avg_20.append(get_topk(output[i], target[i], 20))
    return {
        "top1": float(np.mean(top1)),
        "mistake_severity": float(np.mean(mistake)),
        "hdist@1": float(np.mean(avg_1)),
        "hdist@5": float(np.mean(avg_5)),
        "hdist@20": float(np.mean(avg_20)),
    }


def _acc_bin(lower: float, upper: float, conf, pred, true) -> tuple[float, float, int]:
    filtered = [x for x in zip(pred, true, conf) if (x[2] > lower or lower == 0) and x[2] <= upper]
    if len(filtered) < 1:
        return 0.0, 0.0, 0
    correct = len([x for x in filtered if x[0] == x[1]])
    len_bin = len(filtered)
    avg_conf = sum([x[2] for x in filtered]) / len_bin
    return float(correct) / len_bin, avg_conf, len_bin


def guo_ece(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """CRM's ``guo_ECE``: top-1 confidence, equal-width bins ``(lo, hi]``."""
    preds = np.argmax(probs, axis=1)
    confs = np.max(probs, axis=1)
    bin_size = 1 / bins
    ece, n = 0.0, len(confs)
    for upper in np.arange(bin_size, 1 + bin_size, bin_size):
        acc, avg_conf, len_bin = _acc_bin(upper - bin_size, upper, confs, preds, y_true)
        ece += np.abs(acc - avg_conf) * len_bin / n
    return float(ece)


def mce(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """CRM's ``MCE`` (``mce_full=False``): the largest bin gap, empty bins counting 0."""
    preds = np.argmax(probs, axis=1)
    confs = np.max(probs, axis=1)
    bin_size = 1 / bins
    errors = []
    for upper in np.arange(bin_size, 1 + bin_size, bin_size):
        acc, avg_conf, _ = _acc_bin(upper - bin_size, upper, confs, preds, y_true)
        errors.append(np.abs(acc - avg_conf))
    return float(np.max(np.asarray(errors)))


def marginal_reference(logits: torch.Tensor, layer_fine_map: np.ndarray) -> torch.Tensor:
    """HierarchyCPCC's coarse prediction: a loop over the concepts summing their classes'
    probabilities, then the argmax."""
    prob_fine = logits.softmax(dim=1)
    prob_layer = []
    for cls in range(len(np.unique(layer_fine_map))):
        index = torch.tensor((layer_fine_map == cls).nonzero()[0])
        prob_layer.append(torch.sum(torch.index_select(prob_fine, 1, index), 1, keepdim=True))
    return torch.cat(prob_layer, dim=1).argmax(dim=1)


def silhouette_reference(x: np.ndarray, labels: np.ndarray) -> float:
    n = len(x)
    values = []
    for i in range(n):
        d = np.sqrt(((x - x[i]) ** 2).sum(1))
        same = labels == labels[i]
        if same.sum() == 1:
            values.append(0.0)
            continue
        a = d[same].sum() / (same.sum() - 1)
        b = min(d[labels == other].mean() for other in set(labels.tolist()) - {labels[i]})
        values.append((b - a) / max(a, b))
    return float(np.mean(values))


def knn_reference(
    queries: np.ndarray, bank: np.ndarray, bank_labels: np.ndarray, k: int
) -> np.ndarray:
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    bn = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    out = []
    for q in qn:
        cosine_distance = 1 - bn @ q
        near = np.argsort(cosine_distance, kind="stable")[:k]
        counts = np.bincount(bank_labels[near])
        out.append(int(np.argmax(counts)))  # the smallest of the most voted labels
    return np.array(out)


def average_precision_reference(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """scikit-learn's ``average_precision_score`` (binary): its ``_binary_clf_curve`` on the
    distinct thresholds, then ``-sum(diff(recall) * precision[:-1])``; 0 without positives."""
    desc = np.argsort(y_score, kind="mergesort")[::-1]
    y_score, y_true = y_score[desc], y_true[desc]
    distinct = np.where(np.diff(y_score))[0]
    threshold_idxs = np.r_[distinct, y_true.size - 1]
    tps = np.cumsum(y_true)[threshold_idxs]
    fps = 1 + threshold_idxs - tps
    if tps[-1] == 0:
        return 0.0
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    precision = np.r_[precision[::-1], 1]
    recall = np.r_[recall[::-1], 0]
    return float(-np.sum(np.diff(recall) * np.array(precision)[:-1]))


def macro_precision_recall(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    labels = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    precisions, recalls = [], []
    for label in labels:
        tp = np.sum((y_pred == label) & (y_true == label))
        predicted, actual = np.sum(y_pred == label), np.sum(y_true == label)
        precisions.append(tp / predicted if predicted else 0.0)
        recalls.append(tp / actual if actual else 0.0)
    return float(np.mean(precisions)), float(np.mean(recalls))


def otcpcc_retrieval(
    train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray
) -> dict[str, float]:
    target_num = int(train_labels.max()) + 1
    prototypes = {i: [] for i in range(target_num)}
    for emb, t in zip(train, train_labels):
        prototypes[int(t)].append(emb)
    for i in range(target_num):
        prototypes[i] = np.mean(np.stack(prototypes[i], axis=0), axis=0)
    test_scores = {i: [] for i in range(target_num)}
    test_truth = {i: [] for i in range(target_num)}
    retrieval_results = []
    for test_emb, t in zip(test, test_labels):
        similarities = []
        for i in range(target_num):
            similarity = np.dot(test_emb, prototypes[i]) / (
                np.linalg.norm(test_emb) * np.linalg.norm(prototypes[i])
            )
            similarities.append(similarity)
            test_scores[i].append(similarity)
            test_truth[i].append(int(t == i))
        retrieval_results.append(np.argmax(similarities))
    aps = [
        average_precision_reference(np.array(test_truth[i]), np.array(test_scores[i]))
        for i in range(target_num)
    ]
    precision, recall = macro_precision_recall(test_labels, np.array(retrieval_results))
    return {"map": float(np.mean(aps)), "precision": precision, "recall": recall}


def gaussian_ood_reference(train: np.ndarray, labels: np.ndarray, x: np.ndarray) -> np.ndarray:
    from scipy.stats import multivariate_normal

    posteriors = np.zeros((x.shape[0], len(np.unique(labels))))
    for i, label in enumerate(np.unique(labels)):
        members = train[labels == label]
        cov = np.cov(members.T, bias=True)
        cov.flat[:: cov.shape[0] + 1] += 1e-6
        posteriors[:, i] = multivariate_normal(members.mean(0), cov).logpdf(x)
    return np.max(posteriors, axis=1)


def ssd_reference(ftrain: np.ndarray, ftest: np.ndarray) -> np.ndarray:
    """HypStructure's SSD distance (larger: more OOD)."""
    cov = lambda x: np.cov(x.T, bias=True)  # noqa: E731
    return np.sum(
        (ftest - np.mean(ftrain, axis=0, keepdims=True))
        * (np.linalg.pinv(cov(ftrain)).dot((ftest - np.mean(ftrain, axis=0, keepdims=True)).T)).T,
        axis=-1,
    )


def knn_ood_reference(ftrain: np.ndarray, ftest: np.ndarray, k: int) -> np.ndarray:
    """faiss IndexFlatL2.search's k-th squared distance (larger: more OOD)."""
    d = ((ftest[:, None, :] - ftrain[None, :, :]) ** 2).sum(-1)
    return np.sort(d, axis=1)[:, k - 1]


def mahalanobis_reference(train: torch.Tensor, labels: np.ndarray, x: torch.Tensor) -> np.ndarray:
    """HypStructure's get_mean_prec + get_Mahalanobis_score (CPU, float64)."""
    n_cls = int(labels.max()) + 1
    classwise_mean = torch.empty(n_cls, train.shape[1], dtype=torch.float64)
    classwise_cov = torch.empty(n_cls, train.shape[1], train.shape[1], dtype=torch.float64)
    for cls in range(n_cls):
        idx = np.where(labels == cls)[0]
        classwise_mean[cls] = torch.mean(train[idx], dim=0)
        classwise_cov[cls] = torch.cov(train[idx].T)
    tied_cov = torch.sum(classwise_cov, dim=0) / train.shape[1]
    precision = torch.linalg.pinv(tied_cov)
    scores = []
    for i in range(n_cls):
        zero_f = x - classwise_mean[i]
        scores.append(-torch.mm(torch.mm(zero_f, precision), zero_f.t()).diag().view(-1, 1))
    best, _ = torch.max(torch.cat(scores, 1), dim=1)
    return (-best).numpy()  # larger: more OOD


def roc_auc_reference(labels: np.ndarray, scores: np.ndarray) -> float:
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fpr_at_recall_reference(
    y_true: np.ndarray, y_score: np.ndarray, recall_level: float = 0.95
) -> float:
    y_true = y_true == 1
    desc = np.argsort(y_score, kind="mergesort")[::-1]
    y_score, y_true = y_score[desc], y_true[desc]
    distinct = np.where(np.diff(y_score))[0]
    threshold_idxs = np.r_[distinct, y_true.size - 1]
    tps = np.cumsum(y_true, dtype=np.float64)[threshold_idxs]
    fps = 1 + threshold_idxs - tps
    recall = tps / tps[-1]
    last_ind = tps.searchsorted(tps[-1])
    sl = slice(last_ind, None, -1)
    recall, fps = np.r_[recall[sl], 1], np.r_[fps[sl], 0]
    cutoff = np.argmin(np.abs(recall - recall_level))
    return float(fps[cutoff] / np.sum(np.logical_not(y_true)))


def get_measures_reference(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float, float]:
    """HypStructure's get_measures(in-scores, out-scores): in-distribution positive."""
    examples = np.concatenate([pos, neg])
    labels = np.zeros(len(examples), dtype=np.int32)
    labels[: len(pos)] += 1
    return (
        roc_auc_reference(labels, examples),
        average_precision_reference(labels, examples),
        fpr_at_recall_reference(labels, examples),
    )


def ssd_eval_reference(dtest: np.ndarray, dood: np.ndarray) -> tuple[float, float, float]:
    """HypStructure's get_eval_results numbers for SSD: (fpr95, auroc, aupr), the OOD set
    positive for AUROC and AUPR, the FPR from the 95th percentile of the in-distances."""
    labels = np.array([0] * len(dtest) + [1] * len(dood))
    data = np.concatenate((dtest, dood))
    fpr95 = np.sum(dood < np.percentile(dtest, 95)) / len(dood)
    return float(fpr95), roc_auc_reference(labels, data), average_precision_reference(labels, data)


def haframe_lca_similarity(hdistance: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """Hier-COS's ``LCA_similarity.npy`` (util/hiercos_construction.py): HAFrame's
    ``map_hdistance_to_cosine_similarity_exponential_decay`` (HAFrame/solve_HAF.py,
    ``min_similarity=0``) of the class distances, then each row min-max normalised."""
    min_similarity, max_similarity = 0, 1.0
    hd_max = np.max(hdistance)
    similarity_range = max_similarity - min_similarity
    s = similarity_range * np.exp(-gamma * hdistance / hd_max) + min_similarity
    s = torch.tensor(s)
    s = (s - s.min(dim=1)[0][:, None]) / (s.max(dim=1)[0] - s.min(dim=1)[0])[:, None]
    return s.numpy()


def _generate_linear_decay(x, y, n):
    return np.linspace(x, y, n)


def _generate_weights(A):
    B = []
    for row in A:
        unique_values = np.unique(row)  # ascending, whatever its comment says
        B_row = np.zeros_like(row, dtype=float)
        for i, value in enumerate(unique_values):
            indices = np.where(row == value)[0]
            if i == 0:
                next_value = 0.0
            elif i < len(unique_values) - 1:
                next_value = unique_values[i - 1]
            else:
                next_value = 1.0
            decay_values = _generate_linear_decay(value, next_value, len(indices) + 1)[:-1]
            B_row[indices] = decay_values
        B.append(B_row)
    return np.array(B)


def hops_reference(
    logits: np.ndarray, target: np.ndarray, lca_similarity: np.ndarray, k: int | None
) -> float:
    """Hier-COS's HOPS@k ("Code for Analysis (HOPS, FPA, Tree).ipynb": the class-wise ranking
    of cell 16, ``generate_weights`` of cell 23, the loop of cells 26/31/35; k None: HOPS),
    the mean over the samples, in one batch."""
    gt_class_wise_ranking = np.zeros_like(lca_similarity)
    for _class in range(lca_similarity.shape[0]):
        unique_values, inverse_indices = np.unique(lca_similarity[_class], return_inverse=True)
        n_unique = len(unique_values)
        gt_class_wise_ranking[_class] = n_unique - inverse_indices - 1
    labels = target.reshape(-1, 1)
    score = []
    expected_ranks = np.sort(gt_class_wise_ranking[labels]).squeeze()
    obtained_ranks = gt_class_wise_ranking[labels, np.argsort(logits, axis=1)[:, ::-1]]
    worst_rank = expected_ranks.copy()
    if k == 1:
        metric = np.where(obtained_ranks[:, 0] == 0, 1, 0)
        score.extend(metric)
        return float(np.array(score).mean())
    if k is not None:
        worst_rank[:, :k] = expected_ranks[:, :k][:, ::-1]
    else:
        worst_rank = expected_ranks[:, ::-1]
    exp = 1 / np.power(2, expected_ranks)
    worst_diff = np.abs(expected_ranks - worst_rank)
    diff = np.abs(expected_ranks - obtained_ranks)
    weights = _generate_weights(exp)
    worst_metric = np.sum(weights * worst_diff, axis=1)
    if k is not None:
        weights[:, k:] = 0
    metric = np.sum(weights * diff, axis=1) / worst_metric
    metric = np.clip(1 - metric, 0, 1)
    score.extend(metric)
    return float(np.array(score).mean())


def full_path_accuracy_reference(
    probabilities: np.ndarray, targets: np.ndarray, bottom_up_hierarchy: np.ndarray
) -> float:
    """Hier-COS's full-path accuracy "using HAFeat's approach" (the notebook's cell 43):
    ``bottom_up_hierarchy[c]`` holds class c, then its concept at each level upwards (their
    CIFAR-100 table has 5 columns; here any number); each coarser level predicted by the
    argmax of its concepts' summed probabilities."""
    levels = bottom_up_hierarchy.shape[1]
    level_targets = bottom_up_hierarchy[targets]
    all_out = [probabilities]
    all_targets = [targets]
    for level in range(1, levels):
        classes = np.unique(bottom_up_hierarchy[:, level])
        level_pred = np.zeros((level_targets.shape[0], classes.shape[0]))
        for c in classes:
            level_pred[:, c] = (
                probabilities[:, np.argwhere(bottom_up_hierarchy[:, level] == c)].squeeze().sum(1)
            )
        all_out.append(level_pred)
        all_targets.append(level_targets[:, level])
    fpa = None
    for i in range(1, levels):
        if fpa is None:
            fpa = (all_out[i - 1].argmax(1) == all_targets[i - 1]) & (
                all_out[i].argmax(1) == all_targets[i]
            )
        else:
            fpa = fpa & (all_out[i].argmax(1) == all_targets[i])
    return float(fpa.sum() / fpa.shape[0])


def post_hoc_adjustment(y: torch.Tensor, a: torch.Tensor, parent_child_mapping) -> torch.Tensor:
    """Hierarchical-Ensembles ``post_hoc_adjustment`` (util/misc.py): every class's
    probability times its parent's, in place."""
    bs = y.shape[0]
    for i in range(a.shape[1]):
        indices = torch.tensor(parent_child_mapping[i]).view(1, -1)
        y[torch.arange(bs)[:, None], indices] = (
            y[torch.arange(bs)[:, None], indices] * a[torch.arange(bs), i][:, None]
        )
    return y


def hie_reference(
    logits: torch.Tensor, parent_child_mapping, coarse: torch.Tensor | None = None
) -> torch.Tensor:
    """Hierarchical-Ensembles evaluate.py with ``--post_hoc 1``: ``post_hoc_adjustment`` of the
    softmax, then ``F.normalize(p=1)``; the parents' probabilities are ``coarse`` (their
    second model's softmax over the coarse classes, (N, P)) or, without it, the summed
    probabilities of each parent's classes under the same model."""
    probs = torch.softmax(logits, dim=-1)
    parents = torch.stack([probs[:, children].sum(1) for children in parent_child_mapping], 1)
    if coarse is not None:
        parents = coarse
    output = post_hoc_adjustment(probs.clone(), parents, parent_child_mapping)
    return torch.nn.functional.normalize(output, p=1, dim=-1)

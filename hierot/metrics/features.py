"""Metrics of a trained model's test features: TestCPCC under every distance, accuracy at
every level (mapped fine argmax, summed probabilities, an objective's own level heads) and
along the whole path, top-k, the making-better-mistakes table and HOPS under every decoding,
calibration, retrieval mAP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from hierot.checks import config_check
from hierot.correlation import reported_cpcc
from hierot.distances import DEFAULT_MEMORY_MB, check_memory, check_options, evaluation_options
from hierot.errors import ConfigError, require_integer
from hierot.hierarchy import Hierarchy
from hierot.metrics.calibration import calibration_errors
from hierot.metrics.decoding import DECODINGS, check_decode, marginal_predictions, ranked_classes
from hierot.metrics.epoch import LevelAccuracy, MistakeSeverity
from hierot.metrics.feature_space import knn_accuracy, prototype_retrieval, silhouette
from hierot.metrics.hops import hops
from hierot.metrics.mistakes import CONVENTIONS, mistake_metrics, top_k_accuracy


def average_hierarchical_distance(
    logits: torch.Tensor, target: torch.Tensor, tree_dist: torch.Tensor, k: int
) -> torch.Tensor:
    """AHD@k: the tree distance between the true class and each of the k highest-scoring
    classes, averaged over the k and over the samples (a correct top-1 counts 0).

    Args:
        logits: (N, K) scores; target: (N,) classes; tree_dist: (K, K).
    """
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return tree_dist.to(logits.device)[target[:, None], top].float().mean()


def full_path_accuracy(
    predictions: Mapping[int, torch.Tensor], target: torch.Tensor, hierarchy: Hierarchy
) -> torch.Tensor:
    """The share of samples whose prediction is right at every level given.

    Args:
        predictions: ``{level: (N,) predicted concept}``, each an index into
            ``hierarchy.level_map(level)`` (at the deepest level: the class id).
        target: (N,) true classes.
    """
    right = torch.ones_like(target, dtype=torch.bool)
    for level, predicted in predictions.items():
        truth = hierarchy.level_map(level)[1].to(target.device)[target]
        right &= predicted.to(target.device) == truth
    return right.double().mean()


def retrieval_map(z: torch.Tensor, labels: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Mean average precision of leave-one-out retrieval: every sample queries all the others
    ranked by Euclidean distance, and the relevant ones share its label. Queries with no
    relevant item are left out.

    Args:
        z: (N, d) features; labels: (N,) integer labels (fine classes or coarse concepts).
    """
    n = z.shape[0]
    if n < 2:
        return torch.tensor(0.0)
    total, counted = torch.zeros((), dtype=torch.float64), 0
    ranks = torch.arange(1, n, device=z.device, dtype=torch.float64)
    # Query blocks bound memory at chunk x N; the loop is over blocks, not samples.
    for start in range(0, n, chunk):
        q = torch.arange(start, min(start + chunk, n), device=z.device)
        dist = torch.cdist(z[q], z)
        dist[torch.arange(q.numel(), device=z.device), q] = float("inf")  # not itself
        order = dist.argsort(dim=1)[:, : n - 1]
        relevant = (labels[order] == labels[q, None]).double()
        hits = relevant.sum(1)
        precision = relevant.cumsum(1) / ranks
        ap = (precision * relevant).sum(1) / hits.clamp_min(1)
        total += ap[hits > 0].sum().cpu()
        counted += int((hits > 0).sum())
    return (total / max(counted, 1)).float()


# Metric families beyond the default ones, each chosen by name (``metrics=[...]``); the
# ones that need the training split's features say so. ``nodes`` (predictions that may stop
# at an inner node, ``hierot.metrics.node_eval``) reads the logits, not the features.
EXTRA_FAMILIES = ("silhouette", "knn", "prototypes", "nodes")
NEEDS_TRAIN_FEATURES = ("knn", "prototypes")


def feature_space_metrics(
    z: torch.Tensor,
    target: torch.Tensor,
    hierarchy: Hierarchy,
    level_names: Mapping[int, str],
    families: Sequence[str],
    train: tuple[torch.Tensor, torch.Tensor] | None = None,
    knn_k: int = 50,
    prefix: str = "test/",
    memory_mb: float = DEFAULT_MEMORY_MB,
) -> dict[str, float]:
    """The chosen ``EXTRA_FAMILIES`` of one split's features, as ``{prefix + name: value}``:
    ``silhouette_<level>`` at every coarse level, ``knn_acc@<k>`` (fine classes, the
    training features as the bank), ``proto_{map,precision,recall}_<level>`` at every level.

    Args:
        z: (N, d) features; target: (N,) fine classes.
        train: ``(features, fine classes)`` of the training split, for ``knn`` and
            ``prototypes``.
    """
    out: dict[str, torch.Tensor] = {}
    z, target = z.cpu(), target.cpu()
    if train is not None:
        train = (train[0].cpu(), train[1].cpu())
    finest = max(hierarchy.levels)
    with torch.no_grad():
        for level in hierarchy.levels:
            labels = hierarchy.level_map(level)[1][target]
            name = level_names[level]
            if (
                "silhouette" in families
                and level != finest
                and 2 <= labels.unique().numel() < len(labels)
            ):
                out[f"silhouette_{name}"] = silhouette(z, labels, memory_mb)
            if "prototypes" in families and train is not None:
                bank_labels = hierarchy.level_map(level)[1][train[1]]
                scores = prototype_retrieval(z, labels, train[0], bank_labels, memory_mb)
                out.update({f"proto_{key}_{name}": value for key, value in scores.items()})
        if "knn" in families and train is not None:
            out[f"knn_acc@{knn_k}"] = knn_accuracy(z, target, train[0], train[1], knn_k, memory_mb)
    return {prefix + name: float(value) for name, value in out.items()}


def level_metrics(
    z: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    hierarchy: Hierarchy,
    level_names: Mapping[int, str],
    level_logits: Mapping[int, torch.Tensor] | None,
    memory_mb: float,
) -> dict[str, torch.Tensor]:
    """Accuracy at every level (by the fine argmax, by summed probabilities, by a level's own
    head), retrieval mAP at every level and the full-path accuracies (``evaluate_features``)."""
    out: dict[str, torch.Tensor] = {}
    finest = max(hierarchy.levels)
    argmax = logits.argmax(dim=1)
    mapped: dict[int, torch.Tensor] = {finest: argmax}  # each level's prediction
    marginal: dict[int, torch.Tensor] = {finest: argmax}
    for level in hierarchy.levels:
        fine_to_level = hierarchy.level_map(level)[1].to(z.device)
        name = level_names[level]
        accuracy = LevelAccuracy(fine_to_level).to(z.device)
        out[f"acc_{name}"] = accuracy(logits, target)
        if level != finest:
            summed = marginal_predictions(logits, fine_to_level, memory_mb)
            out[f"acc_{name}_marginal"] = (summed == fine_to_level[target]).double().mean()
            marginal[level] = summed
            mapped[level] = fine_to_level[argmax]
            if level_logits is not None and level in level_logits:
                mapped[level] = level_logits[level].to(z.device).argmax(dim=1)
                truth = fine_to_level[target]
                out[f"acc_{name}_head"] = (mapped[level] == truth).double().mean()
        out[f"map_{name}"] = retrieval_map(z, fine_to_level[target])
    out["acc_path"] = full_path_accuracy(mapped, target, hierarchy)
    out["acc_path_marginal"] = full_path_accuracy(marginal, target, hierarchy)
    return out


def decoded_metrics(
    logits: torch.Tensor,
    target: torch.Tensor,
    hierarchy: Hierarchy,
    way: str,
    depth: int,
    ks: Sequence[int],
    ahd_k: Sequence[int],
    costs: Mapping[str, torch.Tensor],
    crm_cost: str,
    memory_mb: float,
    parent_logits: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Top-k accuracy, the making-better-mistakes table under both costs and HOPS of the
    classes ranked by the decoding ``way`` (keys prefixed ``<way>/`` but for ``argmax``);
    ``parent_logits``: the second model ``hie`` reads the parents' probabilities from."""
    parent = hierarchy.parent_map().to(logits.device)
    top = ranked_classes(logits, depth, way, costs[crm_cost], memory_mb, parent, parent_logits)
    out = dict(top_k_accuracy(top, target, ks))
    for convention, cost in costs.items():
        out.update(mistake_metrics(top, target, cost, convention, ahd_k, memory_mb))
    out.update(hops(logits, target, costs["lca"], ahd_k, way, costs[crm_cost], parent, memory_mb,
                    parent_logits))  # fmt: skip
    head = "" if way == "argmax" else f"{way}/"
    return {head + key: value for key, value in out.items()}


def evaluate_features(
    z: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    hierarchy: Hierarchy,
    level_names: Mapping[int, str],
    distances: Mapping[str, Mapping[str, object]],
    top_k: int | Sequence[int] = (1, 5),
    ahd_k: Sequence[int] = (1, 5),
    prefix: str = "test/",
    memory_mb: float = DEFAULT_MEMORY_MB,
    decode: Sequence[str] = ("argmax", "crm"),
    crm_cost: str = "lca",
    lca: torch.Tensor | None = None,
    undefined: dict[str, str] | None = None,
    level_logits: Mapping[int, torch.Tensor] | None = None,
    parent_logits: torch.Tensor | None = None,
) -> dict[str, float]:
    """Every metric of one split, as ``{prefix + name: value}``; an undefined CPCC is NaN
    (``hierot.correlation.reported_cpcc``).

    Args:
        z: (N, d) features; logits: (N, K); target: (N,) fine classes.
        level_names: ``{level: name}`` (``hierot.models.level_keys``), ``fine`` the deepest.
        distances: ``{method: options}``; each gives ``cpcc_<method>`` (a random distance
            left at ``seed=None`` with ``hierot.distances.EVALUATION_SEED``).
        top_k: the k of ``acc_top<k>`` (one or several).
        ahd_k: the k of every other ``@k`` metric (``hdist``, ``best``, ``hprec``, ``hmap``,
            ``hops``); a k above the number of classes K ranks all K classes (CRM's
            ``heapq.nlargest`` does the same), the key keeps its k.
        memory_mb: the memory budget of the class distances (``class_distances``) and of
            each block of rows of the (N, K) probabilities.
        decode: the decodings whose making-better-mistakes table and HOPS are reported;
            ``crm`` keys start with ``crm/``, ``hie`` keys with ``hie/`` (each class's
            parent: ``hierarchy.parent_map``).
        crm_cost: the cost CRM minimises, ``lca`` (as its paper) or ``path``.
        lca: (K, K) lowest-common-ancestor heights (default ``hierarchy.lca_heights()``; a
            dataset's own file through ``data.distances``).
        undefined: if given, ``{prefix + "cpcc_<method>": why}`` of each undefined CPCC is
            added to it (why completes "the split ...").
        level_logits: ``{level: (N, concepts) logits}`` of an objective's own head for each
            level above the classes (``mtl``'s ``level_logits``), or None.
        parent_logits: (N, K) a second model's scores of the same samples: ``hie`` reads
            the parents' probabilities from their softmax (``decode_parent_ckpt``), or None.

    Full-path accuracy: ``acc_path`` is the share of samples right at every level, each
    coarse level read from its own head where ``level_logits`` has one and otherwise mapped
    from the fine argmax, so that without level heads it equals ``acc_fine`` (a class's
    ancestors are right whenever the class is); ``acc_<level>_head`` is each head's own
    accuracy. ``acc_path_marginal`` reads every coarse level from the summed probabilities
    (``acc_<level>_marginal``), as HAFeat and Hier-COS report it.
    """
    tree_dist = hierarchy.tree_distances().to(z.device)
    costs = {
        "lca": (hierarchy.lca_heights() if lca is None else lca).to(z.device),
        "path": tree_dist,
    }
    ks = [top_k] if isinstance(top_k, int) else list(top_k)
    ks = sorted({min(k, hierarchy.num_classes) for k in ks})
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for method, options in distances.items():
            options = evaluation_options(method, options)
            value, why = reported_cpcc(z, target, tree_dist, method, memory_mb, **options)
            out[f"cpcc_{method}"] = value
            if why is not None and undefined is not None:
                undefined[f"{prefix}cpcc_{method}"] = why
        out.update(level_metrics(z, logits, target, hierarchy, level_names, level_logits,
                                 memory_mb))  # fmt: skip
        out["mistake_severity"] = MistakeSeverity(tree_dist).to(z.device)(logits, target)
        for k in ahd_k:
            out[f"ahd@{k}"] = average_hierarchical_distance(logits, target, tree_dist, k)
        depth = max([*ks, *ahd_k])
        for way in decode:
            out.update(decoded_metrics(logits, target, hierarchy, way, depth, ks, ahd_k, costs,
                                       crm_cost, memory_mb, parent_logits))  # fmt: skip
        out.update(calibration_errors(logits, target, memory_mb=memory_mb))
    return {prefix + name: float(value) for name, value in out.items()}


def require_integers(node: object, key: str, example: str) -> None:
    """``node``: a non-empty list of integers >= 1 (``key[i]`` named on a bad one)."""
    if not OmegaConf.is_list(node) or not node:
        raise ConfigError(f"{key} must be a non-empty list, e.g. {example}, got {node!r}")
    for i, k in enumerate(node):  # type: ignore[arg-type]
        require_integer(k, f"{key}[{i}]", 1)


@config_check(config="evaluate")
def check_feature_metrics_config(cfg: DictConfig) -> None:
    """What ``evaluate_features`` and ``feature_space_metrics`` take in an evaluation:
    ``distances``, ``memory_mb``, ``top_k``, ``ahd_k``, ``crm_cost``, ``metrics``, ``knn_k``."""
    if not isinstance(cfg.get("distances"), DictConfig) or not cfg.distances:
        raise ConfigError("distances: give at least one distance, e.g. distances={l2: {}}")
    for method, options in cfg.distances.items():
        try:
            check_options(str(method), OmegaConf.to_container(options))  # type: ignore[arg-type]
        except ValueError as e:
            raise ConfigError(f"distances.{method}: {e}") from None
    try:
        check_memory(cfg.memory_mb)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if OmegaConf.is_list(cfg.top_k):
        require_integers(cfg.top_k, "top_k", "[1, 5]")
    else:
        require_integer(cfg.top_k, "top_k", 1)
    require_integers(cfg.ahd_k, "ahd_k", "[1, 5]")
    if cfg.crm_cost not in CONVENTIONS:
        raise ConfigError(
            f"crm_cost: unknown cost {cfg.crm_cost!r}; available: {', '.join(CONVENTIONS)}"
        )
    families = [cfg.metrics] if isinstance(cfg.metrics, str) else cfg.metrics
    if not OmegaConf.is_list(families) and not isinstance(families, list):
        raise ConfigError(f"metrics must be a list of metric families, got {cfg.metrics!r}")
    for i, family in enumerate(families):
        if family not in (*EXTRA_FAMILIES, "all"):
            raise ConfigError(
                f"metrics[{i}]: unknown metric family {family!r}; available: "
                f"{', '.join(EXTRA_FAMILIES)}, all"
            )
    require_integer(cfg.knn_k, "knn_k", 1)


@config_check(config="evaluate")
def check_decode_config(cfg: DictConfig) -> None:
    """``decode``: a decoding (``DECODINGS``) or a non-empty list of them;
    ``decode_parent_ckpt`` only beside ``hie`` (the file itself is checked by
    ``hierot.evaluate``)."""
    if isinstance(cfg.decode, str):
        decodings, keys = [cfg.decode], ["decode"]
    elif OmegaConf.is_list(cfg.decode) and cfg.decode:
        decodings, keys = list(cfg.decode), [f"decode[{i}]" for i in range(len(cfg.decode))]
    else:
        raise ConfigError(
            f"decode must be {', '.join(DECODINGS)} or a list of them, got {cfg.decode!r}"
        )
    for way, key in zip(decodings, keys, strict=True):
        try:
            check_decode(way, key)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if cfg.get("decode_parent_ckpt") is not None and "hie" not in decodings:
        raise ConfigError(
            "decode_parent_ckpt: only the hie decoding reads it; add hie to decode "
            "(decode=[argmax,hie])"
        )

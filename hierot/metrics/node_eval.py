"""The ``nodes`` metric family of ``hierot.evaluate`` (``metrics=[nodes]``): every node rule
(``hierot.metrics.node_rules``) scored by ``hierot.metrics.node_scores``, and the threshold
rule's operating curve over a grid of thresholds, written as ``operating_curve.csv``."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from omegaconf import DictConfig

from hierot.checks import config_check
from hierot.errors import ConfigError, require_integer
from hierot.hierarchy import Hierarchy
from hierot.metrics.decoding import DEFAULT_MEMORY_MB, row_blocks
from hierot.metrics.node_rules import NODE_RULES, node_probabilities, node_tree, rule_nodes
from hierot.metrics.node_scores import NODE_METRICS, curve_areas, curve_sums, node_scores


def node_metrics(
    logits: torch.Tensor,
    target: torch.Tensor,
    hierarchy: Hierarchy,
    curve_points: int = 1001,
    top_down_threshold: float = 0.0,
    memory_mb: float = DEFAULT_MEMORY_MB,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """``(metrics, curve)``: ``metrics`` holds ``nodes/<rule>/<metric>`` (the mean over the
    samples, for every rule of ``NODE_RULES`` and metric of ``NODE_METRICS``) and
    ``nodes/curve/<area>`` (``CURVE_AREAS``); ``curve`` holds ``threshold`` (``curve_points``
    evenly spaced from 0 to 1, Valmadre's grid at 1001) and the mean of every metric there.

    Args:
        logits: (N, K) class scores (their softmax is read); target: (N,) classes.
        top_down_threshold: ``top_down`` steps to a child above it (0: down to a class).
        memory_mb: the budget of each block of rows.
    """
    tree = node_tree(hierarchy)
    n, m = logits.shape[0], tree.num_nodes
    thresholds = torch.linspace(0, 1, curve_points, dtype=torch.float64)
    sums = {f"{rule}/{name}": torch.zeros((), dtype=torch.float64) for rule in NODE_RULES
            for name in NODE_METRICS}  # fmt: skip
    curve = {name: torch.zeros(curve_points, dtype=torch.float64) for name in NODE_METRICS}
    # a block's (rows, M) and (rows, thresholds) tensors: the ancestors of the predictions
    # (2 (D + 1) longs) and a dozen of scores, sorts and intervals, 8 bytes each
    row_bytes = 8 * (m + curve_points) * (2 * len(tree.levels) + 16)
    with torch.no_grad():
        for rows in row_blocks(n, row_bytes, memory_mb):
            probs = node_probabilities(logits[rows].softmax(dim=1), tree)
            y = target[rows].to(probs.device)
            for rule in NODE_RULES:
                nodes = rule_nodes(probs, tree, rule, top_down_threshold)
                for name, value in node_scores(nodes[:, None], y, tree).items():
                    sums[f"{rule}/{name}"] += value.sum().cpu()
            for name, value in curve_sums(probs, y, tree, thresholds).items():
                curve[name] += value.cpu()
    curve = {name: value / max(n, 1) for name, value in curve.items()}
    out = {f"nodes/{key}": float(total) / max(n, 1) for key, total in sums.items()}
    out.update({f"nodes/curve/{key}": float(v) for key, v in curve_areas(curve).items()})
    return out, {"threshold": thresholds, **curve}


def write_operating_curve(path: Path, curve: dict[str, torch.Tensor]) -> None:
    """``curve`` (``node_metrics``) as a CSV: a header, then one row per threshold."""
    names = list(curve)
    rows = torch.stack([curve[name] for name in names], dim=1).tolist()
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        writer.writerows([[f"{value:.6g}" for value in row] for row in rows])


@config_check(config="evaluate")
def check_node_config(cfg: DictConfig) -> None:
    """``node_curve_points`` (an integer >= 2) and ``top_down_threshold`` (a number in
    [0, 1)), read by the ``nodes`` family."""
    require_integer(cfg.node_curve_points, "node_curve_points", 2)
    t = cfg.top_down_threshold
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < 1:
        raise ConfigError(f"top_down_threshold must be a number in [0, 1), got {t!r}")

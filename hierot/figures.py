"""Figures of a trained model: the label tree next to a dendrogram of the learned class
distances, and a 2-D embedding of the features colored by coarse class."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from scipy.cluster.hierarchy import dendrogram, linkage


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    from matplotlib import pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def tree_and_learned_dendrograms(
    tree_dist: torch.Tensor,
    learned: torch.Tensor,
    names: Sequence[str],
    path: Path,
    learned_title: str = "learned class distances",
) -> None:
    """Two dendrograms side by side, both by average linkage on a condensed distance vector
    in ``triu_indices`` order (scipy's order): the label tree's path lengths (for a tree
    whose leaves share one depth, average linkage redraws it exactly) and the learned
    class distances.

    Args:
        tree_dist: (k (k - 1) / 2,) tree distances of the classes shown.
        learned: (k (k - 1) / 2,) learned distances of the same pairs.
        names: (k,) class names.
    """
    plt = _pyplot()
    k = len(names)
    height = max(4.0, 0.16 * k)
    fig, axes = plt.subplots(1, 2, figsize=(11, height), layout="constrained")
    font = max(4, min(9, int(600 / max(k, 1))))
    for ax, condensed, title in (
        (axes[0], tree_dist, "label tree (path lengths)"),
        (axes[1], learned, learned_title),
    ):
        links = linkage(condensed.detach().double().cpu().numpy(), method="average")
        dendrogram(links, labels=list(names), orientation="left", ax=ax, leaf_font_size=font)
        ax.set_title(title)
    _save(fig, path)
    plt.close(fig)


def embedding_2d(z: torch.Tensor) -> torch.Tensor:
    """(N, 2) coordinates on the two leading principal components of ``z`` (N, d)."""
    centred = z.double() - z.double().mean(0, keepdim=True)
    # Exact PCA via SVD: the (d, d) problem is small next to the features.
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ v[:2].T).float()


def embedding_figure(
    z: torch.Tensor, groups: torch.Tensor, group_names: Sequence[str], path: Path, title: str
) -> None:
    """Scatter of the 2-D principal-component embedding of ``z`` (N, d), one color per
    ``groups`` (N,) value (the coarse class), named by ``group_names``."""
    plt = _pyplot()
    xy = embedding_2d(z).cpu().numpy()
    g = groups.cpu().numpy()
    fig, ax = plt.subplots(figsize=(7, 6), layout="constrained")
    cmap = plt.get_cmap("tab20" if len(group_names) > 10 else "tab10")
    for i, name in enumerate(group_names):
        sel = g == i
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.7, color=cmap(i % cmap.N), label=name)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title)
    if len(group_names) <= 20:
        ax.legend(fontsize="small", markerscale=2, loc="best")
    _save(fig, path)
    plt.close(fig)

"""Figures of a trained model: the label tree next to a dendrogram of the learned class
distances, and a 2-D embedding of the features coloured by top-level class with one marker
per second-level class.

Colours mean the same thing in every figure of a run: one per top-level class, the class's
own name where that name is a colour (the embedded data's palettes are named red, green,
blue, ...), otherwise a fixed qualitative palette in class order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.cluster.hierarchy import dendrogram, linkage

from hierot.report import finite_float

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    from matplotlib import pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def group_colors(names: Sequence[str]) -> list[tuple[float, float, float, float]]:
    """One RGBA colour per group: the group's name when every name is a distinct colour
    dark enough to see on white, else tab10/tab20 in order."""
    from matplotlib import colors

    plt = _pyplot()
    if all(colors.is_color_like(n) for n in names):
        rgba = [colors.to_rgba(n) for n in names]
        visible = all(0.2126 * r + 0.7152 * g + 0.0722 * b < 0.85 for r, g, b, _ in rgba)
        if visible and len(set(rgba)) == len(rgba):
            return rgba
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    return [cmap(i % cmap.N) for i in range(len(names))]


def tree_and_learned_dendrograms(
    tree_dist: torch.Tensor,
    learned: torch.Tensor,
    names: Sequence[str],
    path: Path,
    learned_title: str = "learned class distances",
    groups: Sequence[int] | None = None,
    group_names: Sequence[str] | None = None,
) -> None:
    """Two dendrograms side by side, both by average linkage on a condensed distance vector
    in ``triu_indices`` order (scipy's order): the label tree's path lengths (for a tree
    whose leaves share one depth, average linkage redraws it exactly) and the learned
    class distances. Branches are drawn in one colour; class names are coloured by their
    top-level class, so that a learned tree that mixes top-level classes shows it.

    Args:
        tree_dist: (k (k - 1) / 2,) tree distances of the classes shown.
        learned: (k (k - 1) / 2,) learned distances of the same pairs.
        names: (k,) class names.
        groups: (k,) top-level class index of each class; ``group_names`` names them.
    """
    plt = _pyplot()
    k = len(names)
    height = max(4.0, 0.16 * k)
    fig, axes = plt.subplots(1, 2, figsize=(11, height), layout="constrained")
    font = max(4, min(9, int(600 / max(k, 1))))
    palette = group_colors(group_names) if groups is not None and group_names else None
    for ax, condensed, title, unit in (
        (axes[0], tree_dist, "label tree", "tree distance (edges)"),
        (axes[1], learned, learned_title, "learned distance"),
    ):
        links = linkage(condensed.detach().double().cpu().numpy(), method="average")
        dendrogram(
            links, labels=list(names), orientation="left", ax=ax, leaf_font_size=font,
            color_threshold=0, above_threshold_color="0.25",
        )  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel(f"{unit}, average linkage")
        if palette is not None and groups is not None:
            index = {n: i for i, n in enumerate(names)}
            for label in ax.get_yticklabels():
                label.set_color(palette[groups[index[label.get_text()]]])
    if palette is not None and group_names:
        from matplotlib.patches import Patch

        handles = [Patch(color=c, label=n) for c, n in zip(palette, group_names, strict=True)]
        if len(handles) <= 20:
            fig.legend(
                handles=handles, fontsize="small", loc="outside lower center",
                ncol=min(len(handles), 6), title="top-level class",
            )  # fmt: skip
    _save(fig, path)
    plt.close(fig)


def embedding_2d(z: torch.Tensor) -> torch.Tensor:
    """(N, 2) coordinates on the two leading principal components of ``z`` (N, d)."""
    centred = z.double() - z.double().mean(0, keepdim=True)
    # Exact PCA via SVD: the (d, d) problem is small next to the features.
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ v[:2].T).float()


def embedding_figure(
    z: torch.Tensor,
    groups: torch.Tensor,
    group_names: Sequence[str],
    path: Path,
    title: str,
    subgroups: torch.Tensor | None = None,
    subgroup_names: Sequence[str] | None = None,
    subgroup_parent: Sequence[int] | None = None,
) -> None:
    """Scatter of the 2-D principal-component embedding of ``z`` (N, d): colour by
    ``groups`` (N,) (the top-level class), marker by ``subgroups`` (N,) (a second-level
    class; its marker is its rank among its parent's children, ``subgroup_parent``).

    A model that only learned the top level shows one colour per cluster but markers mixed
    inside it; the title should carry the fine accuracy so that nobody reads more into it.
    """
    plt = _pyplot()
    xy = embedding_2d(z).cpu().numpy()
    g = groups.cpu().numpy()
    palette = group_colors(group_names)
    fig, ax = plt.subplots(figsize=(7.5, 6.5), layout="constrained")
    if subgroups is None or subgroup_names is None or subgroup_parent is None:
        for i, name in enumerate(group_names):
            sel = g == i
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.6, color=palette[i], label=name)
        shown = len(group_names)
    else:
        s = subgroups.cpu().numpy()
        rank: list[int] = []
        seen: dict[int, int] = {}
        for parent in subgroup_parent:
            rank.append(seen.get(parent, 0))
            seen[parent] = rank[-1] + 1
        for j, name in enumerate(subgroup_names):
            sel = s == j
            if sel.any():
                parent = subgroup_parent[j]
                ax.scatter(
                    xy[sel, 0], xy[sel, 1], s=9, alpha=0.6, color=palette[parent],
                    marker=MARKERS[rank[j] % len(MARKERS)],
                    label=f"{group_names[parent]} / {name}",
                )  # fmt: skip
        shown = len(subgroup_names)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title, fontsize="medium")
    if shown <= 24:
        ax.legend(fontsize="x-small", markerscale=2, loc="best", ncol=2 if shown > 12 else 1)
    _save(fig, path)
    plt.close(fig)


# ---- sweep summaries: TestCPCC against lambda (summary.png)

# summary.png's panels: TestCPCC under l2 compares every run on one scale; each run's own
# distance is what its regularizer optimized.
PANELS = (
    ("test/cpcc_l2", "TestCPCC under l2 (test/cpcc_l2)"),
    ("test/cpcc", "TestCPCC under the run's distance (test/cpcc)"),
)
MIN_SPAN = 0.2  # the y range shown is at least this wide, so seed noise does not look like a trend


def _lines(
    rows: Sequence[Mapping[str, object]], metric: str
) -> dict[tuple[float, str], dict[float, list[float]]]:
    """{(batch size, dist): {lam: [value per seed]}} of the completed rows."""
    lines: dict[tuple[float, str], dict[float, list[float]]] = {}
    for row in rows:
        lam, value = finite_float(row.get("lam")), finite_float(row.get(metric))
        batch = finite_float(row.get("data.batch_size"))
        if row.get("status") != "completed" or lam is None or value is None:
            continue
        key = (batch if batch is not None else math.nan, str(row.get("dist")))
        lines.setdefault(key, {}).setdefault(lam, []).append(value)
    return lines


def save_whole(fig, path: Path) -> bool:
    """Write ``fig`` to ``path`` whole or not at all (a sweep's jobs may finish together) and
    close it; False, writing nothing, if ``fig`` is None (nothing to plot)."""
    if fig is None:
        return False
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    _pyplot().close(fig)
    return True


def save_summary_figure(path: Path, rows: Sequence[Mapping[str, object]], title: str = "") -> bool:
    """Write ``summary_figure`` to ``path`` (whole or not at all); False if nothing to plot."""
    return save_whole(summary_figure(rows, title), path)


def summary_figure(rows: Sequence[Mapping[str, object]], title: str = ""):
    """TestCPCC against lambda, one line per (batch size, distance), the mean over seeds
    with their spread as error bars; None if no completed row has a value."""
    panels = [(m, label, lines) for m, label in PANELS if (lines := _lines(rows, m))]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.5 * len(panels), 4.2), layout="constrained", squeeze=False
    )
    seeds = 1
    for ax, (_, label, lines) in zip(axes[0], panels, strict=True):
        values: list[float] = []
        lams: set[float] = set()
        for (batch, dist), by_lam in sorted(lines.items()):
            xs = sorted(by_lam)
            ys = [float(np.mean(by_lam[x])) for x in xs]
            spread = [float(np.std(by_lam[x])) for x in xs]
            seeds = max(seeds, *(len(v) for v in by_lam.values()))
            batch_label = "?" if math.isnan(batch) else f"{batch:g}"
            ax.errorbar(
                xs, ys, yerr=spread if any(spread) else None, marker="o", capsize=3,
                label=f"{dist}, batch {batch_label}",
            )  # fmt: skip
            values += [v for vs in by_lam.values() for v in vs]
            lams.update(xs)
        positive = sorted(x for x in lams if x > 0)
        if positive and 0 in lams:
            # lam = 0 (no regularizer) stays on the axis: linear below the smallest lam.
            ax.set_xscale("symlog", linthresh=positive[0])
        elif positive and positive[-1] / positive[0] >= 10:
            ax.set_xscale("log")
        low, high = min(values), max(values)
        if high - low < MIN_SPAN:
            mid = (high + low) / 2
            low, high = mid - MIN_SPAN / 2, mid + MIN_SPAN / 2
        pad = 0.05 * (high - low)
        ax.set_ylim(low - pad, high + pad)
        ax.set_xlabel("lambda (weight of the CPCC regularizer)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    what = f"mean of {seeds} seeds, bars: std" if seeds > 1 else "one seed per point"
    heading = f"TestCPCC vs lambda ({what})"
    fig.suptitle(f"{title}: {heading}" if title else heading)
    return fig

"""The trade-off figure of the mistake-severity papers (making-better-mistakes, CRM, HAF,
HAFrame, Hier-COS): top-1 error against how bad the mistakes are, one point per run.

A sweep's summary (``hierot.sweep.write_summary``) draws it as ``tradeoff.png`` from its
jobs' ``metrics.json``: a training sweep has ``test/mistake_severity``; a sweep of
``hierot.evaluate`` over checkpoints (``-m ckpt=a,b``) also has ``test/ahd@k``, each k a
panel. The runs of one method (every swept setting but the seed) share a colour.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from hierot.report import finite_float

ERROR_OF = "test/acc_fine"  # the error is 1 - this
SEVERITY = "test/mistake_severity"
AHD = re.compile(r"^test/ahd@(\d+)$")
# Row keys that tell a method apart when nothing was swept but them.
METHOD_KEYS = ("objective", "dist", "lam")
# Swept keys that tell runs of one method apart, not methods.
REPEAT_KEYS = ("seed", "ckpt")


def tradeoff_panels(rows: Sequence[Mapping[str, object]]) -> list[tuple[str, str]]:
    """``[(metric key, axis label)]``: mistake severity, then ``ahd@k`` in k order, each
    where some completed row has it and a fine accuracy."""
    done = [r for r in rows if r.get("status", "completed") == "completed"]
    done = [r for r in done if finite_float(r.get(ERROR_OF)) is not None]
    keys = {k for r in done for k, v in r.items() if finite_float(v) is not None}
    panels = [(SEVERITY, "mistake severity (mean tree distance of the mistakes)")]
    ks = sorted(int(m.group(1)) for k in keys if (m := AHD.match(k)))
    panels += [(f"test/ahd@{k}", f"average hierarchical distance @{k}") for k in ks]
    return [(key, label) for key, label in panels if key in keys]


def method_label(row: Mapping[str, object], swept: Sequence[str]) -> str:
    """The method of a run: its swept settings other than the seed or checkpoint, else its
    objective, distance and lambda."""
    keys = [k for k in swept if k not in REPEAT_KEYS] or [k for k in METHOD_KEYS if k in row]
    return " ".join(f"{k}={row.get(k)}" for k in keys) or "run"


def swept_keys(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """The override keys (``override:<key>``) whose value differs between rows, unprefixed."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(k for k in row if k.startswith("override:")))
    return [k[len("override:") :] for k in keys if len({str(r.get(k)) for r in rows}) > 1]


def tradeoff_points(
    rows: Sequence[Mapping[str, object]], metric: str
) -> dict[str, list[tuple[float, float]]]:
    """``{method: [(top-1 error, metric) per run]}`` of the completed rows with both."""
    swept = swept_keys(rows)
    points: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        acc, value = finite_float(row.get(ERROR_OF)), finite_float(row.get(metric))
        if row.get("status", "completed") != "completed" or acc is None or value is None:
            continue
        plain = {k.removeprefix("override:"): v for k, v in row.items()}
        points.setdefault(method_label(plain, swept), []).append((1 - acc, value))
    return points


def tradeoff_figure(rows: Sequence[Mapping[str, object]], title: str = ""):
    """Top-1 error (x) against each of ``tradeoff_panels`` (y), one point per run, a colour
    per method; None if no completed run has a fine accuracy and a severity."""
    from hierot.figures import _pyplot, group_colors

    panels = tradeoff_panels(rows)
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.5 * len(panels), 4.2), layout="constrained", squeeze=False
    )
    for ax, (metric, label) in zip(axes[0], panels, strict=True):
        points = tradeoff_points(rows, metric)
        colors = group_colors(sorted(points))
        for color, method in zip(colors, sorted(points), strict=True):
            xs, ys = zip(*points[method], strict=True)
            ax.scatter(xs, ys, color=color, label=f"{method} ({len(xs)})", s=28)
        ax.set_xlabel("top-1 error (1 - test/acc_fine)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    heading = "top-1 error vs mistake severity (one point per run; lower-left is better)"
    fig.suptitle(f"{title}: {heading}" if title else heading)
    return fig


def save_tradeoff_figure(path: Path, rows: Sequence[Mapping[str, object]], title: str = "") -> bool:
    """Write ``tradeoff_figure`` to ``path`` (whole or not at all); False if nothing to plot."""
    from hierot.figures import save_whole

    return save_whole(tradeoff_figure(rows, title), path)

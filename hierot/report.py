"""The run's summary: ``metrics.json`` (flat keys) and the table printed at the end."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from hierot.results import environment
from hierot.writes import write_json


def as_number(value: object) -> float | int | str | None:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    return value  # type: ignore[return-value]


def finite_float(value: object) -> float | None:
    """``value`` as a finite float (a number or a numeric string), else None."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def write_metrics(path: Path, metrics: Mapping[str, object]) -> None:
    """``metrics.json``: flat keys, tensors as numbers, NaN as null."""
    write_json(path, {k: as_number(v) for k, v in metrics.items()})


# How a table shows a number that does not exist (NaN in a run, null in metrics.json).
UNDEFINED = "n/a"


def shown(value: object) -> str:
    """A table cell: 4 decimals, NaN (or null) as ``n/a``."""
    value = as_number(value)
    if value is None:
        return UNDEFINED
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_table(
    metrics: Mapping[str, object], prefix: str = "test/", columns: tuple[str, ...] = ("crm",)
) -> str:
    """The metrics under ``prefix`` as a text table, one row per name; a metric also given
    under ``prefix + column + "/"`` (another decoding) shows in that column of its row."""
    values = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
    if not values:
        return ""
    extra = [c for c in columns if any(k.startswith(f"{c}/") for k in values)]
    names = sorted(k for k in values if not any(k.startswith(f"{c}/") for c in extra))
    width = max(len(prefix + k) for k in names)

    def cell(key: str) -> str:
        return shown(values[key]) if key in values else ""

    lines = [
        "  ".join([f"{'metric':<{width}}", "value ", *(f"{c:<6}" for c in extra)]).rstrip(),
        "  ".join([f"{'-' * width}", "------", *("------" for _ in extra)]),
    ]
    for k in names:
        cells = [f"{prefix + k:<{width}}", f"{cell(k):<6}"]
        cells += [f"{cell(f'{c}/{k}'):<6}" for c in extra]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# The report's families: a metric ``<split>/<name>`` belongs to the leading word of its name
# (``test/acc_top5``: ``acc``; ``test/knn_acc@50``: ``knn``), any other key with a ``/`` to
# its first part (``ood/ssd_raw/auroc``: ``ood``), a key without one to ``run``. Words listed
# here share the title given; any other word is a family of its own, titled by itself.
SPLITS = ("train", "val", "test", "transfer")
FAMILY_TITLES = {
    "run": "run",
    "cpcc": "CPCC",
    "acc": "accuracy",
    "map": "retrieval mAP",
    **dict.fromkeys(
        ("mistake", "ahd", "severity", "hdist", "best", "hprec", "hmap", "hops"), "mistakes"
    ),
    **dict.fromkeys(("ece", "mce"), "calibration"),
    "knn": "kNN",
    "proto": "prototype retrieval",
    "nodes": "node predictions",
    "ood": "OOD detection",
}


def key_cell(key: str, columns: tuple[str, ...]) -> tuple[str, str, str]:
    """``(family, row, column)`` of a metrics key in ``format_report``: ``test/crm/acc_top1``
    is row ``test/acc_top1``, column ``crm`` (a name in ``columns``); ``ood/ssd_raw/auroc`` row
    ``ood/ssd_raw``, column ``auroc`` (the last part); ``test/ece`` row ``test/ece``, column
    ``value``."""
    parts = key.split("/")
    if len(parts) == 1:
        return "run", key, "value"
    if len(parts) > 2 and parts[1] in columns:
        row, column = "/".join([parts[0], *parts[2:]]), parts[1]
    elif len(parts) > 2:
        row, column = "/".join(parts[:-1]), parts[-1]
    else:
        row, column = key, "value"
    name = row.split("/", 1)[1] if parts[0] in SPLITS else parts[0]
    word = re.match(r"[A-Za-z]*", name).group() or name  # type: ignore[union-attr]
    return word, row, column


def format_report(metrics: Mapping[str, object], columns: tuple[str, ...] = ("crm", "hie")) -> str:
    """Every key of ``metrics`` in a short table per family (``key_cell``), the families in
    the order of their first key, ``run`` (keys without a ``/``) first, rows sorted by name;
    a number to 4 decimals, NaN or None as ``n/a``, a cell no key fills empty."""
    tables: dict[str, dict[str, dict[str, object]]] = {"run": {}}
    for key, value in metrics.items():
        word, row, column = key_cell(key, columns)
        family = FAMILY_TITLES.get(word, word)
        tables.setdefault(family, {}).setdefault(row, {})[column] = value
    width = max(len(name) for rows in tables.values() for name in [*rows, "run"])
    out = []
    for family, rows in tables.items():
        if not rows:
            continue
        found = {column: None for cells in rows.values() for column in cells}
        heads = [c for c in ("value", *columns) if c in found]
        heads += [c for c in found if c not in heads]
        body = [[name, *(shown(cells[c]) if c in cells else "" for c in heads)]
                for name, cells in sorted(rows.items())]  # fmt: skip
        sizes = [
            width,
            *(max(6, len(h), *(len(r[i + 1]) for r in body)) for i, h in enumerate(heads)),
        ]
        lines = [[family, *heads], ["-" * n for n in sizes], *body]
        out.append("\n".join(
            "  ".join(f"{c:<{n}}" for c, n in zip(line, sizes, strict=True)).rstrip()
            for line in lines
        ))  # fmt: skip
    return "\n\n".join(out)


def provenance(repo: Path | None = None) -> str:
    """One line naming where and when a measurement was made (``results.environment``):
    the CPU (and GPU) with its core count, torch's version, the git commit, the UTC date."""
    env = environment(repo)
    return f"{env['machine']}, torch {env['torch']}, commit {env['commit']}, {env['date']}"

"""The run's summary: ``metrics.json`` (flat keys) and the table printed at the end."""

from __future__ import annotations

import math
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


def format_table(
    metrics: Mapping[str, object], prefix: str = "test/", columns: tuple[str, ...] = ("crm",)
) -> str:
    """The metrics under ``prefix`` as a text table, one row per name; a metric also given
    under ``prefix + column + "/"`` (another decoding) shows in that column of its row."""
    values = {k[len(prefix) :]: as_number(v) for k, v in metrics.items() if k.startswith(prefix)}
    if not values:
        return ""
    extra = [c for c in columns if any(k.startswith(f"{c}/") for k in values)]
    names = sorted(k for k in values if not any(k.startswith(f"{c}/") for c in extra))
    width = max(len(prefix + k) for k in names)

    def shown(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = [
        "  ".join([f"{'metric':<{width}}", "value ", *(f"{c:<6}" for c in extra)]).rstrip(),
        "  ".join([f"{'-' * width}", "------", *("------" for _ in extra)]),
    ]
    for k in names:
        cells = [f"{prefix + k:<{width}}", f"{shown(values[k]):<6}"]
        cells += [f"{shown(values.get(f'{c}/{k}')):<6}" for c in extra]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def provenance(repo: Path | None = None) -> str:
    """One line naming where and when a measurement was made (``results.environment``):
    the CPU (and GPU) with its core count, torch's version, the git commit, the UTC date."""
    env = environment(repo)
    return f"{env['machine']}, torch {env['torch']}, commit {env['commit']}, {env['date']}"

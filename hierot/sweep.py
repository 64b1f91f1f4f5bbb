"""Sweep summaries: ``summary.csv`` and ``summary.png`` in a Hydra multirun directory.

The summary is rebuilt from the files each job leaves in its own directory (``metrics.json``
and Hydra's ``.hydra/overrides.yaml`` / ``.hydra/config.yaml``), never from in-process
return values, so it works the same for local jobs and for jobs a launcher such as
``submitit_slurm`` ran on other machines; a job that failed is a row with its status and
error, not a lost sweep. The Hydra callback that writes it during a sweep is
``hierot.hydra_callbacks.SweepSummary``; the figure is ``hierot.figures.summary_figure``.

    hierot-sweep-summary multirun/2026-11-23/10-00-00     # rebuild by hand
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hierot.errors import ConfigError, user_message
from hierot.figures import save_summary_figure
from hierot.overrides import parse_overrides
from hierot.report import UNDEFINED, finite_float, write_metrics
from hierot.tradeoff import save_tradeoff_figure
from hierot.writes import write_rows

log = logging.getLogger(__name__)

# Columns every row has, after ``job``, ``status`` and the job's command-line overrides.
SETTINGS = ["objective", "dist", "lam", "data.batch_size", "seed", "backbone"]
METRICS = ["test/cpcc", "test/cpcc_l2"]
TAIL = ["test/mistake_severity", "fit_seconds", "steps", "error"]
OVERRIDE = "override:"  # row keys of command-line overrides; the CSV header drops it


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _settings(config: Mapping[str, Any] | None) -> dict[str, object]:
    """The summary's setting columns read off a job's composed config."""
    if not isinstance(config, Mapping):
        return {}
    dist = config.get("dist") or {}
    objective = config.get("objective") or {}
    data = config.get("data") or {}
    backbone = config.get("backbone") or {}
    return {
        "objective": objective.get("name") if isinstance(objective, Mapping) else None,
        "dist": dist.get("method") if isinstance(dist, Mapping) else None,
        "lam": config.get("lam"),
        "data.batch_size": data.get("batch_size") if isinstance(data, Mapping) else None,
        "seed": config.get("seed"),
        "backbone": backbone.get("name") if isinstance(backbone, Mapping) else None,
    }


def job_row(job_dir: Path) -> dict[str, object] | None:
    """One job's row, or None if ``job_dir`` is not a Hydra job directory."""
    overrides = _read_yaml(job_dir / ".hydra" / "overrides.yaml")
    if not isinstance(overrides, list):
        return None
    row: dict[str, object] = {"job": job_dir.name}
    try:
        parsed = parse_overrides([str(item) for item in overrides])
    except ConfigError:
        parsed = []  # a record no parser reads: the row keeps its settings and metrics
    for o in parsed:
        row[OVERRIDE + o.key_or_group] = "" if o.is_delete() else str(o.value())
    row.update(_settings(_read_yaml(job_dir / ".hydra" / "config.yaml")))
    try:
        metrics = json.loads((job_dir / "metrics.json").read_text())
    except FileNotFoundError:
        # Started but never finished: still running, killed, or out of time on a cluster.
        metrics = {"status": "not finished"}
    except (OSError, json.JSONDecodeError) as e:
        metrics = {"status": "unreadable", "error": f"metrics.json: {e}"}
    row.update(metrics)
    row.setdefault("status", "completed")
    return row


def collect(sweep_dir: Path) -> list[dict[str, object]]:
    """Rows of every job directory directly under ``sweep_dir``, in job-number order."""
    dirs = [d for d in sweep_dir.iterdir() if d.is_dir()]
    dirs.sort(key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))
    return [row for d in dirs if (row := job_row(d)) is not None]


def columns(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """``job``, ``status``, the swept overrides (those whose value differs between jobs, or
    every override of a one-job sweep), the settings, TestCPCC, accuracies, the rest."""
    overrides: dict[str, None] = {}
    for row in rows:
        overrides.update(dict.fromkeys(k for k in row if k.startswith(OVERRIDE)))
    swept = [
        k
        for k in overrides
        if k[len(OVERRIDE) :] not in SETTINGS
        and (len(rows) == 1 or len({str(r.get(k)) for r in rows}) > 1)
    ]
    accuracies = sorted({k for row in rows for k in row if k.startswith("test/acc_")})
    return ["job", "status", *swept, *SETTINGS, *METRICS, *accuracies, *TAIL]


def _header(name: str) -> str:
    return name[len(OVERRIDE) :] if name.startswith(OVERRIDE) else name


def write_csv(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    names = columns(rows)
    # Jobs on a cluster may finish together: each writes whole files, the last one wins.
    write_rows(path, names, rows, [_header(n) for n in names])


def _is_metric(key: str) -> bool:
    return "/" in key and not key.startswith(OVERRIDE)


def seed_summary(
    rows: Sequence[Mapping[str, object]], over: Sequence[str] = ("seed",)
) -> list[dict[str, object]]:
    """One row per setting of the completed jobs: they are grouped by every swept override
    and setting column except those named in ``over`` (the seeds, or the checkpoints of one
    method's seeds); each metric (a key with a ``/``) gets its mean, ``<metric>_std`` (the
    sample standard deviation; empty for one job) and ``jobs`` the group's size."""
    done = [r for r in rows if r.get("status") == "completed"]
    if not done:
        return []
    keys = [
        k
        for k in columns(done)
        if k not in ("job", "status")
        and not _is_metric(k)
        and k not in TAIL
        and _header(k) not in over
        and k not in over
    ]
    keys = [k for k in keys if any(r.get(k) not in (None, "") for r in done)]
    metrics = sorted(
        {k for r in done for k in r if _is_metric(k) and finite_float(r[k]) is not None}
    )
    groups: dict[tuple[str, ...], list[Mapping[str, object]]] = {}
    for row in done:
        groups.setdefault(tuple(str(row.get(k, "")) for k in keys), []).append(row)
    out = []
    for key, members in groups.items():
        summary: dict[str, object] = {_header(k): v for k, v in zip(keys, key, strict=True)}
        summary["jobs"] = len(members)
        for metric in metrics:
            values = [v for r in members if (v := finite_float(r.get(metric))) is not None]
            if values:
                summary[metric] = float(np.mean(values))
                summary[f"{metric}_std"] = (
                    float(np.std(values, ddof=1)) if len(values) > 1 else None
                )
        out.append(summary)
    return out


def write_seed_summary(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    write_rows(path, list(names), rows, list(names))


def format_seed_summary(rows: Sequence[Mapping[str, object]], limit: int = 6) -> str:
    """The per-setting means as a text table: the settings, ``jobs`` and the first
    ``limit`` metrics of any row as mean +- std (``n/a`` where no seed had a value)."""
    if not rows:
        return ""
    first = ("test/cpcc", "test/acc_fine", "test/mistake_severity", "transfer/acc_fine")
    named = dict.fromkeys(k for row in rows for k in row)
    metrics = [k for k in named if _is_metric(k) and not k.endswith("_std")]
    metrics = sorted(metrics, key=lambda k: (k not in first, first.index(k) if k in first else 0))
    metrics = metrics[:limit]
    settings = [k for k in rows[0] if not _is_metric(k) and not k.endswith("_std")]

    def cell(row: Mapping[str, object], key: str) -> str:
        if key not in metrics:
            return str(row.get(key, ""))
        mean, std = row.get(key), row.get(f"{key}_std")
        if mean is None:
            return UNDEFINED
        return f"{mean:.4f}" + (f" +- {std:.4f}" if isinstance(std, float) else "")

    header = [*settings, *metrics]
    table = [header, *([cell(r, k) for k in header] for r in rows)]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(f"{c!s:<{w}}" for c, w in zip(line, widths, strict=True)).rstrip()
        for line in table
    )


def write_summary(sweep_dir: Path, over: Sequence[str] = ("seed",)) -> list[dict[str, object]]:
    """Write ``summary.csv`` (one row per job), ``summary_seeds.csv`` (the mean and spread
    over ``over`` of each setting), ``summary.png`` (when a job completed and TestCPCC is
    there to plot) and ``tradeoff.png`` (top-1 error against mistake severity, when a job
    completed with both) into ``sweep_dir``."""
    rows = collect(sweep_dir)
    write_csv(sweep_dir / "summary.csv", rows)
    write_seed_summary(sweep_dir / "summary_seeds.csv", seed_summary(rows, over))
    save_summary_figure(sweep_dir / "summary.png", rows, title=f"sweep {sweep_dir.name}")
    save_tradeoff_figure(sweep_dir / "tradeoff.png", rows, title=f"sweep {sweep_dir.name}")
    return rows


def record_failure(job_dir: Path, error: object) -> None:
    """A failed job's ``metrics.json``: its status and its error as one line."""
    message = user_message(error) if isinstance(error, BaseException) else str(error)
    write_metrics(
        job_dir / "metrics.json",
        {"status": "failed", "error": f"{type(error).__name__}: {message}"},
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``hierot-sweep-summary SWEEP_DIR`` (or ``python -m hierot.sweep SWEEP_DIR``): rebuild
    a sweep's summary files from its jobs' ``metrics.json``."""
    args = list(sys.argv[1:] if argv is None else argv)
    script = Path(sys.argv[0]).name
    prog = script if script.startswith("hierot-") else "python -m hierot.sweep"
    usage = f"usage: {prog} SWEEP_DIR"
    if args in (["-h"], ["--help"]):
        print(f"{usage}\n\nWrite summary.csv, summary_seeds.csv, summary.png and tradeoff.png "
              "of a sweep "
              "from its jobs' metrics.json.")  # fmt: skip
        return
    if len(args) != 1:
        print(usage, file=sys.stderr)
        sys.exit(2)
    if not Path(args[0]).is_dir():
        print(f"{prog}: error: {args[0]}: no such folder", file=sys.stderr)
        sys.exit(2)
    rows = write_summary(Path(args[0]))
    print(f"{Path(args[0]) / 'summary.csv'}: {len(rows)} jobs")


if __name__ == "__main__":
    main()

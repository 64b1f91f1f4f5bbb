"""Compare hierot's training objectives and CPCC distances over paired seeds.

Each method runs as one Hydra multirun over the seeds (``<out>/<method>/<job>``), on the data
you choose; the script then prints two tables and writes them to ``<out>/comparison.md`` and
as results CSVs, ``<out>/means.csv`` and ``<out>/paired.csv`` (``hierot.results``; copied
into ``docs/results/`` they are rendered there by ``scripts/render_results.py``):
every method's mean +- std over its seeds, and every method against a baseline (default
``ce``, flat cross-entropy): the mean difference over the seeds both completed, its 95 %
confidence interval (Student's t) and the paired t-test's p-value, marked with ``*`` only
where the interval excludes 0. Extra arguments are passed to every job; one that sweeps
(``lam=0.1,1``) adds a column, since rows pool seeds only.

A method is ``objective[+dist]``: ``hxe`` is HXE alone, ``hxe+fastft`` HXE with FastFT-CPCC;
a distance alone (``l2``, ``fastft``) is cross-entropy with that CPCC, and ``ce`` (or
``none``) flat cross-entropy.

    python scripts/compare_methods.py                            # all but staged, seeds 0-4
    python scripts/compare_methods.py --methods ce curriculum supcon -- trainer.max_epochs=10
    python scripts/compare_methods.py --methods ce l2 fastft hxe --seeds 0 1 2
    python scripts/compare_methods.py --transfer -- data.modes=4   # source -> target
    python scripts/compare_methods.py --summary multirun/compare_methods/<date>   # tables only

With ``--transfer`` every job trains on ``data.split=source`` and its best checkpoint is then
transferred to the target split (``python -m hierot.transfer``, 1 shot, the job's seed);
the tables gain the transfer accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from scipy import stats

from hierot.objectives import get_objective
from hierot.results import command_line, environment, rows_from_markdown, write_results
from hierot.writes import write_json

CONF = Path(__file__).resolve().parents[1] / "hierot" / "conf"
DISTANCES = sorted(p.stem for p in (CONF / "dist").glob("*.yaml") if p.stem != "none")
OBJECTIVES = sorted(p.stem for p in (CONF / "objective").glob("*.yaml"))
# every objective alone, then cross-entropy with every CPCC distance
METHODS = ["ce", *[o for o in OBJECTIVES if o != "ce"], *DISTANCES]
# what runs without --methods: every method but the staged objectives (curriculum, supcon),
# whose stages need more epochs than most runs (--methods ce curriculum supcon --
# trainer.max_epochs=10)
DEFAULT_METHODS = [m for m in METHODS if m in DISTANCES or len(get_objective(m).stage_names) < 2]
SHOWN = {"ce": "flat (CE only)"}
FIRST = ["test/cpcc", "test/cpcc_l2"]
LAST = ["test/mistake_severity"]
# the differences the paired table reports, where the rows have them
PAIRED = ["test/acc_fine", "test/cpcc", "test/mistake_severity", "transfer/acc_fine"]


def parse_method(spec: str) -> tuple[str, str]:
    """``(objective, dist)`` of a method: ``hxe+fastft``, ``hxe``, ``l2`` (= ``ce+l2``),
    ``ce`` or ``none`` (flat cross-entropy)."""
    objective, _, dist = spec.partition("+")
    if not dist:
        if objective == "none":
            return "ce", "none"
        if objective in DISTANCES:
            return "ce", objective
        dist = "none"
    if objective not in OBJECTIVES or dist not in [*DISTANCES, "none"]:
        sys.exit(
            f"compare_methods: error: unknown method {spec!r}; objectives: "
            f"{', '.join(OBJECTIVES)}; distances: {', '.join(DISTANCES)}"
        )
    return objective, dist


def method_label(objective: str, dist: str) -> str:
    """The name of a method in the tables (``parse_method`` reads it back)."""
    if objective == "ce":
        return "ce" if dist == "none" else dist
    return objective if dist == "none" else f"{objective}+{dist}"


def read_rows(summary: Path) -> list[dict[str, str]]:
    """The summary's rows, each with its ``method`` and the ``transfer/*`` results of its
    job if it has any (``<job>/transfer/metrics.json``)."""
    with summary.open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["method"] = method_label(row.get("objective") or "ce", row.get("dist") or "none")
        path = summary.parent / row["job"] / "transfer" / "metrics.json"
        if path.is_file():
            metrics = json.loads(path.read_text())
            row.update({k: str(v) for k, v in metrics.items() if k.startswith("transfer/")})
    return rows


def run_transfers(sweep: Path, rows: list[dict[str, str]], extra: Sequence[str] = ()) -> None:
    """``hierot.transfer`` of every completed job's best checkpoint into ``<job>/transfer``."""
    for row in rows:
        if row["status"] != "completed":
            continue
        job = sweep / row["job"]
        metrics = json.loads((job / "metrics.json").read_text())
        ckpt = metrics.get("best_checkpoint") or str(job / "checkpoints" / "last.ckpt")
        command = [
            sys.executable, "-m", "hierot.transfer", f"ckpt={ckpt}", f"seed={row['seed']}",
            f"hydra.run.dir={job / 'transfer'}", *extra,
        ]  # fmt: skip
        subprocess.run(command, check=False)


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


# summary.csv columns that describe a job's setting rather than its results.
SETTINGS = ["objective", "dist", "lam", "data.batch_size", "backbone"]


def _order(value: str) -> tuple:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def group_keys(rows: list[dict[str, str]]) -> list[str]:
    """The settings that tell the rows' groups apart: every swept key and setting except
    ``seed`` (the only key a row pools over), keeping those that vary; ``method`` always
    (it stands for ``objective`` and ``dist``)."""
    header = list(rows[0]) if rows else []
    first = next((header.index(k) for k in SETTINGS if k in header), len(header))
    swept = header[2:first]
    keys = list(dict.fromkeys([*swept, *SETTINGS]))
    covered = {"method", "seed", "objective", "dist"}
    varying = [k for k in keys if k not in covered and len({r.get(k) for r in rows}) > 1]
    return ["method", *varying]


def seconds_per_step(row: dict[str, str]) -> float | None:
    try:
        return float(row["fit_seconds"]) / float(row["steps"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def table(rows: list[dict[str, str]]) -> str:
    """Markdown table: one line per setting (distance and every other swept key but the
    seed), mean ± sample std over its completed seeds."""
    # fine accuracy first, then coarser levels, then top-k
    accuracies = sorted(
        {k for r in rows for k in r if k.startswith("test/acc_")},
        key=lambda k: (k != "test/acc_fine", "top" in k, k),
    )
    transfer = sorted({k for r in rows for k in r if k.startswith("transfer/")})
    metrics = [*FIRST, *accuracies, *LAST, *transfer, "s/step"]
    for r in rows:
        step = seconds_per_step(r)
        if step is not None:
            r["s/step"] = str(step)
    keys = group_keys(rows)
    groups: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k, "") for k in keys), []).append(r)

    def rank(group: tuple[str, ...]) -> tuple:
        method = METHODS.index(group[0]) if group[0] in METHODS else len(METHODS)
        return (method, group[0], *(_order(v) for v in group[1:]))

    names = [m.removeprefix("test/") for m in metrics]
    extra = keys[1:]
    lines = [
        "| method | " + "".join(f"{k} | " for k in extra) + "runs | " + " | ".join(names) + " |",
        "|---" * (len(names) + len(extra) + 2) + "|",
    ]
    for group in sorted(groups, key=rank):
        members = groups[group]
        done = [r for r in members if r["status"] == "completed"]
        cells = [mean_std([float(r[m]) for r in done if r.get(m)]) for m in metrics]
        runs = f"{len(done)}" if len(done) == len(members) else f"{len(done)} of {len(members)}"
        settings = "".join(f"{v} | " for v in group[1:])
        label = SHOWN.get(group[0], group[0])
        lines.append(f"| {label} | {settings}{runs} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_difference(diffs: Sequence[float]) -> tuple[float, float, float, float] | None:
    """``(mean, low, high, p)`` of paired differences: the mean, its 95 % Student-t
    interval and the two-sided paired t-test's p-value; None below two pairs. Identical
    pairs give a zero-width interval and p = 1."""
    n = len(diffs)
    if n < 2:
        return None
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs)
    if sd == 0:
        return mean, mean, mean, 1.0 if mean == 0 else 0.0
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    p = 2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1)
    return mean, mean - half, mean + half, float(p)


def paired_cell(diffs: Sequence[float]) -> str:
    """A paired table's cell: the mean difference, its 95 % t interval and p, ``*`` where
    the interval excludes 0; ``—`` with too few pairs."""
    result = paired_difference(diffs)
    if result is None:
        return "—"
    mean, low, high, p = result
    mark = " *" if low > 0 or high < 0 else ""
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}] p={p:.2f}{mark}"


def paired_table(rows: list[dict[str, str]], baseline: str) -> str:
    """Markdown table: every method against ``baseline`` on the seeds both completed (and
    the same other settings): ``mean difference [95 % CI] p``, ``*`` where the interval
    excludes 0. A difference is method minus baseline."""
    keys = group_keys(rows)
    done = [r for r in rows if r["status"] == "completed"]
    metrics = [m for m in PAIRED if any(r.get(m) for r in done)]
    by_setting: dict[tuple[str, ...], dict[str, dict[str, str]]] = {}
    for r in done:
        by_setting.setdefault(tuple(r.get(k, "") for k in keys), {})[r["seed"]] = r
    names = [m.removeprefix("test/") for m in metrics]
    extra = keys[1:]
    lines = [
        f"| method - {SHOWN.get(baseline, baseline)} | "
        + "".join(f"{k} | " for k in extra)
        + "seeds | "
        + " | ".join(names)
        + " |",
        "|---" * (len(names) + len(extra) + 2) + "|",
    ]
    groups = sorted(
        (g for g in by_setting if g[0] != baseline),
        key=lambda g: (METHODS.index(g[0]) if g[0] in METHODS else len(METHODS), g),
    )
    for group in groups:
        base = by_setting.get((baseline, *group[1:]), {})
        seeds = sorted(set(by_setting[group]) & set(base), key=_order)
        cells = []
        for m in metrics:
            pairs = [
                (float(by_setting[group][s][m]), float(base[s][m]))
                for s in seeds
                if by_setting[group][s].get(m) and base[s].get(m)
            ]
            cells.append(paired_cell([a - b for a, b in pairs]))
        settings = "".join(f"{v} | " for v in group[1:])
        lines.append(f"| {group[0]} | {settings}{len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PAIRED_NOTE = (
    "Paired differences against {} (method minus baseline, same seeds; 95 % t interval, "
    "paired t-test p; * where the interval excludes 0)."
)


def report(rows: list[dict[str, str]], baseline: str, measured: str = "") -> str:
    return (
        (f"Measured on {measured}.\n\n" if measured else "")
        + "Mean ± std over seeds:\n\n"
        + table(rows)
        + "\n\n"
        + PAIRED_NOTE.format(SHOWN.get(baseline, baseline))
        + "\n\n"
        + paired_table(rows, baseline)
    )


def fresh_out(out: Path | None, now: datetime) -> Path:
    """The sweep directory: ``--out`` if it is empty or new, else a timestamped one under
    ``multirun/compare_methods`` (a second call never reuses the first call's jobs)."""
    if out is None:
        return Path("multirun") / "compare_methods" / now.strftime("%Y-%m-%d_%H-%M-%S")
    if out.exists() and any(out.iterdir()):
        sys.exit(f"compare_methods: error: --out {out} is not empty; give a new directory")
    return out


def summaries(out: Path) -> list[Path]:
    """``out/summary.csv`` (one sweep) or ``out/<method>/summary.csv`` (one per method)."""
    if (out / "summary.csv").is_file():
        return [out / "summary.csv"]
    return sorted(out.glob("*/summary.csv"))


def run_method(spec: str, seeds: Sequence[int], out: Path, overrides: Sequence[str]) -> None:
    """One multirun of ``spec`` over ``seeds`` into ``out``; a failed job is a row of its
    summary, and the tables say how many runs completed."""
    objective, dist = parse_method(spec)
    command = [
        sys.executable, "-m", "hierot.train", "-m", f"objective={objective}", f"dist={dist}",
        f"seed={','.join(str(s) for s in seeds)}", f"hydra.sweep.dir={out}", *overrides,
    ]  # fmt: skip
    print(" ".join(command[1:]), flush=True)
    subprocess.run(command, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods", nargs="+", default=DEFAULT_METHODS,
        help="objective[+dist] or a distance (default: every objective but the staged ones, "
        "then ce with every CPCC distance)",
    )  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--baseline", default="ce", help="the method others are paired with")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="a new directory (default: multirun/compare_methods/<date>_<time>)",
    )  # fmt: skip
    parser.add_argument(
        "--summary", type=Path, default=None,
        help="only tabulate: a summary.csv, or a directory written by this script",
    )  # fmt: skip
    parser.add_argument(
        "--transfer", action="store_true",
        help="train on data.split=source, then transfer every job to the target split",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="passed to every job (after --)")
    args = parser.parse_args()
    baseline = method_label(*parse_method(args.baseline))
    labels = [method_label(*parse_method(m)) for m in args.methods]

    if args.summary is None:
        out = fresh_out(args.out, datetime.now())
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "environment.json", environment())
        if args.transfer and not any(o.startswith("data.split=") for o in args.overrides):
            args.overrides.append("data.split=source")
        for label in dict.fromkeys([baseline, *labels]):
            run_method(label, args.seeds, out / label, args.overrides)
            summary = out / label / "summary.csv"
            if args.transfer and summary.is_file():
                run_transfers(out / label, read_rows(summary))
        files = summaries(out)
    else:
        files = summaries(args.summary) if args.summary.is_dir() else [args.summary]
        out = args.summary if args.summary.is_dir() else args.summary.parent
    files = [f for f in files if f.is_file()]
    if not files:
        sys.exit(f"compare_methods: error: no summary.csv under {out}")
    record = out / "environment.json"
    env = json.loads(record.read_text()) if record.is_file() else environment()
    rows = [row for f in files for row in read_rows(f)]
    measured = f"{env['machine']}, torch {env['torch']}, commit {env['commit']}, {env['date']}"
    text = report(rows, baseline, measured)
    (out / "comparison.md").write_text(text + "\n")
    write_results(out / "means.csv", rows_from_markdown(table(rows)), command_line(),
                  notes=["Mean ± std over seeds."], env=env)  # fmt: skip
    write_results(out / "paired.csv", rows_from_markdown(paired_table(rows, baseline)),
                  command_line(), notes=[PAIRED_NOTE.format(SHOWN.get(baseline, baseline))],
                  env=env)  # fmt: skip
    print(text)


if __name__ == "__main__":
    main()

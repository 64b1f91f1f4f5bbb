"""Compare the CPCC regularizer's distances with flat training, over several seeds.

Runs one Hydra multirun, ``dist`` x ``seed`` (``none`` is flat cross-entropy), on the data you
choose, into a fresh sweep directory, then prints the paper-style table (mean +- std over
seeds) from the sweep's ``summary.csv``. Extra arguments are passed to every job; one that
sweeps (``lam=0.1,1``) adds a column, since rows pool seeds only.

    python scripts/compare_methods.py                            # embedded synthetic data
    python scripts/compare_methods.py --seeds 0 1 2 -- data=cifar100 data.root=/data/cifar
    python scripts/compare_methods.py --summary multirun/.../summary.csv   # table only
    python scripts/compare_methods.py --transfer       # pretrain on source, transfer to target

With ``--transfer`` every job trains on ``data.split=source`` and its best checkpoint is then
transferred to the target split (``python -m hierot.transfer``, 1 shot, the job's seed);
the table gains the transfer accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

METHODS = ["none", "l2", "emd", "sinkhorn", "swd", "fastft"]
SHOWN = {"none": "flat (CE only)"}
FIRST = ["test/cpcc", "test/cpcc_l2"]
LAST = ["test/mistake_severity"]


def read_rows(summary: Path) -> list[dict[str, str]]:
    """The summary's rows, each with the ``transfer/*`` results of its job if it has any
    (``<job>/transfer/metrics.json``)."""
    with summary.open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
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
SETTINGS = ["dist", "lam", "data.batch_size", "backbone"]


def _order(value: str) -> tuple:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def group_keys(rows: list[dict[str, str]]) -> list[str]:
    """The settings that tell the rows' groups apart: every swept key and setting except
    ``seed`` (the only key a row pools over), keeping those that vary; ``dist`` always."""
    header = list(rows[0]) if rows else []
    swept = header[2 : header.index("dist")] if "dist" in header else []
    keys = list(dict.fromkeys([*swept, *SETTINGS]))
    varying = [k for k in keys if k != "seed" and len({r.get(k) for r in rows}) > 1]
    return ["dist", *[k for k in varying if k != "dist"]]


def table(rows: list[dict[str, str]]) -> str:
    """Markdown table: one line per setting (distance and every other swept key but the
    seed), mean ± sample std over its completed seeds."""
    # fine accuracy first, then coarser levels, then top-k
    accuracies = sorted(
        {k for r in rows for k in r if k.startswith("test/acc_")},
        key=lambda k: (k != "test/acc_fine", "top" in k, k),
    )
    transfer = sorted({k for r in rows for k in r if k.startswith("transfer/")})
    metrics = [*FIRST, *accuracies, *LAST, *transfer]
    keys = group_keys(rows)
    groups: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k, "") for k in keys), []).append(r)

    def rank(group: tuple[str, ...]) -> tuple:
        dist = METHODS.index(group[0]) if group[0] in METHODS else len(METHODS)
        return (dist, group[0], *(_order(v) for v in group[1:]))

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


def fresh_out(out: Path | None, now: datetime) -> Path:
    """The sweep directory: ``--out`` if it is empty or new, else a timestamped one under
    ``multirun/compare_methods`` (a second call never reuses the first call's jobs)."""
    if out is None:
        return Path("multirun") / "compare_methods" / now.strftime("%Y-%m-%d_%H-%M-%S")
    if out.exists() and any(out.iterdir()):
        sys.exit(f"compare_methods: error: --out {out} is not empty; give a new directory")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--out", type=Path, default=None,
        help="a new sweep directory (default: multirun/compare_methods/<date>_<time>)",
    )  # fmt: skip
    parser.add_argument("--summary", type=Path, default=None, help="only tabulate this file")
    parser.add_argument(
        "--transfer", action="store_true",
        help="train on data.split=source, then transfer every job to the target split",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="passed to every job (after --)")
    args = parser.parse_args()

    summary = args.summary
    if summary is None:
        out = fresh_out(args.out, datetime.now())
        if args.transfer and not any(o.startswith("data.split=") for o in args.overrides):
            args.overrides.append("data.split=source")
        command = [
            sys.executable, "-m", "hierot.train", "-m",
            f"dist={','.join(args.methods)}",
            f"seed={','.join(str(s) for s in args.seeds)}",
            f"hydra.sweep.dir={out}",
            *args.overrides,
        ]  # fmt: skip
        print(" ".join(command[1:]), flush=True)
        # A failed job is a row of the summary; the table says how many runs completed.
        subprocess.run(command, check=False)
        summary = out / "summary.csv"
        if args.transfer and summary.is_file():
            run_transfers(out, read_rows(summary))
    if not summary.is_file():
        sys.exit(f"compare_methods: error: no summary at {summary}")
    print(table(read_rows(summary)))


if __name__ == "__main__":
    main()

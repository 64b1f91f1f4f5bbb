"""Compare the CPCC regularizer's distances with flat training, over several seeds.

Runs one Hydra multirun, ``dist`` x ``seed`` (``none`` is flat cross-entropy), on the data you
choose, then prints the paper-style table (mean +- std over seeds) from the sweep's
``summary.csv``. Extra arguments are passed to every job.

    python scripts/compare_methods.py                            # embedded synthetic data
    python scripts/compare_methods.py --seeds 0 1 2 -- data=cifar100 data.root=/data/cifar
    python scripts/compare_methods.py --summary multirun/.../summary.csv   # table only
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

METHODS = ["none", "l2", "emd", "sinkhorn", "swd", "fastft"]
SHOWN = {"none": "flat (CE only)"}
FIRST = ["test/cpcc", "test/cpcc_l2"]
LAST = ["test/mistake_severity"]


def read_rows(summary: Path) -> list[dict[str, str]]:
    with summary.open() as f:
        return list(csv.DictReader(f))


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(rows: list[dict[str, str]]) -> str:
    """Markdown table: one line per distance, mean ± sample std over its completed seeds."""
    # fine accuracy first, then coarser levels, then top-k
    accuracies = sorted(
        {k for r in rows for k in r if k.startswith("test/acc_")},
        key=lambda k: (k != "test/acc_fine", "top" in k, k),
    )
    metrics = [*FIRST, *accuracies, *LAST]
    methods = list(dict.fromkeys(r["dist"] for r in rows))
    methods.sort(key=lambda m: METHODS.index(m) if m in METHODS else len(METHODS))
    names = [m.removeprefix("test/") for m in metrics]
    lines = [
        "| method | runs | " + " | ".join(names) + " |",
        "|---" * (len(names) + 2) + "|",
    ]
    for method in methods:
        done = [r for r in rows if r["dist"] == method and r["status"] == "completed"]
        total = sum(r["dist"] == method for r in rows)
        cells = [mean_std([float(r[m]) for r in done if r.get(m)]) for m in metrics]
        runs = f"{len(done)}" if len(done) == total else f"{len(done)} of {total}"
        lines.append(f"| {SHOWN.get(method, method)} | {runs} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="sweep directory")
    parser.add_argument("--summary", type=Path, default=None, help="only tabulate this file")
    parser.add_argument("overrides", nargs="*", help="passed to every job (after --)")
    args = parser.parse_args()

    summary = args.summary
    if summary is None:
        out = args.out or Path("multirun") / "compare_methods"
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
    if not summary.is_file():
        sys.exit(f"compare_methods: no summary at {summary}")
    print(table(read_rows(summary)))


if __name__ == "__main__":
    main()

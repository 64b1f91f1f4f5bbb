"""What importing hierot costs: the wall time and peak memory of a fresh interpreter that
imports the torch-only core (``from hierot import CPCCLoss, Hierarchy, class_distances``) and
of one that imports the whole application (``hierot.components``: Lightning, Hydra, timm,
...), each against ``import torch`` alone, measured back to back in alternating rounds so
that the machine's load weighs on all alike. Writes a results CSV (``hierot.results``).

    python scripts/bench_import.py --rounds 7 --csv docs/results/bench_import.csv
    python scripts/bench_import.py --check     # exit 1 when the core exceeds its budget

The core's budget (issue 31): within 0.5 s and 60 MB of ``import torch``. The import *set*
is pinned by ``tests/test_core_imports.py``; times are measured here, not in the tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from hierot.results import command_line, write_results

STATEMENTS = {
    "torch": "import torch",
    "core": "from hierot import CPCCLoss, Hierarchy, class_distances",
    "application": "import hierot.components",
}
BUDGET_S, BUDGET_MB = 0.5, 60.0


def measure(statement: str) -> tuple[float, float]:
    """(seconds, peak resident MB) of a fresh ``python -c statement``."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", statement])
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"bench_import: error: `python -c {statement!r}` exited {proc.returncode}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--csv", type=Path, help="write the results CSV here")
    parser.add_argument("--check", action="store_true", help="exit 1 over the core's budget")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in STATEMENTS}
    measure(STATEMENTS["application"])  # warm the file cache for every round alike
    for round_ in range(args.rounds):
        for name, statement in STATEMENTS.items():
            samples[name].append(measure(statement))
        print(f"round {round_ + 1}/{args.rounds}", file=sys.stderr, flush=True)
    base_s = [s for s, _ in samples["torch"]]
    base_mb = [m for _, m in samples["torch"]]
    rows = []
    for name, statement in STATEMENTS.items():
        secs = [s for s, _ in samples[name]]
        mbs = [m for _, m in samples[name]]
        # paired by round: each difference is against the torch import just before it
        extra_s = [s - b for s, b in zip(secs, base_s, strict=True)]
        extra_mb = [m - b for m, b in zip(mbs, base_mb, strict=True)]
        rows.append({
            "import": f"`{statement}`",
            "median s": f"{statistics.median(secs):.2f}",
            "median peak MB": f"{statistics.median(mbs):.0f}",
            "over torch, s (median [min, max])": (
                f"{statistics.median(extra_s):+.2f} [{min(extra_s):+.2f}, {max(extra_s):+.2f}]"
            ),
            "over torch, MB (median)": f"{statistics.median(extra_mb):+.0f}",
        })  # fmt: skip
        print(rows[-1], flush=True)
    core_s = statistics.median(s - b for (s, _), b in zip(samples["core"], base_s, strict=True))
    core_mb = statistics.median(m - b for (_, m), b in zip(samples["core"], base_mb, strict=True))
    within = core_s <= BUDGET_S and core_mb <= BUDGET_MB
    verdict = "within" if within else "OVER"
    print(f"core: {core_s:+.2f} s, {core_mb:+.0f} MB over torch: {verdict} the budget of "
          f"{BUDGET_S} s and {BUDGET_MB:.0f} MB")  # fmt: skip
    if args.csv:
        notes = [
            f"{args.rounds} alternating rounds of fresh interpreters; peak memory is the "
            "process's maximum resident set.",
            f"The core's budget: {BUDGET_S} s and {BUDGET_MB:.0f} MB over `import torch`.",
        ]
        write_results(args.csv, rows, command_line(), notes=notes)
    if args.check and not within:
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The default run and its two reference points, measured: ``python -m hierot.train`` as the
README gives it, with ``dist=l2`` and with ``dist=none`` (flat cross-entropy); the test
metrics and the wall time of each whole command, as a results CSV (``hierot.results``)
that ``scripts/render_results.py`` renders into ``docs/results/default_run.md``.

    python scripts/default_run.py --csv docs/results/default_run.csv
    python scripts/default_run.py --runs default     # the first row only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hierot.results import command_line, write_results

RUNS = {
    "default": ("`python -m hierot.train` (`dist=fastft`)", []),
    "l2": ("`dist=l2`", ["dist=l2"]),
    "none": ("`dist=none` (flat cross-entropy)", ["dist=none"]),
}
METRICS = {
    "test/acc_fine": "{:.3f}",
    "test/acc_palette": "{:.3f}",
    "test/acc_shape": "{:.3f}",
    "test/acc_top5": "{:.3f}",
    "test/mistake_severity": "{:.2f}",
    "test/cpcc": "{:.3f}",
    "test/cpcc_l2": "{:.3f}",
}


def measure(overrides: list[str], folder: Path) -> tuple[dict, float]:
    """The run's metrics.json and the wall time of the whole command, in seconds."""
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "hierot.train", *overrides, f"hydra.run.dir={folder}"],
        capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        name = " ".join(overrides) or "the default run"
        sys.exit(f"default_run: error: {name} failed: {run.stderr[-500:]}")
    return json.loads((folder / "metrics.json").read_text()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--csv", type=Path, help="write the results CSV here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs:
            label, overrides = RUNS[name]
            metrics, seconds = measure(overrides, Path(tmp) / name)
            row = {"run": label}
            # an undefined metric (a CPCC of too few classes) is null in metrics.json
            row.update({
                key: "n/a" if metrics.get(key) is None else fmt.format(metrics[key])
                for key, fmt in METRICS.items()
            })  # fmt: skip
            row["wall time (s)"] = f"{seconds:.0f}"
            rows.append(row)
            print(row, flush=True)
    if args.csv:
        note = (
            "ResNet-18 (standard stem), lam=1, batch 128, 3 epochs = 225 steps, SGD + cosine; "
            "the wall time is the whole command (start-up, data generation, validation, test)."
        )
        write_results(args.csv, rows, command_line(), notes=[note])


if __name__ == "__main__":
    main()

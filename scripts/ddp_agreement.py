"""The default run on one process and on two DDP processes (CPU, gloo) must agree: the same
global batches and steps, and test accuracy and TestCPCC within 3x the default run's spread
over seeds (~0.01, docs/results/compare_methods.md). Two whole default runs, one of them on
two processes at one thread each: 5-7 minutes on a 2-core CPU, too long for the test suite,
whose DDP tests check one step exactly (tests/test_ddp.py). Exit 1 if they disagree.

    python scripts/ddp_agreement.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DDP_CPU = ["trainer.strategy=ddp", "trainer.accelerator=cpu"]
TOLERANCE = {"test/acc_fine": 0.03, "test/cpcc": 0.03}


def train(run_dir: Path, *overrides: str) -> dict:
    run = subprocess.run(
        [sys.executable, "-m", "hierot.train", *overrides, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if run.returncode != 0:
        sys.exit(f"ddp_agreement: error: {' '.join(overrides) or 'one process'}: "
                 f"{run.stderr[-2000:]}")  # fmt: skip
    return json.loads((run_dir / "metrics.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = train(Path(tmp) / "one")
        two = train(Path(tmp) / "two", "trainer.devices=2", *DDP_CPU)
    ok = one["steps"] == two["steps"]
    print(f"steps: {one['steps']} (one process), {two['steps']} (two)")
    for key, tolerance in TOLERANCE.items():
        gap = abs(one[key] - two[key])
        ok &= gap <= tolerance
        print(f"{key}: {one[key]:.4f} vs {two[key]:.4f} (|difference| {gap:.4f}, "
              f"allowed {tolerance})")  # fmt: skip
    print("agree" if ok else "DISAGREE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The speed switches measured: the default run (``python -m hierot.train``) eager, with
``speed.compile=true``, with ``speed.channels_last=true`` and with both, each in a fresh
process: the median training step in the epochs after the first (steady state), the first
epoch (which pays for compiling), the whole fit, and the test metrics against the eager
run's. Writes a results CSV (``hierot.results``) that ``scripts/render_results.py`` renders
into ``docs/results/speed_switches.md``.

    python scripts/bench_speed.py --csv docs/results/speed_switches.csv
    python scripts/bench_speed.py --variants eager compile -- trainer.max_epochs=2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "eager": ["speed.compile=false", "speed.channels_last=false"],
    "compile": ["speed.compile=true", "speed.channels_last=false"],
    "channels_last": ["speed.compile=false", "speed.channels_last=true"],
    "compile+channels_last": ["speed.compile=true", "speed.channels_last=true"],
}
METRICS = ("test/acc_fine", "test/cpcc", "test/cpcc_l2", "test/loss")


def one_run(overrides: list[str], out: Path) -> dict:
    """Train and test in this process; the step times of every epoch and the metrics."""
    import lightning as L

    from hierot.config import check_config, compose_config
    from hierot.train import build_run, fit_and_test

    class StepTimes(L.Callback):
        def __init__(self) -> None:
            self.epochs: list[list[float]] = []
            self._start = 0.0

        def on_train_epoch_start(self, *args: object) -> None:
            self.epochs.append([])

        def on_train_batch_start(self, *args: object) -> None:
            self._start = time.perf_counter()

        def on_train_batch_end(self, *args: object) -> None:
            self.epochs[-1].append(time.perf_counter() - self._start)

    cfg = compose_config(["trainer.enable_progress_bar=false", *overrides])
    cfg.output_dir = str(out)
    check_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, model, trainer = build_run(cfg)
    times = StepTimes()
    trainer.callbacks.append(times)
    metrics = fit_and_test(cfg, datamodule, model, trainer)
    return {
        "epochs": times.epochs,
        "fit_seconds": metrics["fit_seconds"],
        # null (an undefined CPCC) as NaN, which the table prints as nan
        **{k: float("nan" if metrics[k] is None else metrics[k]) for k in METRICS if k in metrics},
    }


def measure(variant: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.json"
        subprocess.run(
            [sys.executable, __file__, "--one", str(result), "--", *VARIANTS[variant], *extra],
            check=True,
        )
        return json.loads(result.read_text())


def row(variant: str, run: dict, eager: dict | None) -> dict:
    steady = [t for epoch in run["epochs"][1:] for t in epoch]
    first = sum(run["epochs"][0])
    step = statistics.median(steady) if steady else float("nan")
    out = {
        "variant": variant,
        "step_ms": f"{1000 * step:.1f}",
        "first_epoch_s": f"{first:.1f}",
        "fit_s": f"{run['fit_seconds']:.1f}",
        "steady_speedup": "",
    }
    if eager is not None:
        eager_steps = [t for epoch in eager["epochs"][1:] for t in epoch]
        out["steady_speedup"] = f"{statistics.median(eager_steps) / step:.2f}"
    for key in METRICS:
        out[key.removeprefix("test/")] = f"{run.get(key, float('nan')):.4f}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--csv", type=Path, help="write the results CSV here")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="more hierot.train overrides (after --)")
    args = parser.parse_args()
    if args.one is not None:
        with tempfile.TemporaryDirectory() as out:
            args.one.write_text(json.dumps(one_run(args.overrides, Path(out))))
        return
    from hierot.results import command_line, write_results

    runs = {v: measure(v, args.overrides) for v in args.variants}
    eager = runs.get("eager")
    rows = [row(v, run, eager if v != "eager" else None) for v, run in runs.items()]
    for r in rows:
        print("  ".join(f"{k} {v}" for k, v in r.items()))
    if args.csv:
        notes = [
            "the default run (python -m hierot.train) per variant, each in a fresh process;"
            " step_ms: median training step after the first epoch; steady_speedup: eager's"
            " median step over the variant's; first_epoch_s includes compiling.",
        ]
        if args.overrides:
            notes.append(f"overrides: {' '.join(args.overrides)}")
        write_results(args.csv, rows, command_line(), notes)


if __name__ == "__main__":
    main()

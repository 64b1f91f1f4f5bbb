"""hierot's training step against a bare PyTorch loop doing the same work.

Both sides train the same ResNet-18 (hierot's own backbone builder on the default config),
on the same embedded data and batch size, with the same loss (cross-entropy +
``lam * CPCCLoss(hierarchy, "fastft")``), the same SGD and cosine schedule, for the same
number of steps from the same seed:

- **bare**: a plain loop (this script as a subprocess, ``--bare-worker``):
  ``DataLoader(shuffle=True)``, the images to the device and normalized there, forward,
  loss, backward, ``optimizer.step()``, ``scheduler.step()``;
- **hierot**: ``python -m hierot.train`` as a subprocess, one epoch of the same steps, no
  validation or test, its logger and checkpoints as by default, and ``StepClock`` added as
  a callback (``+callbacks.step_clock=...``).

Each side takes a timestamp at the end of every optimizer step; steps/s is the steady-state
rate ``(N - W) / (t[N] - t[W])`` over the steps after the ``--warmup`` first ones, so both
include data loading, forward, backward and the optimizer and scheduler steps, and everything
a framework does between them. On CUDA both synchronize the device at those two steps only.
The repeats alternate the order (bare first, then hierot first); the ratio hierot / bare is
paired by repeat, with a 95 % Student-t interval. ``--csv`` writes a results CSV
(``hierot.results``) for ``docs/results/bench_loop.md``; ``--profile-csv`` adds one more
hierot run in this process under Lightning's ``SimpleProfiler``: the time per step of each
of its actions (hooks, callbacks, data fetching), where hierot spends the difference.

    python scripts/bench_loop.py --csv docs/results/bench_loop.csv \
        --profile-csv docs/results/bench_loop_profile.csv
    python scripts/bench_loop.py --device cuda --steps 300 --warmup 20 data.train_per_class=2000
    python scripts/bench_loop.py --quick       # seconds: the debug=tiny data, 3 steps
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from scipy import stats

from hierot import CPCCLoss
from hierot.config import build, check_config, compose_config
from hierot.data import HierarchyDataModule
from hierot.results import command_line, write_results

SCRIPTS = Path(__file__).resolve().parent
# Speed switches off on both sides: the comparison is of the loops, not of torch.compile,
# TF32 or cuDNN's benchmark mode (hierot.speed turns those on by itself on CUDA).
PLAIN = [
    "speed.compile=false",
    "speed.channels_last=false",
    "speed.matmul_precision=highest",
    "trainer.benchmark=false",
]
SHORT = [
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=0",
    "trainer.limit_test_batches=0",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock(L.Callback):
    """Takes a timestamp at the end of every training step and writes them to ``path``
    (JSON) when training ends; the device is synchronized after step ``warmup`` and after
    the last step only (the interval ``steady_rate`` measures)."""

    def __init__(self, path: str, warmup: int) -> None:
        self.path = Path(path)
        self.warmup = warmup
        self.times: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = len(self.times) + 1
        if step in (self.warmup, trainer.num_training_batches):
            sync(trainer.strategy.root_device)
        self.times.append(time.perf_counter())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.path.write_text(json.dumps({"times": self.times}))


def steady_rate(times: Sequence[float], warmup: int) -> float:
    """Steps per second after the first ``warmup`` steps (``times``: each step's end)."""
    if len(times) <= warmup or warmup < 1:
        raise ValueError(f"need more than {warmup} >= 1 steps, got {len(times)}")
    return (len(times) - warmup) / (times[-1] - times[warmup - 1])


def training_data(cfg: DictConfig) -> HierarchyDataModule:
    datamodule = build(cfg.data, "data")
    datamodule.setup("fit")
    return datamodule


def bare_loop(
    cfg: DictConfig, data: HierarchyDataModule, device: torch.device, steps: int, warmup: int
) -> list[float]:
    """The step end times of a plain PyTorch loop over ``steps`` batches of ``cfg``'s data,
    model, loss, optimizer and schedule."""
    torch.manual_seed(cfg.seed)
    backbone = build(cfg.backbone, "backbone")
    head = torch.nn.Linear(backbone.num_features, data.hierarchy.num_classes)
    model = torch.nn.ModuleDict({"backbone": backbone, "head": head}).to(device).train()
    cpcc = CPCCLoss(data.hierarchy, cfg.dist.method, **cfg.dist.options).to(device)
    optimizer = build(cfg.optimizer, "optimizer")(model.parameters())
    scheduler = build(cfg.scheduler, "scheduler")(optimizer, total_steps=steps)
    loader = torch.utils.data.DataLoader(
        data.train_set, batch_size=data.batch_size, shuffle=True, drop_last=True,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    times: list[float] = []
    for images, labels in loader:
        x = data.normalize(images.to(device, non_blocking=True))
        y = labels.to(device, non_blocking=True)
        z = backbone(x)
        loss = F.cross_entropy(head(z), y) + cfg.lam * cpcc(z, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if len(times) + 1 in (warmup, steps):
            sync(device)
        times.append(time.perf_counter())
        if len(times) == steps:
            break
    return times


def hierot_overrides(overrides: Sequence[str], device: torch.device, steps: int) -> list[str]:
    accelerator = "cuda" if device.type == "cuda" else "cpu"
    return [
        *overrides, *PLAIN, *SHORT,
        f"trainer.limit_train_batches={steps}", f"trainer.accelerator={accelerator}",
    ]  # fmt: skip


def hierot_run(overrides: list[str], folder: Path, warmup: int) -> list[float]:
    """The step end times of ``python -m hierot.train *overrides`` with ``StepClock``."""
    clock = folder / "steps.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SCRIPTS), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, "-m", "hierot.train", *overrides, f"hydra.run.dir={folder}",
         "+callbacks.step_clock._target_=bench_loop.StepClock",
         f"+callbacks.step_clock.path={clock}", f"+callbacks.step_clock.warmup={warmup}"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if run.returncode != 0 or not clock.is_file():
        sys.exit(f"bench_loop: error: python -m hierot.train failed: {run.stderr[-1500:]}")
    return json.loads(clock.read_text())["times"]


def paired_ratio(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Mean of the paired ratios and its 95 % Student-t interval (zero width below two)."""
    mean = statistics.fmean(ratios)
    if len(ratios) < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.975, len(ratios) - 1) * statistics.stdev(ratios) / math.sqrt(len(ratios))
    return mean, mean - half, mean + half


def summary_rows(rates: dict[str, list[float]], batch: int) -> list[dict[str, str]]:
    ratios = [h / b for h, b in zip(rates["hierot"], rates["bare"], strict=True)]
    mean, low, high = paired_ratio(ratios)
    rows = []
    for side, label in (("bare", "bare PyTorch loop"), ("hierot", "`python -m hierot.train`")):
        values = rates[side]
        rows.append({
            "loop": label,
            "repeats": str(len(values)),
            "steps/s median": f"{statistics.median(values):.3f}",
            "steps/s min-max": f"{min(values):.3f}-{max(values):.3f}",
            "images/s median": f"{batch * statistics.median(values):.0f}",
            "per repeat (steps/s)": " ".join(f"{v:.3f}" for v in values),
            "hierot / bare (paired mean, 95 % interval)": (
                f"{mean:.3f} [{low:.3f}, {high:.3f}]" if side == "hierot" else ""
            ),
        })  # fmt: skip
    return rows


def bare_run(args: argparse.Namespace, path: Path) -> list[float]:
    """The step end times of the bare loop in a fresh process (this script as its worker),
    started as hierot's is: each side pays its own start-up and data generation."""
    command = [
        sys.executable, __file__, "--bare-worker", str(path), "--device", args.device,
        "--steps", str(args.steps), "--warmup", str(args.warmup),
        *(["--threads", str(args.threads)] if args.threads else []), "--", *args.overrides,
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0 or not path.is_file():
        sys.exit(f"bench_loop: error: the bare loop failed: {run.stderr[-1500:]}")
    return json.loads(path.read_text())["times"]


def bare_worker(args: argparse.Namespace, device: torch.device) -> None:
    """``--bare-worker PATH``: one bare loop, its step end times to PATH (JSON)."""
    cfg = compose_config([*hierot_overrides(args.overrides, device, args.steps), "output_dir=x"])
    data = training_data(cfg)
    available = len(data.train_set) // data.batch_size  # type: ignore[arg-type]
    if args.steps > available:
        sys.exit(f"bench_loop: error: --steps {args.steps} > {available} batches in an epoch")
    times = bare_loop(cfg, data, device, args.steps, args.warmup)
    args.bare_worker.write_text(json.dumps({"times": times}))


def measure(
    args: argparse.Namespace, device: torch.device
) -> tuple[DictConfig, dict[str, list[float]]]:
    """Alternating repeats of both loops, each run a fresh process; their steady-state
    steps/s."""
    overrides = hierot_overrides(args.overrides, device, args.steps)
    cfg = compose_config([*overrides, "output_dir=unused"])
    rates: dict[str, list[float]] = {"bare": [], "hierot": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            order = ("bare", "hierot") if repeat % 2 == 0 else ("hierot", "bare")
            for side in order:
                if side == "bare":
                    times = bare_run(args, Path(tmp) / f"bare{repeat}.json")
                else:
                    times = hierot_run(overrides, Path(tmp) / f"run{repeat}", args.warmup)
                rates[side].append(steady_rate(times, args.warmup))
                print(f"repeat {repeat}: {side} {rates[side][-1]:.3f} steps/s", flush=True)
    return cfg, rates


def profile_rows(args: argparse.Namespace, device: torch.device) -> list[dict[str, str]]:
    """One hierot run in this process under Lightning's SimpleProfiler: per action, its
    mean time per steady-state step and its share of the step (actions nest: a step's
    ``run_training_batch`` holds its ``optimizer_step``, which holds ``training_step`` and
    ``backward``)."""
    from hierot.train import build_run, graceful_stop

    with tempfile.TemporaryDirectory() as tmp:
        overrides = hierot_overrides(args.overrides, device, args.steps)
        cfg = compose_config([*overrides, "+trainer.profiler=simple", f"output_dir={tmp}"])
        check_config(cfg)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule, model, trainer = build_run(cfg)
        trainer.profiler.filename = "profile"  # type: ignore[attr-defined] # its report: a file
        clock = StepClock(str(Path(tmp) / "steps.json"), args.warmup)
        trainer.callbacks.append(clock)  # type: ignore[attr-defined]
        stop = graceful_stop(trainer)
        stop.install()
        try:
            trainer.fit(model, datamodule=datamodule)
        finally:
            stop.restore()
        step_ms = 1000 / steady_rate(clock.times, args.warmup)
        durations: dict[str, list[float]] = trainer.profiler.recorded_durations  # type: ignore[attr-defined]
    rows = []
    for action, values in durations.items():
        if len(values) != args.steps:  # per-step actions only
            continue
        ms = 1000 * statistics.fmean(values[args.warmup :])
        if ms >= args.profile_floor_ms:
            rows.append((ms, action))
    rows.sort(reverse=True)
    table = [
        {
            "action": "whole step (StepClock)",
            "ms per step": f"{step_ms:.2f}",
            "share of the step": "100 %",
        }
    ]
    table += [
        {
            "action": f"`{a}`",
            "ms per step": f"{ms:.2f}",
            "share of the step": f"{100 * ms / step_ms:.1f} %",
        }
        for ms, a in rows
    ]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--steps", type=int, default=75, help="steps per run (one epoch: 75)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out")
    parser.add_argument("--repeats", type=int, default=5, help="pairs of runs, alternating")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--quick", action="store_true", help="debug=tiny data, 3 steps, 2 repeats (tests)"
    )
    parser.add_argument("--csv", type=Path, help="write the results CSV here")
    parser.add_argument(
        "--profile-csv", type=Path, help="also profile one hierot run; its table here"
    )
    parser.add_argument("--profile-floor-ms", type=float, default=0.05, help=argparse.SUPPRESS)
    parser.add_argument("--bare-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "overrides", nargs="*", help="more hierot overrides for both sides (data.*, lam=...)"
    )
    args = parser.parse_args()
    if args.quick:
        args.overrides = ["debug=tiny", *args.overrides]
        args.steps, args.warmup, args.repeats = 3, 1, 2
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the subprocesses'
    device = torch.device(args.device)
    if args.bare_worker:
        return bare_worker(args, device)
    load_before = os.getloadavg()[0]
    cfg, rates = measure(args, device)
    load = f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after"

    rows = summary_rows(rates, int(cfg.data.batch_size))
    for row in rows:
        print(row, flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    note = (
        f"{cfg.backbone.name} ({cfg.backbone.stem} stem), batch {cfg.data.batch_size}, CE + "
        f"{cfg.lam} x CPCC({cfg.dist.method}), SGD + cosine, {args.steps} steps per run, the "
        f"first {args.warmup} left out; device={name}, torch threads={torch.get_num_threads()}"
        "; steps/s from the end of step W to the end of the last step (data loading, "
        "forward, backward, optimizer and scheduler steps, and all a loop does between "
        f"them); the repeats alternate which loop runs first; 1-minute load average {load} "
        f"(on {os.cpu_count()} cores)."
    )
    if args.csv:
        write_results(args.csv, rows, command_line(), notes=[note])
    if args.profile_csv:
        table = profile_rows(args, device)
        for row in table:
            print(row, flush=True)
        profile_note = (
            f"one `python -m hierot.train` run of the same {args.steps} steps in-process under "
            "Lightning's SimpleProfiler (which adds its own overhead); mean ms per step after "
            f"the first {args.warmup}; actions nest (run_training_batch > optimizer_step > "
            "training_step, backward); device=" + name
        )
        write_results(args.profile_csv, table, command_line(), notes=[profile_note])


if __name__ == "__main__":
    main()

"""One command that checks what hierot does on a device: the CPCC kernels, the training step's
speed, its host synchronisations and the data loader, as one results CSV.

    python scripts/device_check.py --csv docs/results/device_check_<gpu>.csv   # a GPU node
    python scripts/device_check.py --csv docs/results/device_check_cpu.csv     # a CPU
    python scripts/device_check.py --quick --csv /tmp/check.csv                # seconds (tests)

The sections, in the order they run (rows: section, case, metric, value, unit, note):

- ``data``: images/s of the default data's training loader, on the host and with the batches
  moved to the device and normalized there;
- ``cpcc``: every registered distance (``hierot.list_distances()``, its ``conf/dist`` options)
  forward + backward at B = 128 / 512 / 2048, d = 512, labels over 100 classes of a 3-level
  tree: median ms and, on CUDA, the peak allocated memory (``torch.cuda.max_memory_allocated``;
  blank on a CPU). Slow cases (``emd`` runs POT on the CPU) get fewer repeats: timing stops
  once ``--case-seconds`` are spent, after at least one timed call;
- ``syncs``: the host synchronisations of the default run's training steps (in-process:
  ``compose_config`` + ``hierot.train.build_run`` + ``trainer.fit``), counted by
  ``hierot.syncs.SyncCounter`` per step (from the first callback's ``on_train_batch_start`` to
  the last one's ``on_train_batch_end``) and between steps (logging, checkpoint callbacks, the
  next batch), and on CUDA under ``torch.cuda.set_sync_debug_mode("error")`` around each step:
  pass, or the first operation that synchronized;
- ``train``: the default run and ``backbone=vit_b16 dist=fastft`` (its ``pretrained: false``:
  nothing is downloaded), shortened to ``--steps`` steps of one epoch without validation or
  checkpoints, with and without ``speed.compile=true`` and ``trainer.precision=bf16-mixed``
  (CUDA only): steady-state steps/s and images/s after ``--warmup`` steps, the warm-up's
  seconds (compilation included), and the graphs ``torch.compile`` made. A compile case in
  which nothing was compiled fails: ``speed.compile`` did not take effect.

A case that fails is recorded as ``failed`` with its error and the script exits with status 1
after writing the CSV; a case this device cannot run (bf16 and the sync debug mode on a CPU,
torch.compile under ``--quick``) is ``unmeasured`` with the reason. ``--unmeasured`` writes
the rows a CUDA run would measure, every value ``unmeasured``, without measuring (the
placeholder ``docs/results/device_check_gpu.csv``). It is sized for 8 minutes on one GPU,
most of them compiling (not yet timed on one); ``--max-minutes`` (8) leaves the training
cases that would start later unmeasured.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from bench_cpcc import balanced_tree
from bench_loop import StepClock, steady_rate, sync
from omegaconf import OmegaConf

import hierot
from hierot import CPCCLoss
from hierot.config import CONFIG_DIR, check_config, compose_config
from hierot.data import HierarchyDataModule
from hierot.logs import quiet_warnings
from hierot.results import command_line, environment, write_results
from hierot.syncs import SyncCounter
from hierot.train import build_data, build_run, graceful_stop

METRIC_ROW = ("section", "case", "metric", "value", "unit", "note")
UNMEASURED = "unmeasured"
FAILED = "failed"
MODELS = {"resnet18 (default run)": [], "vit_b16 dist=fastft": ["backbone=vit_b16", "dist=fastft"]}
# shortened runs: one epoch of --steps steps, no validation, test or checkpoint
SHORT = [
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=0",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "~callbacks.model_checkpoint",
    "+trainer.enable_checkpointing=false",
]


class CaseFailed(RuntimeError):
    """A case whose result would be wrong, with why (a setting that did not take effect)."""


@dataclasses.dataclass
class Check:
    """Where the check runs and what it has recorded."""

    device: torch.device
    args: argparse.Namespace
    dry: bool = False
    rows: list[dict[str, str]] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)
    start: float = dataclasses.field(default_factory=time.perf_counter)
    _data: dict[str, HierarchyDataModule] = dataclasses.field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def record(
        self,
        section: str,
        case: str,
        metrics: Sequence[tuple[str, str]],
        measure: Callable[[], dict[str, object]] | None,
        why: str = "",
    ) -> None:
        """One row per (metric, unit): ``measure()``'s values, ``unmeasured`` (with ``why``)
        when it is None or the check is dry, or ``failed`` with the error."""
        values: dict[str, object] = {}
        note = why if measure is None else ""
        if measure is None or self.dry:
            note = note or "no GPU yet"
        else:
            try:
                values = measure()
                note = str(values.pop("note", why))
            except Exception as e:  # a case's failure is a row; the others still run
                note = f"{type(e).__name__}: {one_line(str(e))}"
                self.failures.append(f"{section} / {case}: {note}")
                print(f"device_check: {section} / {case}: FAILED: {note}", file=sys.stderr)
        for metric, unit in metrics:
            if measure is None or self.dry:
                value: object = UNMEASURED
            else:
                value = values.get(metric, FAILED if not values else "")
            row = dict(
                zip(METRIC_ROW, (section, case, metric, fmt(value), unit, note), strict=True)
            )
            self.rows.append(row)
            print(" | ".join(row.values()), flush=True)

    def data(self, overrides: Sequence[str]) -> HierarchyDataModule:
        """The training data of ``overrides`` (``debug=tiny``'s under ``--quick``), set up
        once per data config: generating the embedded data takes seconds, and every run of
        the same data shares it."""
        quick = ["debug=tiny"] if self.args.quick else []
        cfg = compose_config([*quick, *overrides, "output_dir=unused"])
        key = OmegaConf.to_yaml(cfg.data)
        if key not in self._data:
            datamodule = build_data(cfg.data)
            datamodule.setup("fit")
            self._data[key] = datamodule
        return self._data[key]

    def minutes(self) -> float:
        return (time.perf_counter() - self.start) / 60


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())[:300]


def fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return "" if value is None else str(value)


# ---------------------------------------------------------------- data
def section_data(check: Check) -> None:
    metrics = [("images/s", "1/s"), ("batches", "")]
    for case in ("host", "to device + normalize"):
        measure = lambda c=case: loader_rate(check, c)  # noqa: E731
        check.record("data", f"training loader, {case}", metrics, measure)


def loader_rate(check: Check, case: str) -> dict[str, object]:
    """Images/s over one epoch of the default data's training loader (its first batch left
    out: the loader starting)."""
    data = check.data([])
    images, batches, start = 0, 0, 0.0
    for i, (x, y) in enumerate(data.train_dataloader()):
        if case != "host":
            x = data.normalize(x.to(check.device, non_blocking=True))
            y = y.to(check.device, non_blocking=True)
        if i == 0:
            sync(check.device)
            start = time.perf_counter()
            continue
        images, batches = images + len(y), batches + 1
    sync(check.device)
    if batches == 0:
        raise CaseFailed("the loader has a single batch: nothing to time")
    return {"images/s": images / (time.perf_counter() - start), "batches": batches}


# ---------------------------------------------------------------- cpcc
def section_cpcc(check: Check) -> None:
    args = check.args
    metrics = [("forward+backward", "ms"), ("peak allocated", "MB")]
    hierarchy = balanced_tree(args.classes)
    for name in hierot.list_distances():
        options = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "dist" / f"{name}.yaml"))
        opts: dict[str, Any] = dict(options.get("options") or {})  # type: ignore[union-attr]
        for size in args.sizes:
            check.record(
                "cpcc", f"{name} B={size}", metrics,
                lambda n=name, b=size, o=opts: time_cpcc(check, hierarchy, n, o, b),
                "" if check.cuda else "peak memory: CUDA only",
            )  # fmt: skip


def time_cpcc(
    check: Check, hierarchy: hierot.Hierarchy, name: str, options: dict[str, Any], size: int
) -> dict[str, object]:
    """Median ms of ``CPCCLoss`` forward + backward (one untimed call first; at most
    ``--repeats`` calls, fewer once ``--case-seconds`` are spent) and the peak memory."""
    gen = torch.Generator().manual_seed(size)
    z = torch.randn(size, check.args.dim, generator=gen).to(check.device).requires_grad_()
    y = torch.randint(0, hierarchy.num_classes, (size,), generator=gen).to(check.device)
    loss_fn = CPCCLoss(hierarchy, name, **options).to(check.device)

    def step() -> None:
        z.grad = None
        loss_fn(z, y).backward()

    if check.cuda:
        torch.cuda.reset_peak_memory_stats(check.device)
    step()
    sync(check.device)
    peak = torch.cuda.max_memory_allocated(check.device) / 2**20 if check.cuda else None
    times: list[float] = []
    spent = time.perf_counter()
    while len(times) < check.args.repeats:
        t = time.perf_counter()
        step()
        sync(check.device)
        times.append(time.perf_counter() - t)
        if time.perf_counter() - spent > check.args.case_seconds:
            break
    return {"forward+backward": 1000 * statistics.median(times), "peak allocated": peak}


# ---------------------------------------------------------------- training runs
def run_overrides(check: Check, overrides: Sequence[str], steps: int, folder: str) -> list[str]:
    accelerator = "cuda" if check.cuda else "cpu"
    quick = ["debug=tiny"] if check.args.quick else []
    return [
        *quick, *overrides, *SHORT, f"trainer.limit_train_batches={steps}",
        f"trainer.accelerator={accelerator}", f"output_dir={folder}",
    ]  # fmt: skip


def fit(
    check: Check, overrides: Sequence[str], steps: int, callbacks: Sequence[L.Callback] = ()
) -> tuple[L.Trainer, StepClock, float]:
    """A shortened ``python -m hierot.train *overrides`` in this process, as ``hierot.train``
    builds it, on the shared data; (trainer, its step clock, seconds from fit to the end of
    the warm-up)."""
    with tempfile.TemporaryDirectory() as folder:
        cfg = compose_config(run_overrides(check, overrides, steps, folder))
        check_config(cfg)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        _, model, trainer = build_run(cfg)
        clock = StepClock(str(Path(folder) / "steps.json"), check.args.warmup)
        trainer.callbacks[:0] = [callbacks[0]] if callbacks else []  # type: ignore[index]
        trainer.callbacks += [*callbacks[1:], clock]  # type: ignore[operator]
        stop = graceful_stop(trainer)
        stop.install()
        start = time.perf_counter()
        try:
            trainer.fit(model, datamodule=check.data(overrides))
        finally:
            stop.restore()
    if len(clock.times) != steps:
        raise CaseFailed(f"{len(clock.times)} of {steps} steps ran")
    return trainer, clock, clock.times[check.args.warmup - 1] - start


def compiled_graphs() -> int:
    """Graphs ``torch.compile`` has made in this process so far (dynamo's counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def graph_cache() -> Counter[str]:
    """Inductor's on-disk FX graph cache so far: ``hit`` and ``miss`` counts (a hit skips
    most of a compilation: the warm-up of a compiled run depends on it)."""
    from torch._dynamo.utils import counters

    found = counters["inductor"]
    return Counter({k: int(found[f"fxgraph_cache_{k}"]) for k in ("hit", "miss")})


def section_train(check: Check) -> None:
    metrics = [("steps/s", "1/s"), ("images/s", "1/s"), ("warm-up", "s"), ("compiled graphs", "")]
    cases = [
        (model, compile_, precision)
        for compile_ in ("false", "true")
        for model in MODELS
        for precision in ("32-true", "bf16-mixed")
    ]
    for model, compile_, precision in cases:
        case = f"{model}, speed.compile={compile_}, trainer.precision={precision}"
        why = ""
        if precision == "bf16-mixed" and not check.cuda:
            why = "bf16-mixed: CUDA only"
        elif compile_ == "true" and check.args.quick:
            why = "--quick: torch.compile takes minutes on a CPU"
        elif not check.dry and check.minutes() > check.args.max_minutes:
            why = f"--max-minutes {check.args.max_minutes:g} spent before it started"
        overrides = [*MODELS[model], f"speed.compile={compile_}", f"trainer.precision={precision}"]
        measure = (
            None if why else (lambda o=overrides, c=compile_: train_rate(check, o, c == "true"))
        )
        check.record("train", case, metrics, measure, why)


def train_rate(check: Check, overrides: list[str], compiled: bool) -> dict[str, object]:
    before, cache = compiled_graphs(), graph_cache()
    trainer, clock, warmup = fit(check, overrides, check.args.steps)
    graphs = compiled_graphs() - before
    cache = graph_cache() - cache
    if compiled and graphs == 0:
        raise CaseFailed(
            "speed.compile=true compiled nothing (no torch.compile graph ran): the setting did "
            "not take effect in hierot.train.build_run / trainer.fit (is hierot.speed wired?)"
        )
    if not compiled and graphs:
        raise CaseFailed(f"speed.compile=false, yet torch.compile made {graphs} graphs")
    rate = steady_rate(clock.times, check.args.warmup)
    batch = trainer.datamodule.batch_size  # type: ignore[attr-defined]
    note = f"inductor graph cache: {cache['hit']} hits, {cache['miss']} misses" if graphs else ""
    return {
        "steps/s": rate, "images/s": rate * batch, "warm-up": warmup, "compiled graphs": graphs,
        "note": note,
    }  # fmt: skip


# ---------------------------------------------------------------- host synchronisations
class SyncProbe(L.Callback):
    """The last of a trainer's callbacks, and its ``start()`` the first: per training step
    after the warm-up, what ``counter`` counted inside the step (from the first callback's
    ``on_train_batch_start`` to the last one's ``on_train_batch_end``: the forward, backward,
    optimizer and scheduler steps and every callback's batch hooks) and between steps (the
    LightningModule's ``on_train_batch_end``, Lightning's logging, the next batch); with
    ``debug``, each step inside runs under ``torch.cuda.set_sync_debug_mode("error")``."""

    def __init__(self, counter: SyncCounter | None, warmup: int, debug: bool) -> None:
        self.counter, self.warmup, self.debug = counter, warmup, debug
        self.inside: list[Counter[str]] = []
        self.between: list[Counter[str]] = []
        self._mark: Counter[str] = Counter()
        self._step = 0

    def _snapshot(self) -> Counter[str]:
        counts = Counter(self.counter.counts) if self.counter is not None else Counter()
        counts, self._mark = counts - self._mark, counts
        return counts

    def start(self) -> L.Callback:
        probe = self

        class Start(L.Callback):
            def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
                gap = probe._snapshot()
                if probe._step > probe.warmup:
                    probe.between.append(gap)
                if probe.debug and probe._step >= probe.warmup:
                    torch.cuda.set_sync_debug_mode("error")

        return Start()

    def on_exception(self, trainer: L.Trainer, *args: Any) -> None:
        if self.debug:  # before Lightning's teardown, which may read the device
            torch.cuda.set_sync_debug_mode(0)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.debug:
            torch.cuda.set_sync_debug_mode(0)
        counts = self._snapshot()
        if self._step >= self.warmup:
            self.inside.append(counts)
        self._step += 1


def section_syncs(check: Check) -> None:
    metrics = [
        ("syncs per step, mean", ""),
        ("syncs per step, max", ""),
        ("syncs between steps, mean", ""),
        ("syncs between steps, max", ""),
    ]
    case = "default run, SyncCounter, speed.compile=false"
    check.record("syncs", case, metrics, lambda: count_syncs(check))
    why = "" if check.cuda else "torch.cuda.set_sync_debug_mode: CUDA only"
    debug_case = 'default run, torch.cuda.set_sync_debug_mode("error") around each step'
    check.record("syncs", debug_case, [("steps without a sync", "pass/fail")],
                 None if why else lambda: sync_debug(check), why)  # fmt: skip


def ops(counts: Sequence[Counter[str]]) -> str:
    total = sum(counts, Counter())
    return ", ".join(f"{op} {n / max(len(counts), 1):.3g}" for op, n in total.most_common())


def count_syncs(check: Check) -> dict[str, object]:
    """SyncCounter over a shortened default run, eager (a dispatch mode sees each operation
    of eager code, not those inside a compiled graph); the note lists the operations of
    each scope, per step."""
    steps = check.args.sync_steps
    counter = SyncCounter()
    probe = SyncProbe(counter, check.args.warmup, debug=False)
    with counter:
        fit(check, ["speed.compile=false"], steps, [probe.start(), probe])
    inside = [sum(c.values()) for c in probe.inside]
    between = [sum(c.values()) for c in probe.between]
    note = f"per step: {ops(probe.inside) or 'none'}; between steps: {ops(probe.between) or 'none'}"
    return {
        "note": note,
        "syncs per step, mean": statistics.fmean(inside),
        "syncs per step, max": max(inside),
        "syncs between steps, mean": statistics.fmean(between) if between else 0.0,
        "syncs between steps, max": max(between, default=0),
    }


def sync_debug(check: Check) -> dict[str, object]:
    """``pass``, or ``fail`` with the first synchronizing operation in the note."""
    probe = SyncProbe(None, check.args.warmup, debug=True)
    try:
        fit(check, [], check.args.sync_steps, [probe.start(), probe])
    except RuntimeError as e:
        if "synchroniz" not in str(e):
            raise
        note = f"first sync: {offender(e)}; {one_line(str(e))[:150]}"
        return {"steps without a sync": "fail", "note": note}
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return {"steps without a sync": "pass"}


def offender(error: BaseException) -> str:
    """Where ``error`` was raised: the innermost frame in hierot, else the innermost one."""
    frames = traceback.extract_tb(error.__traceback__)
    root = Path(hierot.__file__).resolve().parent.parent
    ours = [f for f in frames if Path(f.filename).resolve().is_relative_to(root)]
    frame = (ours or frames)[-1]
    where = Path(frame.filename).resolve()
    name = where.relative_to(root) if ours else where.name
    return f"{name}:{frame.lineno} in {frame.name}: {frame.line}"


# ---------------------------------------------------------------- main
SECTIONS = {
    "data": section_data,
    "cpcc": section_cpcc,
    "syncs": section_syncs,
    "train": section_train,
}


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, help="write the results CSV here")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5, help="timed CPCC calls per case")
    parser.add_argument("--case-seconds", type=float, default=2.0, help="CPCC timing per case")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per training run (default: 60 on CUDA, 12 on a CPU)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="first steps left out (default: 10 on CUDA, 2 on a CPU)",
    )
    parser.add_argument("--sync-steps", type=int, default=12, help="steps of the sync runs")
    parser.add_argument(
        "--max-minutes", type=float, default=8.0, help="no training case starts later"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, debug=tiny data, no compile (tests)"
    )
    parser.add_argument(
        "--unmeasured", action="store_true", help="write the rows of a CUDA run, unmeasured"
    )
    args = parser.parse_args(argv)
    cuda = (
        args.unmeasured
        or (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    )
    args.device = "cuda" if cuda else "cpu"
    if args.quick:
        args.sizes, args.dim, args.classes, args.repeats = [16, 64], 32, 10, 2
        args.steps, args.warmup, args.sync_steps = 3, 1, 3
    args.steps = args.steps or (60 if cuda else 12)
    args.warmup = args.warmup or (10 if cuda else 2)
    if not 1 <= args.warmup < min(args.steps, args.sync_steps):
        parser.error(f"--warmup {args.warmup} must be below --steps and --sync-steps")
    return args


def main() -> None:
    args = parse()
    quiet_warnings()
    for name in ("lightning.pytorch", "lightning.fabric"):  # GPU available, tips, ...
        logging.getLogger(name).setLevel(logging.WARNING)
    load = os.getloadavg()[0]
    check = Check(torch.device(args.device), args, dry=args.unmeasured)
    for name in args.sections:
        SECTIONS[name](check)
    device = torch.cuda.get_device_name(check.device) if check.cuda and not check.dry else "CPU"
    settings = (
        f"CPCC d={args.dim}, {args.classes} classes on a 3-level tree, median of up to "
        f"{args.repeats} calls (ms); training runs of {args.steps} steps, steady state after "
        f"{args.warmup}, no validation or checkpoint; sync runs of {args.sync_steps} steps"
    )
    if check.dry:
        note = f"not measured (no GPU was available); a CUDA run records these rows: {settings}"
    else:
        note = (
            f"device: {device}; {settings}; {check.minutes():.1f} min in all, 1-minute load "
            f"average {load:.1f} before, {os.getloadavg()[0]:.1f} after"
        )
    env = environment()
    if check.dry:
        env["machine"] = "no GPU yet (the rows a CUDA run records, unmeasured)"
    if args.csv:
        write_results(args.csv, check.rows, command_line(), notes=[note], env=env)
        print(f"device_check: wrote {args.csv}")
    if check.cuda and not check.dry:
        slug = re.sub(r"[^a-z0-9]+", "_", device.lower()).strip("_")
        print(f"device_check: name this device's CSV docs/results/device_check_{slug}.csv")
    if check.failures:
        print(f"device_check: {len(check.failures)} cases failed:", file=sys.stderr)
        for failure in check.failures:
            print(f"  {failure}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

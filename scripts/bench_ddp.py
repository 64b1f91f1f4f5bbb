"""What DDP sends per step, and the step time, at 24 and at 10 000 classes: 2 processes, gloo,
on CPU.

Every tensor that ``HierarchyModule`` derives from the tree (the tree distances, the metrics'
level maps, an objective's targets) is a buffer, built the same on every rank. DDP broadcasts
every buffer from rank 0 before every forward unless the module names it in
``_ddp_params_and_buffers_to_ignore``; ``HierarchyModule`` names every buffer but the
backbone's. This trains ``HierarchyModule`` (``dist=fastft``, ``lam=1``, SGD) with a small CNN
with batch norm (whose running statistics are still broadcast, d = 32) on random 3x32x32
images, 64 per rank, under Lightning's ``ddp`` strategy with 2 CPU processes (one thread
each), on a generated 3-level tree (``generated_tree``), and measures on each rank:

- the bytes DDP broadcasts per step: ``torch.distributed._broadcast_coalesced`` (DDP's buffer
  sync) is wrapped to count the bytes of the tensors it is given between the start and the
  end of each training batch (``Broadcasts``);
- the gradient bytes all-reduced per step: the trainable parameters' bytes;
- the step time (``on_train_batch_start`` to ``on_train_batch_end``: the forward, the CPCC's
  all-gather, the backward with its gradient all-reduce, SGD), wall-clock and the process's
  CPU time (all its threads; less moved by other work on a shared machine): the median over
  the steps after the first ``--skip``, the larger of the two ranks' medians;
- the head's forward, cross-entropy and backward alone on one rank's batch, one process: the
  part of a step that grows with the classes whatever DDP does.

Each run is a pair of processes of its own (Lightning starts rank 1 by running this script
again with the same arguments). The class counts run in turns, ``--repeats`` times, and the
first (the smallest) once more at the end, so that every run of the others lies between two
of it on a machine whose load drifts; a row's step time is the median over its runs. With
``--off-steps`` > 0 the same is run once, a few steps, with a subclass whose ignore list is
empty (``BroadcastEverything``): DDP's default, the "before".

A global batch holds the same number of classes (``--batch-classes``, the same number of
images of each) at every class count, so the regularizer does the same work and the step
time differs only by what grows with the classes: the head and its gradient, and whatever
DDP would send.

    python scripts/bench_ddp.py --csv docs/results/bench_ddp.csv   # 5-10 minutes
    python scripts/bench_ddp.py --quick                            # 1-2 minutes (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hierot.hierarchy import Hierarchy
from hierot.models import HierarchyModule
from hierot.results import command_line, write_results

RANKS = 2
PER_RANK = 64  # images per rank and step
FEATURES = 32  # the backbone's d: the head's gradient at 10 000 classes is 1.3 MB
WIDTH = 32  # the channels of the backbone's first convolution


class SmallCNN(nn.Module):
    """Three convolutions with batch norm (their running statistics are the buffers DDP still
    broadcasts: 1 048 bytes), average-pooled to ``num_features``. A step takes about 80 ms of
    one core, so that, as with a real backbone, the head (whose compute grows with the
    classes) is a small part of it."""

    num_features = FEATURES

    def __init__(self, width: int = WIDTH) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.Conv2d(2 * width, FEATURES, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(FEATURES),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BroadcastEverything(HierarchyModule):
    """DDP's default, the "before": no buffer is ignored, so all are broadcast every step."""

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        return []


def buffer_bytes(module: nn.Module) -> int:
    """The bytes of ``module``'s buffers."""
    return sum(b.numel() * b.element_size() for b in module.buffers())


def generated_tree(classes: int) -> Hierarchy:
    """3 levels: ``classes`` leaves in groups of ``b``, those in groups of ``b``, ``b`` the cube
    root of ``classes`` rounded (24 classes: 8 groups of 3 under 3 tops; 10 000: 455 groups of
    22 under 21 tops)."""
    b = max(2, round(classes ** (1 / 3)))
    return Hierarchy.from_paths([[f"t{c // b**2}", f"m{c // b}", f"c{c}"] for c in range(classes)])


def make_module(classes: int, ignore: bool = True) -> HierarchyModule:
    """The benchmark's module: ``HierarchyModule`` (``BroadcastEverything`` when not
    ``ignore``) on ``SmallCNN`` and ``generated_tree(classes)``, fastft CPCC, SGD."""
    torch.manual_seed(0)
    return (HierarchyModule if ignore else BroadcastEverything)(
        backbone=SmallCNN(),
        hierarchy=generated_tree(classes),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.01),
        dist="fastft",
        lam=1.0,
    )


def make_data(classes: int, steps: int, batch_classes: int) -> TensorDataset:
    """``steps`` global batches of ``RANKS * PER_RANK`` random images; each holds
    ``batch_classes`` classes drawn anew, the same number of images of each, every class in
    both ranks' halves (Lightning's sampler deals the images out in turn)."""
    g = torch.Generator().manual_seed(0)
    size = RANKS * PER_RANK
    x = torch.randn(steps * size, 3, 32, 32, generator=g)
    drawn = [torch.randperm(classes, generator=g)[:batch_classes] for _ in range(steps)]
    y = torch.cat([d.repeat_interleave(size // batch_classes) for d in drawn])
    return TensorDataset(x, y)


class Broadcasts:
    """While entered, ``torch.distributed._broadcast_coalesced`` (DDP's buffer sync calls it
    as ``dist._broadcast_coalesced(group, tensors, bucket_size, src)``) counts the bytes of
    the tensors it is given, and its calls."""

    def __init__(self) -> None:
        self.bytes = 0
        self.calls = 0
        self._original: Callable[..., object] | None = None

    def __enter__(self) -> Broadcasts:
        original = self._original = torch.distributed._broadcast_coalesced

        def counted(group: object, tensors: Sequence[torch.Tensor], *args: object) -> object:
            self.bytes += sum(t.numel() * t.element_size() for t in tensors)
            self.calls += 1
            return original(group, tensors, *args)

        torch.distributed._broadcast_coalesced = counted
        return self

    def __exit__(self, *exc: object) -> None:
        torch.distributed._broadcast_coalesced = self._original


class StepMeter(L.Callback):
    """Each training step's wall time, CPU time, and the bytes broadcast during it."""

    def __init__(self, broadcasts: Broadcasts) -> None:
        self.broadcasts = broadcasts
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []
        self.sent: list[int] = []
        self.calls: list[int] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        b = self.broadcasts
        self._start = (time.perf_counter(), time.process_time(), b.bytes, b.calls)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        wall, cpu, sent, calls = self._start
        self.seconds.append(time.perf_counter() - wall)
        self.cpu_seconds.append(time.process_time() - cpu)
        self.sent.append(self.broadcasts.bytes - sent)
        self.calls.append(self.broadcasts.calls - calls)


def head_seconds(head: nn.Linear, repeats: int = 20) -> float:
    """Median time of the head's forward, cross-entropy and backward on one rank's batch of
    features: the part of a step that grows with the classes."""
    z = torch.randn(PER_RANK, head.in_features, requires_grad=True)
    y = torch.randint(0, head.out_features, (PER_RANK,))
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        F.cross_entropy(head(z), y).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def worker(out: Path, classes: int, ignore: bool, steps: int, batch_classes: int) -> None:
    """One rank of one run (Lightning runs this script again for rank 1): trains ``steps``
    steps and writes what it measured to ``out/rank<r>.json``."""
    torch.set_num_threads(1)
    module = make_module(classes, ignore)
    loader = DataLoader(make_data(classes, steps, batch_classes), batch_size=PER_RANK)
    with Broadcasts() as broadcasts:
        meter = StepMeter(broadcasts)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=RANKS,
            strategy="ddp",
            max_steps=steps,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[meter],
        )
        trainer.fit(module, train_dataloaders=loader)
    trainable = [p for p in module.parameters() if p.requires_grad]
    record = {
        "seconds": meter.seconds,
        "cpu_seconds": meter.cpu_seconds,
        "broadcast_bytes": meter.sent,
        "broadcast_calls": meter.calls,
        "gradient_bytes": sum(p.numel() * p.element_size() for p in trainable),
        "backbone_buffer_bytes": buffer_bytes(module.backbone),
        "all_buffer_bytes": buffer_bytes(module),
        "head_s": head_seconds(module.head),
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def run_case(
    classes: int, ignore: bool, steps: int, batch_classes: int, timeout: float = 600
) -> list[dict]:
    """Both ranks' records of one run, a pair of processes of its own (in a session of
    their own: on a timeout both are stopped)."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable, __file__, "--worker", tmp, "--classes", str(classes),
            "--ignore", "on" if ignore else "off", "--steps", str(steps),
            "--batch-classes", str(batch_classes),
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        ) as run:  # fmt: skip
            try:
                _, stderr = run.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(run.pid, signal.SIGKILL)
                run.communicate()
                raise
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
        return [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(RANKS)]


def summarize(ranks: list[dict], skip: int) -> dict[str, float]:
    """One run, per step: the bytes broadcast (the least and the most of any rank and step),
    the gradient and buffer bytes, the larger of the ranks' median wall and CPU step times
    over the steps after the first ``skip``, and the head's time."""
    sent = [b for r in ranks for b in r["broadcast_bytes"]]
    return {
        "broadcast_min": min(sent),
        "broadcast_max": max(sent),
        "gradient": ranks[0]["gradient_bytes"],
        "backbone_buffers": ranks[0]["backbone_buffer_bytes"],
        "all_buffers": ranks[0]["all_buffer_bytes"],
        "step_s": max(statistics.median(r["seconds"][skip:]) for r in ranks),
        "cpu_s": max(statistics.median(r["cpu_seconds"][skip:]) for r in ranks),
        "head_s": max(r["head_s"] for r in ranks),
    }


def measure(
    classes: Sequence[int],
    ignore: bool,
    steps: int,
    skip: int,
    repeats: int,
    batch_classes: int,
    timeout: float = 600,
) -> dict[int, list[dict[str, float]]]:
    """Each class count's runs: the counts in turns ``repeats`` times, then the first once
    more (each run of the others between two of it)."""
    order = [*classes] * repeats + ([classes[0]] if len(classes) > 1 else [])
    runs: dict[int, list[dict[str, float]]] = {k: [] for k in classes}
    for k in order:
        runs[k].append(summarize(run_case(k, ignore, steps, batch_classes, timeout), skip))
        ms = [f"{1000 * r['step_s']:.0f}" for r in runs[k]]
        print(f"{k} classes, ignore list {'on' if ignore else 'off'}: step ms {ms}", flush=True)
    return runs


def _bytes_cell(low: float, high: float) -> str:
    return f"{low:.0f}" if low == high else f"{low:.0f}-{high:.0f}"


def rows_of(
    runs: dict[int, list[dict[str, float]]], ignore: bool, steps: int, skip: int
) -> list[dict[str, object]]:
    """The CSV rows of one ignore setting; step time ratios to its first class count
    (``smallest``)."""

    def median(found: list[dict[str, float]], key: str) -> float:
        return statistics.median(f[key] for f in found)

    smallest = next(iter(runs))
    base = median(runs[smallest], "step_s")
    rows = []
    for k, found in runs.items():
        first = found[0]
        low = min(f["broadcast_min"] for f in found)
        high = max(f["broadcast_max"] for f in found)
        rows.append({
            "classes": k,
            "ignore list": "on" if ignore else "off (DDP default)",
            "buffers MB": f"{first['all_buffers'] / 1e6:.4g}",
            "broadcast bytes/step": _bytes_cell(low, high),
            "broadcast MB/step": f"{high / 1e6:.4g}",
            "gradient MB/step": f"{first['gradient'] / 1e6:.3g}",
            "step ms": f"{1000 * median(found, 'step_s'):.0f}",
            f"x {smallest} classes": f"{median(found, 'step_s') / base:.2f}",
            "step CPU ms": f"{1000 * median(found, 'cpu_s'):.0f}",
            "head ms": f"{1000 * median(found, 'head_s'):.1f}",
            "runs: step ms": " / ".join(f"{1000 * f['step_s']:.0f}" for f in found),
            "steps timed": steps - skip,
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[24, 10_000])
    parser.add_argument("--steps", type=int, default=60, help="steps of each run")
    parser.add_argument("--skip", type=int, default=5, help="first steps not timed")
    parser.add_argument("--repeats", type=int, default=3, help="turns of the class counts")
    parser.add_argument("--off-steps", type=int, default=8, help="steps without the ignore list")
    parser.add_argument("--off-skip", type=int, default=3)
    parser.add_argument("--batch-classes", type=int, default=16, help="classes in a batch")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a run may take")
    parser.add_argument("--quick", action="store_true", help="one turn, no 'off' runs (tests)")
    parser.add_argument("--csv", type=Path, help="write the table as a results CSV here")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ignore", choices=["on", "off"], default="on", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.classes[0], args.ignore == "on", args.steps, args.batch_classes)
        return
    if args.quick:
        args.steps, args.repeats, args.off_steps = 40, 1, 0
    on = measure(
        args.classes, True, args.steps, args.skip, args.repeats, args.batch_classes, args.timeout
    )
    rows = rows_of(on, True, args.steps, args.skip)
    if args.off_steps:
        off = measure(
            args.classes, False, args.off_steps, args.off_skip, 1, args.batch_classes, args.timeout
        )
        rows += rows_of(off, False, args.off_steps, args.off_skip)
    for row in rows:
        print(row, flush=True)
    note = (
        f"Lightning DDP, 2 processes, gloo, CPU, 1 thread each; HierarchyModule dist=fastft "
        f"lam=1, SGD; a 3-convolution CNN with batch norm (d={FEATURES}) on random 3x32x32 "
        f"images, {PER_RANK} per rank, {args.batch_classes} classes in each global batch. "
        f"Buffers: all of the module's. Broadcast: what DDP broadcast each step (every step "
        f"the same). Gradient: the trainable parameters' bytes, all-reduced each step. Step: "
        f"wall-clock, the larger rank's median over the steps timed, the median over the runs "
        f"(each run's in 'runs'); step CPU: the same of the process's CPU time; head: the "
        f"head's forward + cross-entropy + backward alone, one process"
    )
    if args.csv is not None:
        write_results(args.csv, rows, command_line(), [note])


if __name__ == "__main__":
    main()

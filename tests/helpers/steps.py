"""Training steps under a ``SyncCounter``: what a GPU would wait for, per step."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import lightning as L

from hierot.config import check_config, compose_config
from hierot.syncs import SyncCounter

# A run of many short steps on the embedded data: 24 classes, batch 32, no validation.
QUICK = [
    "data.train_per_class=40",
    "data.val_per_class=2",
    "data.test_per_class=2",
    "data.batch_size=32",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=csv",
]


class _Window(L.Callback):
    """Counts from the start of step ``first`` to the start of step ``first + steps``, then
    stops the fit."""

    def __init__(self, counter: SyncCounter, first: int, steps: int) -> None:
        self.counter, self.first, self.steps = counter, first, steps
        self.counted = 0
        counter._paused += 1

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.first:
            self.counter._paused -= 1
        elif trainer.global_step == self.first + self.steps:
            self.counter._paused += 1
            self.counted = self.steps
            trainer.should_stop = True


def syncs_per_step(
    overrides: Sequence[str], out: Path, steps: int = 20, first: int = 3
) -> tuple[float, Counter[str]]:
    """``(syncs per step, counts by operator)`` over ``steps`` training steps of
    ``python -m hierot.train *QUICK *overrides`` run in this process (after ``first`` steps
    of warm-up), with the logging, checks and callbacks of a real run."""
    from hierot.train import build_run

    cfg = compose_config([*QUICK, *overrides])
    cfg.output_dir = str(out)
    check_config(cfg)
    L.seed_everything(0, verbose=False)
    datamodule, model, trainer = build_run(cfg)
    counter = SyncCounter()
    window = _Window(counter, first, steps)
    trainer.callbacks.append(window)
    with counter:
        trainer.fit(model, datamodule=datamodule)
    assert window.counted == steps, f"the run ended before {first + steps} steps"
    return counter.total / steps, counter.counts

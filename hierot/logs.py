"""What a run tells its console and its log file: a start summary, one line per epoch, and
no third-party noise.

The console and the ``<job>.log`` file are Hydra's logging handlers, configured in
``conf/hydra/job_logging/hierot.yaml``; everything here logs through ``logging``.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import warnings
from collections.abc import Mapping

import lightning as L
import torch

from hierot.data.module import HierarchyDataModule

log = logging.getLogger(__name__)

# Messages from libraries we use that tell a hierot user nothing they can act on.
NOISE = (
    "Tip: For seamless cloud logging",  # Lightning advertising litlogger on every run
    "isinstance(treespec, LeafSpec)",  # Lightning calling a torch API that torch deprecated
    "is smaller than the logging interval",  # short epochs: hierot logs epoch means anyway
    "to estimate number of stepping batches",  # Lightning narrating our schedule setup
)


class DropNoise(logging.Filter):
    """A logging filter (``conf/hydra/job_logging``) that drops the ``NOISE`` messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in NOISE)


def quiet_warnings() -> None:
    """Ignore the ``NOISE`` warnings (Python warnings, not log records) in this process."""
    for text in NOISE:
        warnings.filterwarnings("ignore", message=f".*{re.escape(text)}")


def progress_bar_wanted(setting: bool | None) -> bool:
    """``trainer.enable_progress_bar``: null shows the bar only on a terminal; in a log file
    its carriage-return updates are noise and the per-epoch lines say the same."""
    return sys.stdout.isatty() if setting is None else bool(setting)


def format_metrics(metrics: Mapping[str, object]) -> str:
    parts = []
    for key in sorted(metrics):
        value = metrics[key]
        if isinstance(value, torch.Tensor):
            value = value.item() if value.numel() == 1 else None
        if isinstance(value, float):
            parts.append(f"{key} {value:.4f}")
    return "  ".join(parts)


class EpochLog(L.Callback):
    """One log line per training epoch with its metrics, and the data sizes when fitting
    starts. ``train/*`` are means over the epoch's batches (the module logs them per step);
    ``val/*`` are the epoch's validation."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._sums: dict[str, float] = {}
        self._batches = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = trainer.datamodule
        if not trainer.is_global_zero or not isinstance(data, HierarchyDataModule):
            return
        images: dict[str, int] = data.description()["images"]  # type: ignore[assignment]
        log.info(
            "data: %s images; %d classes on a tree of %d levels",
            " / ".join(f"{n} {split}" for split, n in images.items()) or "?",
            data.hierarchy.num_classes,
            len(data.hierarchy.levels),
        )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._sums, self._batches = {}, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object
    ) -> None:
        self._batches += 1
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/") and value.numel() == 1:
                self._sums[key] = self._sums.get(key, 0.0) + float(value)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        seconds = time.perf_counter() - self._start
        metrics: dict[str, object] = {
            k: v for k, v in trainer.callback_metrics.items() if not k.startswith("train/")
        }
        metrics.update({k: v / max(self._batches, 1) for k, v in self._sums.items()})
        log.info(
            "epoch %d/%d (%.0f s): %s",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            seconds,
            format_metrics(metrics),
        )

"""What a run tells its console and its log file: a start summary, one line per epoch, and
no third-party noise.

The console and the ``<job>.log`` file are Hydra's logging handlers, configured in
``conf/hydra/job_logging/hierot.yaml``; everything here logs through ``logging``.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import logging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import MLFlowLogger as LightningMLFlowLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from hierot.data.module import HierarchyDataModule
from hierot.distances.emd import UNFINISHED_PLANS
from hierot.errors import DiskFull
from hierot.report import UNDEFINED

log = logging.getLogger(__name__)

# Messages from libraries we use that tell a hierot user nothing they can act on.
NOISE = (
    "Tip: For seamless cloud logging",  # Lightning advertising litlogger on every run
    "isinstance(treespec, LeafSpec)",  # Lightning calling a torch API that torch deprecated
    "is smaller than the logging interval",  # short epochs: hierot logs epoch means anyway
    "to estimate number of stepping batches",  # Lightning narrating our schedule setup
    # Lightning looks for the position in the loader; hierot's data module restores it
    # (hierot.data.sampling)
    "your dataloader is not resumable",
    # Lightning's all_gather calling a torch API that torch deprecated
    "torch.distributed.nn.functional.all_gather is deprecated",
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


def quiet_resume(trainer: L.Trainer) -> None:
    """On a resume: ignore Lightning's warning that a checkpoint folder of this trainer holds
    files. They are the run's own, from before it stopped; a fresh run still warns."""
    for callback in trainer.checkpoint_callbacks:
        folder = getattr(callback, "dirpath", None)
        if folder is not None:
            message = f"Checkpoint directory {folder} exists and is not empty"
            warnings.filterwarnings("ignore", message=re.escape(message))


def progress_bar_wanted(setting: bool | None) -> bool:
    """``trainer.enable_progress_bar``: null shows the bar only on a terminal; in a log file
    its carriage-return updates are noise and the per-epoch lines say the same."""
    return sys.stdout.isatty() if setting is None else bool(setting)


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar, with the training loss and CPCC as last logged: read from
    the device every ``log_every_n_steps`` steps, as the logger reads them (a metric logged
    with ``prog_bar=True`` is read every step, which makes a GPU wait)."""

    SHOWN = ("train/loss", "train/cpcc")

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._shown: dict[str, float] = {}

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        every = trainer.log_every_n_steps
        if every and trainer.global_step % every == 0:
            logged = trainer.callback_metrics
            shown = [k for k in self.SHOWN if k in logged]
            if shown:
                values = torch.stack([logged[k].detach().reshape(()) for k in shown]).tolist()
                self._shown = dict(zip(shown, values))
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        return {**super().get_metrics(trainer, pl_module), **self._shown}


def train_images(trainer: L.Trainer, n: int, batch_size: int) -> str:
    """The training images an epoch uses, of the ``n`` in the split: all of them (the last
    partial batch, dropped, is another one each epoch), or those of the batches
    ``trainer.limit_train_batches`` or ``trainer.fast_dev_run`` leaves (``batch_size``: the
    global batch)."""
    limit = trainer.limit_train_batches
    batches = trainer.num_training_batches
    if trainer.fast_dev_run:
        why = "trainer.fast_dev_run"
    elif isinstance(limit, float) and limit == 1.0:
        return f"{n} train"
    else:
        why = f"trainer.limit_train_batches={limit}"
    if not math.isfinite(batches) or batches * batch_size >= n:
        return f"{n} train"
    return f"{int(batches) * batch_size} of {n} train ({why})"


def format_metrics(metrics: Mapping[str, object]) -> str:
    parts = []
    for key in sorted(metrics):
        value = metrics[key]
        if isinstance(value, torch.Tensor):
            value = value.item() if value.numel() == 1 else None
        if isinstance(value, float):
            parts.append(f"{key} {value:.4f}" if not math.isnan(value) else f"{key} {UNDEFINED}")
    return "  ".join(parts)


def inner_labels_line(counts: Mapping[str, int]) -> str:
    """The log's line on the training images labelled only to an inner node:
    ``N images labelled at inner nodes (genus_a 12, genus_b 3)``."""
    total = sum(counts.values())
    shown = ", ".join(f"{node} {n}" for node, n in list(counts.items())[:5])
    more = f" and {len(counts) - 5} more nodes" if len(counts) > 5 else ""
    images = "image" if total == 1 else "images"
    return f"{total} {images} labelled at inner nodes ({shown}{more})"


class EpochLog(L.Callback):
    """One log line per training epoch with its metrics, and the data sizes when fitting
    starts. ``train/*`` are means over the epoch's batches (the module logs them per step);
    ``val/*`` are the epoch's validation. When fitting and when testing ends, the count of
    class pairs whose ``emd`` plan stopped short of optimal, if any
    (``hierot.distances.emd.UNFINISHED_PLANS``)."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._sums: dict[str, torch.Tensor] = {}
        self._batches = 0
        self._unfinished = 0  # UNFINISHED_PLANS.count already logged

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        UNFINISHED_PLANS.reset()  # this run's, on every rank
        self._unfinished = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here, not at the fit's start: Lightning has counted the training batches.
        data = trainer.datamodule
        if not trainer.is_global_zero or not isinstance(data, HierarchyDataModule):
            return
        images: dict[str, int] = data.description()["images"]  # type: ignore[assignment]
        sizes = [
            train_images(trainer, n, data.batch_size) if split == "train" else f"{n} {split}"
            for split, n in images.items()
        ]
        log.info(
            "data: %s images; %d classes on a tree of %d levels",
            " / ".join(sizes) or "?",
            data.hierarchy.num_classes,
            len(data.hierarchy.levels),
        )
        if data.inner_labels:  # counted once setup has made the training set
            log.info("%s", inner_labels_line(data.inner_labels))
        rates = any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks)
        log.info(
            "each epoch's line: train/* are means over its batches, val/* its validation%s",
            ", lr-* the learning rate at its start" if rates else "",
        )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._sums, self._batches = {}, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object
    ) -> None:
        # Summed on the device: read once, at the end of the epoch.
        self._batches += 1
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/") and value.numel() == 1:
                value = value.detach().reshape(())
                self._sums[key] = self._sums[key] + value if key in self._sums else value

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        seconds = time.perf_counter() - self._start
        metrics: dict[str, object] = {
            k: v for k, v in trainer.callback_metrics.items() if not k.startswith("train/")
        }
        if self._sums:
            means = (torch.stack(list(self._sums.values())).double() / self._batches).tolist()
            metrics.update(zip(self._sums, means))
        log.info(
            "epoch %d/%d (%.0f s): %s",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            seconds,
            format_metrics(metrics),
        )

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_unfinished(trainer, "training and validation")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_unfinished(trainer, "the test")

    def _log_unfinished(self, trainer: L.Trainer, during: str) -> None:
        line = UNFINISHED_PLANS.summary(since=self._unfinished, during=during)
        self._unfinished = UNFINISHED_PLANS.count
        if line is not None and trainer.is_global_zero:
            log.warning("%s", line)


class AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` (a resumed run's) is
    kept and appended to; Lightning's deletes it."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = sorted(csv.DictReader(f).fieldnames or [])


class CSVLogger(LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` whose ``metrics.csv`` survives a resume: the
    resumed run appends (steps between the checkpoint and the stop appear twice)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class MLFlowLogger(LightningMLFlowLogger):
    """``lightning.pytorch.loggers.MLFlowLogger`` that may log to a local ``file:`` store:
    MLflow 3 keeps that store but refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is set, and
    its database store needs the full ``mlflow`` package. A run then logs without a server."""

    def __init__(self, **kwargs: Any) -> None:
        uri = kwargs.get("tracking_uri")
        if uri is None or str(uri).startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        super().__init__(**kwargs)

    def log_hyperparams(self, params: Any) -> None:
        """Nested settings as ``dist.method`` rather than Lightning's ``dist/method``: in a
        file store a ``/`` makes a folder, which clashes with a setting of the same name
        (the model's ``dist`` beside the config's ``dist/method``)."""
        params = vars(params) if not isinstance(params, Mapping) else params
        super().log_hyperparams(flatten(params))


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class LogFileHandler(logging.FileHandler):
    """The ``<job>.log`` handler: a write that fails for lack of space raises ``DiskFull``
    (one line naming the file) where ``logging`` would print a traceback and go on."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            stream, self.stream = self.stream, None  # type: ignore[assignment]
            with contextlib.suppress(OSError):  # closing flushes the unwritten rest again
                stream.close()
            logging.getLogger().removeHandler(self)
            raise DiskFull(
                f"no space left on the device of {self.baseFilename}: writing it needs "
                f"{len(self.format(record)) + 1} more bytes"
            ) from None
        super().handleError(record)

"""Checkpoints a run can resume from: written whole or not at all, every N steps or T
minutes, and found again (``ckpt_path=auto``).

A checkpoint holds the weights, the optimizer and schedule, the loops' counters, and the
training data's order, position and random states (``hierot.data.sampling``), so a run
resumed from it takes the steps the uninterrupted run would have taken.
"""

from __future__ import annotations

import io
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig

from hierot.checkpoints import check_checkpoint
from hierot.checks import config_check
from hierot.data.module import training_progress
from hierot.errors import ConfigError, require_integer, require_number
from hierot.writes import write_atomic

log = logging.getLogger(__name__)

# The checkpoint that periodic saves and a graceful stop overwrite, in <run>/checkpoints/.
RESUME_NAME = "resume.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer with ``write_atomic``: Lightning's own writes the file
    in place, so a kill during a write leaves a truncated checkpoint and no previous one."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomic(Path(path), buffer.getbuffer())


def epoch_trained(trainer: L.Trainer) -> bool:
    """True from the end of an epoch's last training batch on."""
    return training_progress(trainer)[1]


class AtStepEnds(L.Callback):
    """Calls ``act`` where a resumable checkpoint may be saved, when ``due`` says so: after a
    training step within an epoch, or after an epoch's validation (``on_train_epoch_end``),
    never between an epoch's last step and its validation, which a run resumed from there
    would skip."""

    # Under DDP ``due`` is a collective (the ranks agree): asked every this many steps,
    # and after every epoch.
    poll_every: int = 1

    def due(self, trainer: L.Trainer) -> bool:
        raise NotImplementedError

    def act(self, trainer: L.Trainer) -> None:
        raise NotImplementedError

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if epoch_trained(trainer):
            return
        if trainer.world_size > 1 and trainer.global_step % self.poll_every:
            return
        if self.due(trainer):
            self.act(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.due(trainer):
            self.act(trainer)


class PeriodicCheckpoint(AtStepEnds):
    """Saves ``path`` (a full, resumable checkpoint) every ``every_n_steps`` optimizer steps
    and every ``every_minutes`` minutes of training, whichever comes first (None: never).
    A kill loses at most one interval of work. Under DDP rank 0's clock decides, asked
    every ``poll_every`` steps."""

    def __init__(
        self,
        path: Path,
        every_n_steps: int | None,
        every_minutes: float | None,
        poll_every: int = 1,
    ):
        self.path = Path(path)
        self.poll_every = poll_every
        self.every_n_steps = every_n_steps
        self.every_seconds = None if every_minutes is None else 60.0 * every_minutes
        self._step = 0
        self._time = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step, self._time = trainer.global_step, time.monotonic()

    def due(self, trainer: L.Trainer) -> bool:
        due = bool(self.every_n_steps) and trainer.global_step - self._step >= self.every_n_steps
        if self.every_seconds is not None and not due:
            # ranks' clocks differ: rank 0 decides, every rank saves (a collective)
            due = time.monotonic() - self._time >= self.every_seconds
            if trainer.world_size > 1:
                due = bool(trainer.strategy.broadcast(due, src=0))
        return due

    def act(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        log.debug("step %d: saved %s", trainer.global_step, self.path)
        self._step, self._time = trainer.global_step, time.monotonic()


def resumable_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints that a run resumes from, newest first: the periodic or stop
    checkpoint and the end-of-epoch ``last*.ckpt``."""
    folder = Path(run_dir) / "checkpoints"
    found = [p for p in folder.glob("*.ckpt") if p.name == RESUME_NAME or p.name.startswith("last")]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = resumable_checkpoints(run_dir)
    return found[0] if found else None


def relaunched() -> bool:
    """True in a job that a scheduler may have restarted in its own directory: a SLURM job
    that SLURM has requeued, or any job submitit launched (each has a directory of its own, so
    a checkpoint found there is its own from before a requeue)."""
    requeued = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    return requeued or bool(os.environ.get("SUBMITIT_EXECUTOR"))


def resume_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """The checkpoint ``fit`` resumes from: ``ckpt_path`` as given; for ``auto`` (and for
    null in a ``relaunched`` job) the run directory's newest checkpoint, or None (a fresh
    start) when it has none."""
    if ckpt_path not in (None, "auto") or (ckpt_path is None and not relaunched()):
        return ckpt_path
    latest = latest_checkpoint(run_dir)
    if latest is None:
        log.info("no checkpoint in %s: starting from the beginning", Path(run_dir) / "checkpoints")
        return None
    log.info("resuming from %s", latest)
    return str(latest)


@config_check
def check_resume_config(cfg: DictConfig) -> None:
    """``ckpt_path`` (a checkpoint file, ``auto`` or null) and the ``checkpoint`` section's
    saving settings, each a one-line error naming its key."""
    if cfg.get("ckpt_path") not in (None, "auto"):
        check_checkpoint(cfg.ckpt_path, "ckpt_path")
    node = cfg.get("checkpoint") or {}
    if node.get("every_n_steps") is not None:
        require_integer(node.get("every_n_steps"), "checkpoint.every_n_steps", 1)
    if node.get("every_minutes") is not None:
        require_number(node.get("every_minutes"), "checkpoint.every_minutes", 0.01)
    for key in ("save_last", "weights_only"):
        if not isinstance(node.get(key), bool):
            raise ConfigError(f"checkpoint.{key} must be true or false, got {node.get(key)!r}")

"""Stopping a run cleanly when a scheduler or a person asks: on SIGTERM (Kubernetes, SLURM
preemption, ``scancel``), the signal a scheduler sends ahead of a time limit (SLURM's
``--signal``: SIGUSR1; submitit's: SIGUSR2) or SIGINT (Ctrl-C), the run finishes the step it
is in, saves a resumable checkpoint of exactly that step and stops with ``Interrupted``; a
second signal ends the process at once. Outside training (building the run, ``evaluate``,
``transfer``) Ctrl-C raises ``Cancelled`` (``ctrl_c_cancels``), which the entry points
report in one line.

On SLURM the job then requeues itself: through submitit's handler when submitit launched it
(its ``checkpoint`` resubmits the same job), else with ``scontrol requeue`` on SIGUSR1. The
requeued job resumes from the checkpoint (``hierot.resume.resume_path``).

Lightning's own handling is replaced while training runs: on SIGTERM it stops at the end of
a step but saves nothing and exits 0, and its SLURM auto-requeue saves a checkpoint from inside
the signal handler, wherever the step then is (mid optimizer step, say), not at a step's end.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import lightning as L
from omegaconf import DictConfig
from torch.utils.data import get_worker_info

from hierot.checks import config_check
from hierot.errors import ConfigError, Interrupted
from hierot.resume import AtStepEnds, latest_checkpoint

log = logging.getLogger(__name__)

DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT")


class Cancelled(BaseException):
    """Ctrl-C where no graceful stop is in place. A ``BaseException`` as ``KeyboardInterrupt``
    is (no ``except Exception`` swallows it), but not one: Lightning turns a
    ``KeyboardInterrupt`` into its own message and exit status 1, and passes this on."""


def second_signal(signum: int) -> NoReturn:
    """End the process at once, with the status a shell gives a process ``signum`` ended."""
    name = signal.Signals(signum).name
    os.write(2, f"hierot: second signal ({name}): exiting now\n".encode())
    os._exit(128 + signum)


@contextmanager
def ctrl_c_cancels() -> Iterator[None]:
    """Within it, the first SIGINT raises ``Cancelled`` and a second ends the process at once.
    Only in this process: a forked child (a DataLoader worker) ignores it and is ended by
    this process. Where SIGINT has a handler other than Python's own, it is left alone."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    pid = os.getpid()
    raised = False

    def cancel(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if os.getpid() != pid:
            return
        if raised:
            second_signal(signum)
        raised = True
        raise Cancelled

    signal.signal(signal.SIGINT, cancel)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def parse_signals(names: Any, key: str = "checkpoint.stop_signals") -> list[signal.Signals]:
    """Signal names (``SIGTERM`` or ``TERM``) as signals; a one-line error naming ``key``."""
    if isinstance(names, str):
        names = [names]
    found = []
    for name in names or []:
        text = str(name).upper()
        text = text if text.startswith("SIG") else f"SIG{text}"
        sig = getattr(signal.Signals, text, None)
        if sig is None or sig in (signal.SIGKILL, signal.SIGSTOP):
            raise ConfigError(f"{key}: {name!r} is not a signal a process can handle")
        found.append(sig)
    return found


@config_check
def check_stop_config(cfg: DictConfig) -> None:
    """``checkpoint.stop_signals`` and ``checkpoint.requeue``."""
    node = cfg.get("checkpoint") or {}
    parse_signals(node.get("stop_signals", []))
    if not isinstance(node.get("requeue", True), bool):
        raise ConfigError(f"checkpoint.requeue must be true or false, got {node.get('requeue')!r}")


def slurm_job_id() -> str | None:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job() -> bool:
    """``scontrol requeue`` this SLURM job (it restarts in the same run directory)."""
    job = slurm_job_id()
    if job is None:
        return False
    try:
        done = subprocess.run(["scontrol", "requeue", job], check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("could not requeue SLURM job %s: %s", job, e)
        return False
    if done.returncode != 0:
        log.warning("scontrol requeue %s exited %d", job, done.returncode)
        return False
    log.info("requeued SLURM job %s", job)
    return True


class GracefulStop(AtStepEnds):
    """Stops training at the end of the step in which one of ``signals`` arrived, after
    saving ``path``; raises ``Interrupted``. Under DDP a signal to any rank stops every rank
    at the same step, within ``poll_every`` steps (the ranks agree in a collective).
    ``requeue``: requeue the SLURM job after saving (see the module)."""

    def __init__(
        self,
        path: Path,
        signals: Any = DEFAULT_SIGNALS,
        requeue: bool = True,
        poll_every: int = 1,
    ):
        self.path = Path(path)
        self.poll_every = poll_every
        self.signals = parse_signals(signals)
        self.requeue = requeue
        self.received: int | None = None
        self._before: dict[int, Any] = {}

    def install(self) -> None:
        """Handle the signals from now on (before training starts: a signal while the data
        and model are built stops the run after its first step). ``restore`` undoes it."""
        self.received = None
        self._before = {s: signal.getsignal(s) for s in self.signals}
        for s in self.signals:
            signal.signal(s, self._handle)

    def restore(self) -> None:
        for s, handler in self._before.items():
            signal.signal(s, handler)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning installed its own handlers since (restored at its teardown): replace them
        for s in self.signals:
            signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if get_worker_info() is not None:  # a forked DataLoader worker: the run decides
            return
        if self.received is not None:
            if signum == signal.SIGINT and self._before.get(signum) is signal.default_int_handler:
                # In a Python session (a notebook, a script calling train) rather than an
                # entry point: Python's KeyboardInterrupt, which leaves the session alive.
                signal.default_int_handler(signum, frame)
            second_signal(signum)
        self.received = signum
        log.info("%s received: stopping after this step", signal.Signals(signum).name)

    def due(self, trainer: L.Trainer) -> bool:
        stop = self.received is not None
        if trainer.world_size > 1:  # a signal to one rank stops them all at this step
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        return stop

    def act(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        raise self.interrupted(trainer, self.path)

    def on_test_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        # The run's test of its best checkpoint, after training: the finished training's
        # checkpoints are the point to resume from (a resumed run only tests). One process
        # only: DDP ranks may hold one test batch more or less, so no collective per batch.
        if self.received is not None and trainer.world_size == 1:
            raise self.interrupted(trainer, latest_checkpoint(self.path.parent.parent), "test")

    def interrupted(
        self, trainer: L.Trainer, checkpoint: Path | None, stage: str = "fit"
    ) -> Interrupted:
        signum = self.received if self.received is not None else signal.SIGTERM
        name = signal.Signals(signum).name
        where = f"step {trainer.global_step} (epoch {trainer.current_epoch})"
        where = f"after {where}" if stage == "fit" else f"in the test, after training's {where}"
        return Interrupted(f"stopped by {name} {where}; checkpoint: {checkpoint}", signum)

    def hand_over(self) -> None:
        """After the run's outputs are written: pass the signal to the handler that was there
        before the run (submitit's, which requeues the job and exits), or else, in a SLURM job
        stopped by SIGUSR1, requeue it with ``scontrol``. A Ctrl-C (SIGINT) is a person's:
        it requeues nothing, and the handler before it would only raise again."""
        if self.received in (None, signal.SIGINT) or not self.requeue:
            return
        before = self._before.get(self.received)
        if callable(before):
            before(self.received, None)
        elif self.received == signal.SIGUSR1 and slurm_job_id() is not None:
            requeue_slurm_job()

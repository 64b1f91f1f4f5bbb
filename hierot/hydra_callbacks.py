"""Hydra callbacks of hierot's entry points (enabled in ``conf/train.yaml``,
``conf/evaluate.yaml`` and ``conf/transfer.yaml``)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from hierot.sweep import format_seed_summary, record_failure, seed_summary, write_summary

log = logging.getLogger(__name__)

# What the sweeps of this process left failed, one line each; the entry point reads it
# (``sweep_failure``) and decides the exit status.
FAILURES: list[str] = []


def sweep_failure() -> str | None:
    """The line saying which jobs of this process's sweep failed, or None."""
    return FAILURES[-1] if FAILURES else None


class SweepSummary(Callback):
    """Hydra callback: records failed jobs and keeps the sweep's summary current.

    Args:
        over: the overrides ``summary_seeds.csv`` averages over (default: ``seed``).
    """

    def __init__(self, over: Sequence[str] = ("seed",)) -> None:
        self.over = list(over)
        self.launcher: tuple[str, int] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # this object travels with the jobs (a cluster launcher pickles it)
        self.launcher = (socket.gethostname(), os.getpid())

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        job_dir = Path(config.hydra.runtime.output_dir)
        if job_return.status == JobStatus.FAILED:
            try:
                job_return.return_value  # noqa: B018 (re-raises the job's exception)
            except Exception as e:
                record_failure(job_dir, e)
        if self.launcher not in (None, (socket.gethostname(), os.getpid())):
            # a job on a node of its own: the jobs of a sweep write only their own
            # directories; the launching process writes the summary when they are done
            return
        try:
            write_summary(Path(config.hydra.sweep.dir), self.over)
        except OSError as e:  # a summary problem must not fail the job
            log.warning("sweep summary not written: %s", e)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = write_summary(sweep_dir, self.over)
        done = sum(r.get("status") == "completed" for r in rows)
        table = format_seed_summary(seed_summary(rows, self.over))
        if table:
            print(f"mean over {', '.join(self.over)} of each setting:\n{table}", flush=True)
        print(
            f"sweep summary: {sweep_dir / 'summary.csv'} ({done} of {len(rows)} jobs completed)",
            flush=True,
        )
        failed = [r for r in rows if r.get("status") != "completed"]
        if failed:
            # Hydra would exit 0; the entry point exits 2 with this line (``sweep_failure``)
            jobs = ", ".join(str(r["job"]) for r in failed)
            FAILURES.append(
                f"{len(failed)} of {len(rows)} jobs failed (job {jobs}: {failed[0].get('error')})"
            )

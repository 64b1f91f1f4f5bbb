"""Entry point: ``python -m hierot.train [group=option ...] [key=value ...]``.

Trains ``HierarchyModule`` on the configured data, tests the best checkpoint, writes
``metrics.json``, ``config.yaml``, logs and checkpoints into the Hydra run directory and returns
``test/cpcc`` (so a Hydra sweeper can optimize it).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from hierot.checkpoints import check_checkpoint
from hierot.cli import USER_ERRORS, discard_run_dir, error_line, fail, run_checked
from hierot.config import (
    build,
    check_added_keys,
    check_config,
    compose_config,
    one_line,
    sweep_variants,
)
from hierot.data import HierarchyDataModule
from hierot.errors import ConfigError, DiskFull, Diverged, Interrupted, RunStopped, user_message
from hierot.hierarchy import Hierarchy
from hierot.logs import EpochLog, ProgressBar, progress_bar_wanted, quiet_resume
from hierot.models import HierarchyModule
from hierot.objectives import check_objective_config
from hierot.report import format_table, write_metrics
from hierot.resume import (
    RESUME_NAME,
    AtomicCheckpointIO,
    PeriodicCheckpoint,
    latest_checkpoint,
    resume_path,
)
from hierot.speed import apply_speed
from hierot.stages import StageSwitch, stage_aware
from hierot.stopping import GracefulStop
from hierot.sweep import record_failure
from hierot.writes import write_json

log = logging.getLogger(__name__)


def build_data(node: DictConfig) -> HierarchyDataModule:
    """The ``data`` group's data module (arguments only: it reads no file until its
    metadata or images are asked for)."""
    datamodule = build(node, "data")
    if not isinstance(datamodule, HierarchyDataModule):
        raise ConfigError(f"data: {type(datamodule).__name__} is not a HierarchyDataModule")
    return datamodule


def build_run(cfg: DictConfig) -> tuple[HierarchyDataModule, HierarchyModule, L.Trainer]:
    """Data module, model and trainer of a checked config, each from its config group."""
    out = Path(cfg.output_dir)
    datamodule = build_data(cfg.data)
    # The model's own settings are in its group; what it is built around comes from the
    # data (the tree, the level names) and the other groups.
    model = build(cfg.model, "model")(
        backbone=build(cfg.backbone, "backbone"),
        hierarchy=datamodule.hierarchy,
        optimizer=build(cfg.optimizer, "optimizer"),
        scheduler=build(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None,
        level_names=datamodule.level_names,
    )
    model.use_inner_labels(datamodule.hierarchy, datamodule.inner_nodes)
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    logger = build(cfg.logger, "logger") if cfg.get("logger") else False
    validates = trainer_kwargs.get("limit_val_batches", 1) != 0  # type: ignore[union-attr]
    callbacks = build_callbacks(
        cfg, validates, logged=logger is not False, logs=model.monitorable()
    )
    if trainer_kwargs.get("fast_dev_run"):  # type: ignore[union-attr]
        # A dry run writes no checkpoint (Lightning's ModelCheckpoint would save last.ckpt
        # at the end of one even so).
        callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        trainer_kwargs["enable_checkpointing"] = False  # type: ignore[index]
    callbacks += resume_callbacks(cfg)
    bar = progress_bar_wanted(trainer_kwargs.get("enable_progress_bar"))  # type: ignore[union-attr]
    trainer_kwargs["enable_progress_bar"] = bar  # type: ignore[index]
    if bar:
        callbacks.append(ProgressBar())
    try:
        trainer = L.Trainer(
            **trainer_kwargs,  # type: ignore[arg-type]
            default_root_dir=out,
            logger=logger,
            callbacks=[StageSwitch(), *callbacks, EpochLog()],
            plugins=[AtomicCheckpointIO()],
        )
    except (ValueError, TypeError, MisconfigurationException, ModuleNotFoundError) as e:
        raise ConfigError(f"trainer: {one_line(e)}") from None
    apply_speed(cfg.speed, model, trainer, trainer_kwargs.get("benchmark"))  # type: ignore[union-attr]
    return datamodule, model, trainer


def build_callbacks(
    cfg: DictConfig, validates: bool, logged: bool, logs: set[str]
) -> list[L.Callback]:
    """The ``callbacks`` group's callbacks, Lightning's ``ModelCheckpoint`` and
    ``EarlyStopping`` as their stage-aware subclasses (``hierot.stages``). Without
    validation nothing is monitored (every checkpoint callback keeps the latest weights);
    without a logger there is nothing to log learning rates to. A callback may monitor
    only what the model ``logs`` every epoch: Lightning would find out at the end of the
    first epoch, with a traceback."""
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        monitor = node.get("monitor")
        if validates and monitor is not None and monitor not in logs:
            raise ConfigError(
                f"callbacks.{name}: monitor {monitor!r} is not logged every epoch; this run "
                f"logs {', '.join(sorted(logs))}"
            )
        extra = {} if validates or "monitor" not in node else {"monitor": None}
        callback = build(node, f"callbacks.{name}", **extra)
        if isinstance(callback, LearningRateMonitor) and not logged:
            continue
        callbacks.append(stage_aware(callback))  # selection and stops in the last stage
    return callbacks


def resume_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The periodic checkpoint and the graceful stop, both writing
    ``checkpoints/resume.ckpt``, from the ``checkpoint`` section."""
    node = cfg.checkpoint
    path = Path(cfg.output_dir) / "checkpoints" / RESUME_NAME
    poll = cfg.speed.check_every_n_steps
    return [
        PeriodicCheckpoint(path, node.get("every_n_steps"), node.get("every_minutes"), poll),
        GracefulStop(path, node.get("stop_signals", ()), node.get("requeue", True), poll),
    ]


def graceful_stop(trainer: L.Trainer) -> GracefulStop:
    return next(c for c in trainer.callbacks if isinstance(c, GracefulStop))  # type: ignore[union-attr]


def write_hierarchy(out: Path, hierarchy: Hierarchy) -> None:
    """``hierarchy.json``: the tree the run trained on, nested, for ``Hierarchy.from_file``
    (with ``classes=`` from ``data.json`` for the class ids); a tree with edge weights also
    gets ``hierarchy.txt``, an edge list that keeps them."""
    write_json(out / "hierarchy.json", hierarchy.to_nested())
    if not hierarchy.unit_weights:
        (out / "hierarchy.txt").write_text(hierarchy.edge_list())


def run_summary(cfg: DictConfig) -> str:
    """The run's main settings on one line, for the console and train.log."""
    optimizer = str(cfg.optimizer.get("_target_", "?")).rsplit(".", 1)[-1]
    trainer = cfg.trainer
    return (
        f"training {cfg.backbone.name} on {str(cfg.data._target_).rsplit('.', 1)[-1]} "
        f"(batch {cfg.data.batch_size}) for {trainer.max_epochs} epochs: "
        f"{cfg.objective.name} + {cfg.lam} x "
        f"CPCC({cfg.dist.method}), {optimizer} lr {cfg.optimizer.get('lr')}, seed {cfg.seed}"
    )


def run_record(cfg: DictConfig, trainer: L.Trainer) -> dict[str, object]:
    """The settings a sweep summary groups runs by, and how far the run got."""
    return {
        "objective": cfg.objective.name,
        "dist": cfg.dist.method,
        "lam": float(cfg.lam),
        "data.batch_size": int(cfg.data.batch_size),
        "backbone": cfg.backbone.name,
        "seed": int(cfg.seed),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
    }


def fit_and_test(
    cfg: DictConfig, datamodule: HierarchyDataModule, model: HierarchyModule, trainer: L.Trainer
) -> dict[str, object]:
    """Fit (from the checkpoint ``ckpt_path`` resolves to), then test the best checkpoint;
    the test metrics, then the last epoch's, ``fit_seconds`` and ``best_checkpoint``. A run
    that cannot go on (``RunStopped``) writes what it has and raises it."""
    out = Path(cfg.output_dir)
    start = time.perf_counter()
    resume = resume_path(cfg.ckpt_path, out)
    if resume is not None:  # ckpt_path=auto's find, checked as a given ckpt_path is
        check_checkpoint(resume, "ckpt_path")
        quiet_resume(trainer)
    stop = graceful_stop(trainer)
    stop.install()
    try:
        # every checkpoint is read weights-only (tensors and plain values: no code runs)
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        if stop.received is not None:  # a signal after the last training step
            raise stop.interrupted(trainer, latest_checkpoint(out))
        fit_seconds = time.perf_counter() - start
        fit_metrics = dict(trainer.callback_metrics)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        # fast_dev_run and runs without validation have no best checkpoint: test the weights
        # as they are.
        results = trainer.test(
            model, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True
        )
    except MisconfigurationException as e:
        # Lightning's word for a setting it cannot run with (a trainer.* value that only
        # fails once fitting starts)
        raise ConfigError(one_line(e)) from None
    except (RunStopped, OSError) as e:
        stopped = as_run_stopped(e)
        if stopped is None:
            raise
        write_stopped(cfg, trainer, stopped)
        stopped.hand_over = stop.hand_over  # type: ignore[attr-defined]
        raise stopped from None
    finally:
        stop.restore()
    metrics: dict[str, object] = dict(results[0]) if results else {}
    metrics.update({k: v for k, v in fit_metrics.items() if k not in metrics})
    metrics.update({"fit_seconds": round(fit_seconds, 1), "best_checkpoint": best or None})
    return metrics


def train(cfg: DictConfig) -> float:
    """Fit, test the best checkpoint, write the run's outputs; returns ``test/cpcc``."""
    check_config(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, model, trainer = build_run(cfg)
    for logger in trainer.loggers:  # the whole run's settings beside its curves (wandb, ...)
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    if trainer.is_global_zero:
        OmegaConf.save(cfg, out / "config.yaml", resolve=True)
        write_hierarchy(out, datamodule.hierarchy)
        log.info("%s (config: %s)", run_summary(cfg), out / "config.yaml")

    results = fit_and_test(cfg, datamodule, model, trainer)
    metrics = {k: v for k, v in results.items() if k not in ("fit_seconds", "best_checkpoint")}
    metrics.update({"status": "completed", **run_record(cfg, trainer)})
    metrics.update({k: results[k] for k in ("fit_seconds", "best_checkpoint")})
    # Under DDP every rank gets here with the same (synced) metrics; one writer avoids two
    # ranks racing on the same temporary file.
    if trainer.is_global_zero:
        write_json(out / "data.json", datamodule.description())
        write_metrics(out / "metrics.json", metrics)
        log.info("%s", format_table(metrics))
        log.info("outputs: %s", out)
    return float(metrics.get("test/cpcc", float("nan")))  # type: ignore[arg-type]


def as_run_stopped(error: BaseException) -> RunStopped | None:
    """``error`` as the ``RunStopped`` it means (an ``OSError`` for lack of space is a
    ``DiskFull``), or None."""
    if isinstance(error, RunStopped):
        return error
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        name = error.filename or "a file of the run"
        return DiskFull(f"no space left on the device of {name}: {error.strerror}")
    return None


def resume_command(cfg: DictConfig) -> str:
    """The command that resumes this run in its directory."""
    overrides = [
        o
        for o in HydraConfig.get().overrides.task
        if not o.startswith(("ckpt_path=", "hydra.run.dir="))
    ]
    return " ".join(
        ["python -m hierot.train", *overrides, f"hydra.run.dir={cfg.output_dir}", "ckpt_path=auto"]
    )


def write_stopped(cfg: DictConfig, trainer: L.Trainer, error: RunStopped) -> None:
    """What a stopped run has: ``metrics.json`` marked with its status, the error, the
    metrics so far, where it stopped and the checkpoint to go on from. Best effort: on a
    full disk the write may fail as well."""
    out = Path(cfg.output_dir)
    latest = latest_checkpoint(out)
    if isinstance(error, Interrupted):
        error.args = (f"{error.args[0]}; resume with: {resume_command(cfg)}",)
    elif isinstance(error, Diverged):
        error.args = (f"{error.args[0]}; last good checkpoint: {latest or 'none'}",)
    if not trainer.is_global_zero:
        return
    metrics: dict[str, object] = dict(trainer.callback_metrics)
    metrics.update({"status": error.status, "error": user_message(error)})
    metrics.update(run_record(cfg, trainer))
    metrics["resume_checkpoint"] = str(latest) if latest else None
    try:
        write_metrics(out / "metrics.json", metrics)
    except OSError as e:
        log.warning("metrics.json not written: %s", e)


def run_job(cfg: DictConfig) -> float:
    """One job under Hydra: ``train``, with a user error as one line (a single run) or as a
    failed job of a sweep."""
    try:
        return train(cfg)
    except RunStopped as e:
        print(error_line(e), file=sys.stderr, flush=True)
        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
        if isinstance(e, Interrupted) or not multirun:
            hand_over = getattr(e, "hand_over", None)
            if hand_over is not None:  # requeue the SLURM job (or let submitit do it)
                hand_over()
            sys.exit(e.exit_code)
        # a failed job of a sweep: recorded (write_stopped), the others run
        return float("nan")
    except USER_ERRORS as e:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            discard_run_dir(Path(cfg.output_dir), "train")
            fail(e)
        # One job of a sweep: record it and let the others run; the sweep summary counts
        # the failures and the sweep exits with status 2.
        print(f"{error_line(e)} (job {HydraConfig.get().job.num})", file=sys.stderr, flush=True)
        record_failure(Path(cfg.output_dir), e)
        return float("nan")


def precheck(overrides: list[str]) -> None:
    """Check every value the command line will run (each value of each sweep), so that a
    bad one costs one line and leaves no run directory: the config, and each data config's
    metadata (its classes and tree; no image is read) against the objective."""
    for job in sweep_variants(overrides):
        cfg = compose_config(job)
        check_added_keys(job, cfg)
        check_config(cfg)
        datamodule = build_data(cfg.data)
        check_objective_config(cfg, datamodule.hierarchy, datamodule.views, datamodule.inner_nodes)


def rank_overrides(overrides: list[str]) -> list[str]:
    """What a rank other than 0 of a job that ``srun`` started (one process per task, every
    task the same command) adds to its command line: a log file of its own and no copy of
    Hydra's config files; rank 0 writes the run's outputs."""
    rank = int(os.environ.get("SLURM_PROCID", "0") or 0)
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) <= 1 or rank == 0:
        return []
    return ["hydra.output_subdir=null", f"hydra.job.name=train_rank{rank}"]


def main() -> None:
    @hydra.main(config_path="conf", config_name="train", version_base="1.3")
    def _run(cfg: DictConfig) -> float:
        return run_job(cfg)

    run_checked(precheck, _run, implied=rank_overrides)


if __name__ == "__main__":
    main()

"""Callbacks for objectives trained in stages (``curriculum``, ``supcon``): the stage switch
made before the other callbacks see the epoch, and model selection and early stopping that
act in the last stage only.

A staged objective's earlier stages train something other than the classifier the run ends
with (curriculum's coarse head, SupCon's projections), so a checkpoint chosen there, or a
stop decided there, judges the wrong model: SupCon's probe stage freezes the backbone and
repeats the last contrastive ``val/cpcc``, which a strict improvement never beats, and an
early stop on ``val/acc_fine`` can end curriculum in its coarse stage. ``hierot.train`` uses
these in place of Lightning's ``ModelCheckpoint`` and ``EarlyStopping`` (a ``callbacks``
entry naming Lightning's gets hierot's, with the same arguments). For an objective of one
stage they are Lightning's, but for one thing:

A monitored CPCC can be undefined (``val/cpcc`` of a split with fewer than 3 classes, NaN:
``HierarchyModule.undefined`` says which and why). Lightning's ``ModelCheckpoint`` would keep
such an epoch as the best while it has fewer than ``save_top_k`` (NaN counts as the worst
value only once it is saved), so a run whose ``val/cpcc`` is never defined would test its
first epoch; ``EarlyStopping`` stops the run at the first NaN (``check_finite``). These skip
an epoch whose monitor is undefined: it is neither a candidate for the best checkpoint nor
an epoch without improvement. A run where it is undefined at every epoch has no best
checkpoint and tests its last weights; a line in the log says so. Any other NaN (a diverged
``val/loss``) goes Lightning's way.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

log = logging.getLogger(__name__)


def _in_last_stage(module: L.LightningModule) -> bool:
    return bool(getattr(module, "in_last_stage", True))


def _undefined(callback: ModelCheckpoint | EarlyStopping, trainer: L.Trainer) -> bool:
    """Whether ``callback``'s monitor is undefined at this epoch (the module's
    ``undefined``), counted in the callback's ``undefined_epochs``."""
    monitor = callback.monitor
    undefined = getattr(trainer.lightning_module, "undefined", {})
    if monitor is None or monitor not in undefined:
        return False
    # set on first use: the instance may have been built as Lightning's (``stage_aware``)
    callback.undefined_epochs = getattr(callback, "undefined_epochs", 0) + 1  # type: ignore[union-attr]
    return True


class StageSwitch(L.Callback):
    """Enters a new stage (fresh head where the objective asks, fresh optimizer and
    schedule) at the start of its first epoch, before the callbacks after it: put it first,
    so that a ``LearningRateMonitor`` logs the rate the stage's first step uses."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._update(pl_module)  # a resumed run may start in a stage's first epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._update(pl_module)

    @staticmethod
    def _update(pl_module: L.LightningModule) -> None:
        update = getattr(pl_module, "update_stage", None)
        if update is not None:
            update()


class StageCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose top-k (the best by ``monitor``, or the latest without one)
    is chosen among the last stage's epochs only, none where the monitor is undefined;
    ``last.ckpt`` is saved as usual."""

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        if _in_last_stage(trainer.lightning_module) and not _undefined(self, trainer):
            super()._save_topk_checkpoint(trainer, monitor_candidates)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        skipped = getattr(self, "undefined_epochs", 0)
        if not skipped or not trainer.is_global_zero:
            return
        if self.best_model_path:
            log.warning(
                "%s was undefined at %d validation(s), which the best checkpoint skipped",
                self.monitor, skipped,
            )  # fmt: skip
        else:
            log.warning(
                "%s was undefined at every validation: no best checkpoint, the test uses the "
                "last weights (monitor a metric that is defined, e.g. monitor=val/acc_fine)",
                self.monitor,
            )


class StageEarlyStopping(EarlyStopping):
    """``EarlyStopping`` that judges the last stage's epochs only (its best and patience
    start with the stage), none where the monitor is undefined."""

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        if _in_last_stage(trainer.lightning_module) and not _undefined(self, trainer):
            super()._run_early_stopping_check(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        skipped = getattr(self, "undefined_epochs", 0)
        if skipped and trainer.is_global_zero:
            log.warning("early stopping skipped %d validation(s) where %s was undefined",
                        skipped, self.monitor)  # fmt: skip


# Lightning's callbacks that hierot.train replaces by their stage-aware subclasses.
STAGE_AWARE: dict[type[L.Callback], type[L.Callback]] = {
    ModelCheckpoint: StageCheckpoint,
    EarlyStopping: StageEarlyStopping,
}


def stage_aware(callback: L.Callback) -> L.Callback:
    """``callback`` as its stage-aware subclass when it is exactly Lightning's
    ``ModelCheckpoint`` or ``EarlyStopping`` (same state, same arguments)."""
    cls = STAGE_AWARE.get(type(callback))
    if cls is not None:
        # a subclass whose only state of its own (``undefined_epochs``) is set on first use:
        # the instance is the same
        callback.__class__ = cls
    return callback

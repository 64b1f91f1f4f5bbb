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
stage they are Lightning's.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint


def _in_last_stage(module: L.LightningModule) -> bool:
    return bool(getattr(module, "in_last_stage", True))


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
    is chosen among the last stage's epochs only; ``last.ckpt`` is saved as usual."""

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        if _in_last_stage(trainer.lightning_module):
            super()._save_topk_checkpoint(trainer, monitor_candidates)


class StageEarlyStopping(EarlyStopping):
    """``EarlyStopping`` that judges the last stage's epochs only: its best and patience
    start with the stage."""

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        if _in_last_stage(trainer.lightning_module):
            super()._run_early_stopping_check(trainer)


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
        callback.__class__ = cls  # a subclass adding no state: the instance is the same
    return callback

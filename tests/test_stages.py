"""Staged objectives (``curriculum``, ``supcon``): the stage is saved and resumed, a new
stage starts only at a real transition, model selection and early stopping act in the last
stage only, every stage has an epoch, and the learning rate logged for a stage's first epoch
is the one its steps use. The end-to-end check (SIGKILLs on both sides of a stage boundary,
resumed to bit-equal metrics) is in ``tests/test_faults.py``."""

import csv
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from hierot.config import check_config, compose_config
from hierot.errors import ConfigError
from hierot.models import HierarchyModule
from hierot.models.schedules import cosine
from hierot.stages import StageSwitch

from helpers.trees import TREES

TREE = TREES["3 levels"]  # 12 classes


def loaders(views: int = 1, n: int = 96, batch_size: int = 24):
    """Training and validation loaders of (B, 1, 1, 5) "images" of the 12 classes; with
    ``views`` > 1 the training batches are (B, views, 1, 1, 5)."""
    g = torch.Generator().manual_seed(0)
    # every batch the same samples: a run resumed mid-epoch sees what the uninterrupted
    # run saw, though a plain DataLoader restarts the epoch's order
    x = torch.randn(batch_size, 1, 1, 5, generator=g).repeat(n // batch_size, 1, 1, 1)
    y = torch.arange(12).repeat(n // 12)
    shown = x if views == 1 else torch.stack([x + 0.1 * v for v in range(views)], 1)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(shown, y), batch_size)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size)
    return train, val


def model(objective: str, seed: int = 0, **options) -> HierarchyModule:
    torch.manual_seed(seed)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5, 4))
    backbone.num_features = 4
    sgd = partial(torch.optim.SGD, lr=0.1, momentum=0.9)
    return HierarchyModule(backbone, TREE, sgd, scheduler=partial(cosine, warmup=0.0), dist="l2",
                           objective=objective, objective_options=options)  # fmt: skip


def trainer(epochs: int, callbacks=(), **kwargs) -> L.Trainer:
    kwargs = {"logger": False, "enable_checkpointing": False, **kwargs}
    return L.Trainer(max_epochs=epochs, callbacks=list(callbacks), enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, **kwargs)  # fmt: skip


class Watch(L.Callback):
    """Each training batch's head weights (before the step), optimizer and objective mode;
    saves a checkpoint after the batches named in ``save``."""

    def __init__(self, save: dict[tuple[int, int], str] | None = None):
        self.seen: dict[tuple[int, int], dict] = {}
        self.save = save or {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        optimizer = trainer.optimizers[0]
        self.seen[trainer.current_epoch, batch_idx] = {
            "head": module.head.weight.detach().clone(),
            "optimizer": id(optimizer),
            "state": len(optimizer.state),
            "lr": optimizer.param_groups[0]["lr"],
            "coarse": module.objective.coarse,
        }

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        path = self.save.get((trainer.current_epoch, batch_idx))
        if path is not None:
            trainer.save_checkpoint(path)


def test_a_run_resumed_inside_a_stage_keeps_its_head_and_optimizer(tmp_path):
    """Curriculum (coarse 1 epoch, fine 2), resumed from a checkpoint taken in the middle
    of the fine stage's first epoch: the next epoch neither re-initialises the fine head nor
    builds a new optimizer, as in the uninterrupted run."""
    train, _ = loaders()
    ckpt = str(tmp_path / "mid.ckpt")
    watch = Watch({(1, 1): ckpt})
    trainer(3, [watch], limit_val_batches=0).fit(model("curriculum", coarse_fraction=0.34), train)
    assert torch.load(ckpt, weights_only=True)["hierot_stage"] == 1
    resumed = Watch()
    again = model("curriculum", seed=1, coarse_fraction=0.34)  # other weights, restored
    trainer(3, [resumed], limit_val_batches=0).fit(again, train, ckpt_path=ckpt)
    first = min(resumed.seen)
    assert not resumed.seen[first]["coarse"]
    # the fine head continues from the step before (no reset at the next epoch's start) ...
    assert resumed.seen[2, 0]["optimizer"] == resumed.seen[first]["optimizer"]
    assert resumed.seen[2, 0]["state"] > 0
    # ... and the resumed epochs use the uninterrupted run's learning rates
    assert resumed.seen[2, 0]["lr"] == pytest.approx(watch.seen[2, 0]["lr"], rel=1e-12)
    torch.testing.assert_close(resumed.seen[2, 0]["head"], watch.seen[2, 0]["head"])


def test_a_run_resumed_before_a_stage_starts_it_as_the_uninterrupted_run(tmp_path):
    """Resumed from the coarse stage's end, the run re-initialises the fine head to the
    very weights the uninterrupted run drew (a generator of the objective's own, saved in
    the checkpoint, not the global one, which a resumed process reaches in another state)."""
    train, _ = loaders()
    ckpt = str(tmp_path / "coarse.ckpt")
    watch = Watch({(0, 3): ckpt})  # the coarse epoch's last batch
    trainer(3, [watch], limit_val_batches=0).fit(model("curriculum", coarse_fraction=0.34), train)
    assert torch.load(ckpt, weights_only=True)["hierot_stage"] == 0
    resumed = Watch()
    torch.manual_seed(123)  # the resumed process's global generator is elsewhere
    again = model("curriculum", seed=1, coarse_fraction=0.34)
    trainer(3, [resumed], limit_val_batches=0).fit(again, train, ckpt_path=ckpt)
    assert resumed.seen[1, 0]["state"] == 0 and not resumed.seen[1, 0]["coarse"]  # fresh stage
    torch.testing.assert_close(resumed.seen[1, 0]["head"], watch.seen[1, 0]["head"])
    assert not torch.equal(watch.seen[1, 0]["head"], watch.seen[0, 3]["head"])  # a new head


def test_model_selection_acts_in_the_last_stage_only(tmp_path):
    """SupCon's probe stage freezes the backbone, so ``val/cpcc`` repeats the last
    contrastive epoch's value: a strict improvement never moves Lightning's best into the
    probe. hierot's checkpoint selects from the last stage only."""
    from hierot.stages import StageCheckpoint

    train, val = loaders(views=2)
    checkpoint = StageCheckpoint(dirpath=tmp_path, filename="best-{epoch}", monitor="val/cpcc",
                                 mode="max", save_top_k=1)  # fmt: skip
    run = trainer(5, [checkpoint], enable_checkpointing=True)
    run.fit(model("supcon"), train, val)  # stages: contrastive 4 epochs, probe 1
    assert checkpoint.best_model_path.endswith("best-epoch=4.ckpt")
    assert torch.load(checkpoint.best_model_path, weights_only=True)["hierot_stage"] == 1


def test_early_stopping_acts_in_the_last_stage_only():
    """Patience 0 and an improvement no epoch can reach: Lightning's early stopping would end
    curriculum in its coarse stage; hierot's waits for the fine stage, its best set there."""
    from hierot.stages import StageEarlyStopping

    train, val = loaders()
    stop = StageEarlyStopping(monitor="val/acc_fine", mode="max", patience=0, min_delta=2.0)
    run = trainer(6, [stop])
    fitted = model("curriculum", coarse_fraction=0.5)  # coarse epochs 0-2, fine 3-5
    run.fit(fitted, train, val)
    assert run.current_epoch == 5 and not fitted.objective.coarse  # stopped after epoch 4
    assert stop.stopped_epoch == 4


def test_the_callbacks_group_selects_and_stops_by_stage(tmp_path):
    from hierot.stages import StageCheckpoint, StageEarlyStopping
    from hierot.train import build_callbacks

    cfg = compose_config(["+callbacks.early_stopping._target_="
                          "lightning.pytorch.callbacks.EarlyStopping",
                          "+callbacks.early_stopping.monitor=val/loss"])  # fmt: skip
    cfg.output_dir = str(tmp_path)
    callbacks = build_callbacks(cfg, validates=True, logged=True, logs={"val/loss", cfg.monitor})
    kinds = {type(c) for c in callbacks}
    assert {StageCheckpoint, StageEarlyStopping} <= kinds
    assert ModelCheckpoint not in kinds and EarlyStopping not in kinds


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["objective=supcon", "trainer.max_epochs=3"],
         "trainer.max_epochs=3: objective supcon's probe stage gets 0 epochs (contrastive 3, "
         "probe 0); raise trainer.max_epochs or change objective.options"),
        (["objective=curriculum", "trainer.max_epochs=4"],
         "objective curriculum's coarse stage gets 0 epochs (coarse 0, fine 4)"),
        (["objective=curriculum", "trainer.max_epochs=-1", "trainer.max_steps=100"],
         "objective curriculum counts its stages (coarse, fine) in epochs: set "
         "trainer.max_epochs, and trainer.max_steps=-1"),
        (["objective=supcon", "trainer.max_epochs=10", "trainer.max_steps=100"],
         "trainer.max_steps=100: objective supcon counts its stages"),
    ],
)  # fmt: skip
def test_a_stage_without_an_epoch_is_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        check_config(compose_config(overrides))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_step_based_training_of_one_stage_objectives_is_still_allowed():
    check_config(compose_config(["trainer.max_epochs=-1", "trainer.max_steps=100"]))
    check_config(compose_config(["objective=supcon", "trainer.max_epochs=5"]))


def test_the_learning_rate_logged_for_a_stage_is_the_one_its_first_step_uses(tmp_path):
    train, _ = loaders(views=2)

    class Rates(L.Callback):
        def __init__(self):
            self.seen: dict[tuple[int, int], float] = {}

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            self.seen[trainer.current_epoch, batch_idx] = lr

    watch = Rates()
    logger = CSVLogger(tmp_path, name="", version="")
    # hierot.train puts StageSwitch first: the monitor then reads the new stage's optimizer
    callbacks = [StageSwitch(), LearningRateMonitor(logging_interval="epoch"), watch]
    run = trainer(5, callbacks, logger=logger, limit_val_batches=0)
    run.fit(model("supcon", lr_scale=0.01), train)
    with open(tmp_path / "metrics.csv", newline="") as f:
        logged = [float(r["lr-SGD"]) for r in csv.DictReader(f) if r.get("lr-SGD")]
    used = [watch.seen[epoch, 0] for epoch in range(5)]
    assert used[4] == pytest.approx(0.1) and used[0] == pytest.approx(0.001)
    assert logged == pytest.approx(used, rel=1e-9)

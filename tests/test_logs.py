"""What a run's console and log say, in-process: the data line counts the training images the
run uses, the legend of the per-epoch lines, Lightning's checkpoint-folder warning on a
resume."""

import logging
import warnings
from types import SimpleNamespace

import lightning as L
import pytest
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

from hierot.config import build, compose_config
from hierot.logs import EpochLog, quiet_resume, train_images


def trainer_with(batches: float, limit: float = 1.0, fast_dev_run: bool = False, **extra):
    """What the log reads of a trainer once Lightning has counted the training batches."""
    return SimpleNamespace(
        num_training_batches=batches, limit_train_batches=limit, fast_dev_run=fast_dev_run,
        is_global_zero=True, **extra,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("batches", "limit", "fast", "shown"),
    [
        (75, 1.0, False, "9600 train"),  # the default run: every image
        (10, 10, False, "1280 of 9600 train (trainer.limit_train_batches=10)"),
        (1, 1, False, "128 of 9600 train (trainer.limit_train_batches=1)"),  # int 1: a batch
        (37, 0.5, False, "4736 of 9600 train (trainer.limit_train_batches=0.5)"),
        (75, 200, False, "9600 train"),  # a limit above the epoch's batches
        (1, 1.0, True, "128 of 9600 train (trainer.fast_dev_run)"),
    ],
)
def test_the_data_line_counts_the_training_images_the_run_uses(batches, limit, fast, shown):
    assert train_images(trainer_with(batches, limit, fast), 9600, 128) == shown


def test_the_run_header_and_the_legend_of_the_epoch_lines(caplog):
    data = build(compose_config(["debug=tiny"]).data, "data")
    data.setup("fit")
    trainer = trainer_with(2, 2, datamodule=data, callbacks=[LearningRateMonitor()])
    with caplog.at_level(logging.INFO, logger="hierot.logs"):
        EpochLog().on_train_start(trainer, None)
    assert [r.getMessage() for r in caplog.records] == [
        "data: 64 of 96 train (trainer.limit_train_batches=2) / 48 val images; 24 classes on "
        "a tree of 3 levels",
        "each epoch's line: train/* are means over its batches, val/* its validation, lr-* "
        "the learning rate at its start",
    ]


def test_a_resume_is_quiet_about_its_own_checkpoint_folder_only(tmp_path):
    folders = [tmp_path / "resumed", tmp_path / "fresh"]
    callbacks = [ModelCheckpoint(dirpath=folder) for folder in folders]
    for folder in folders:
        folder.mkdir()
        (folder / "last.ckpt").write_bytes(b"")
    resumed = L.Trainer(callbacks=[callbacks[0]], logger=False, default_root_dir=tmp_path)

    def warned(callback: ModelCheckpoint) -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_resume(resumed)
            callback._ModelCheckpoint__warn_if_dir_not_empty(callback.dirpath)
        return sum("exists and is not empty" in str(w.message) for w in caught)

    assert [warned(c) for c in callbacks] == [0, 1]

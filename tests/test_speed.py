"""The speed switches (``hierot.speed``): what ``auto`` chooses per device, and that each
switch trains the same model."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from hierot.config import build, compose_config
from hierot.hierarchy import Hierarchy
from hierot.speed import Speed, apply_speed, decide


def test_auto_turns_the_switches_on_for_cuda_and_off_on_a_cpu():
    auto = {"compile": "auto", "channels_last": "auto", "matmul_precision": "auto"}
    assert decide(auto, torch.device("cpu")) == Speed(False, False, None)
    assert decide(auto, torch.device("cuda", 0)) == Speed(True, True, "high")
    chosen = {"compile": True, "channels_last": False, "matmul_precision": "medium"}
    assert decide(chosen, torch.device("cpu")) == Speed(True, False, "medium")
    assert decide(chosen, torch.device("cuda")) == Speed(True, False, "medium")


def module(**speed: object) -> L.LightningModule:
    cfg = compose_config([])
    tree = Hierarchy.from_nested({"a": ["c0", "c1"], "b": ["c2", "c3"]})
    torch.manual_seed(0)
    model = build(cfg.model, "model")(
        backbone=build(cfg.backbone, "backbone"),
        hierarchy=tree,
        optimizer=build(cfg.optimizer, "optimizer"),
    )
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    apply_speed({"compile": False, "channels_last": False, **speed}, model, trainer)
    return model


@pytest.mark.slow
def test_channels_last_trains_the_same_step():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 32, 32, generator=g), torch.arange(16) % 4
    grads = []
    for channels_last in (False, True):
        model = module(channels_last=channels_last)
        z, logits = model(x)
        loss, _, _ = model._losses(z, logits, y)
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        layout = model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        assert layout == channels_last and model.channels_last == channels_last
    for eager, nhwc in zip(*grads, strict=True):
        torch.testing.assert_close(nhwc, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_compiled_backbone_learns_as_the_eager_one_and_compiles_once_per_mode(tmp_path):
    """30 training steps of the embedded data, whose batches hold between 13 and 24 of its
    classes (so CPCC sees another shape every step), and a validation after each of two
    epochs: the compiled backbone's graphs are made in the first epoch (training and
    evaluation mode) and none in the second; its losses follow the eager run's (each step
    within 2 % over the first six, before float rounding has compounded: by the tenth
    step they differ by up to 3 %)."""
    from torch._dynamo.utils import counters

    from hierot.train import build_run

    from helpers.steps import QUICK

    class Record(L.Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []
            self.graphs: list[int] = []

        def on_train_batch_end(self, trainer, module, outputs, *args) -> None:
            self.losses.append(float(outputs["loss"]))

        def on_train_epoch_end(self, trainer, module) -> None:
            self.graphs.append(counters["stats"]["unique_graphs"])

    runs = {}
    for compiled in (False, True):
        cfg = compose_config(
            [*QUICK, "trainer.max_epochs=2", "trainer.limit_val_batches=1", "seed=0",
             f"speed.compile={str(compiled).lower()}"]
        )  # fmt: skip
        cfg.output_dir = str(tmp_path / str(compiled))
        L.seed_everything(0, verbose=False)
        datamodule, model, trainer = build_run(cfg)
        runs[compiled] = record = Record()
        trainer.callbacks.append(record)
        trainer.fit(model, datamodule=datamodule)
    graphs = runs[True].graphs
    assert graphs[0] >= 1 and graphs[1] == graphs[0], graphs
    eager, compiled = runs[False].losses[:6], runs[True].losses[:6]
    assert compiled == pytest.approx(eager, rel=0.02)

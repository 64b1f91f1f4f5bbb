"""``HierarchyModule`` under Lightning DDP on CPU processes (gloo); ``test_ddp.py`` compares
what each rank saves with one process.

``python tests/ddp_worker.py OUT DIST``: one SGD step of the default objective with the CPCC
of ``DIST`` on 2 processes. Each rank saves its batch, the CPCC it computed and the
parameters after the step to ``OUT/rank<r>.pt``.

``python tests/ddp_worker.py OUT objective CASE``: one step on 2 processes of ``CASE``, an
objective with a batch-wide term (``OBJECTIVE_CASES``); each rank saves its batch, its loss
and the parameters' gradients after DDP's averaging.

``python tests/ddp_worker.py OUT stages OBJECTIVE``: 5 epochs of one step on 2 processes,
across the stages of ``OBJECTIVE``; each rank saves its parameters.

``python tests/ddp_worker.py OUT eval DEVICES``: a data module with odd validation and test
splits (``EVAL_SIZE``), a step at learning rate 0 (the weights stay), its validation and a
test, on ``DEVICES`` processes; rank 0 saves the logged validation and test metrics.

``python tests/ddp_worker.py OUT inner CASE``: one SGD step on 2 processes of the data module
with ``COARSE`` of its training labels moved to their parents (``data.coarse_fraction``), the
whole training set one global batch, an objective and the CPCC taking labels at inner
nodes (``INNER_CASES``); each rank saves its batch, loss, CPCC and parameters after the step.

Lightning re-runs this script for rank 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hierot.data.module import HierarchyDataModule
from hierot.hierarchy import Hierarchy
from hierot.models import HierarchyModule

RANKS = 2
PER_RANK = 9
TREE = {"a": {"a1": ["c0", "c1"], "a2": ["c2", "c3"]}, "b": {"b1": ["c4", "c5"], "b2": ["c6"]}}
# Objectives whose loss has a term over pairs or groups of samples: (objective, its options,
# the centring weight, views of every image).
OBJECTIVE_CASES: dict[str, tuple[str, dict[str, object], float, int]] = {
    "supcon": ("supcon", {}, 0.0, 2),
    "quadruplet": ("quadruplet", {"lambda_s": 0.5}, 0.0, 1),
    "center": ("ce", {}, 1.0, 1),
}
# The size of the validation and test splits: odd, so 2 processes cannot split them evenly.
EVAL_SIZE = 9
# The fraction of the training labels moved to an inner node, and the objectives and CPCC
# points trained on them: (objective, cpcc_nodes).
COARSE = 0.5
INNER_CASES: dict[str, tuple[str, str]] = {
    "mtl all": ("mtl", "all"),
    "hxe leaves": ("hxe", "leaves"),
}


class TinyBackbone(nn.Module):
    """No batch norm: its statistics would differ between one and two processes."""

    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_model(
    dist: str,
    objective: str = "ce",
    options: dict[str, object] | None = None,
    center: float = 0.0,
    lr: float = 1.0,
    cpcc_nodes: str = "leaves",
) -> HierarchyModule:
    torch.manual_seed(0)
    return HierarchyModule(
        backbone=TinyBackbone(),
        hierarchy=Hierarchy.from_nested(TREE),
        optimizer=lambda params: torch.optim.SGD(params, lr=lr),
        dist=dist,
        lam=1.0,
        objective=objective,
        objective_options=options,
        center=center,
        cpcc_nodes=cpcc_nodes,
    )


def make_data(views: int = 1, n: int = RANKS * PER_RANK, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 3, 2, 2) if views == 1 else (n, views, 3, 2, 2)
    x = torch.randn(*shape, generator=g)
    y = torch.arange(n) % 7
    return x, y


def trainer(devices: int, callback: L.Callback, **options: object) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        **options,  # type: ignore[arg-type]
    )


class Record(L.Callback):
    """Saves a rank's last step; with ``stop`` fit ends after the first step."""

    def __init__(self, out: Path, stop: bool = False) -> None:
        self.out, self.stop = out, stop
        self.state: dict[str, object] = {}

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        # after the backward pass and DDP's averaging of the gradients
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        self.state["grads"] = grads

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if "train/cpcc" in trainer.callback_metrics:
            self.state["cpcc"] = float(trainer.callback_metrics["train/cpcc"])
        self.state["loss"] = float(outputs["loss"].detach())
        self.state["batch"] = [t.clone() for t in batch]
        trainer.should_stop = trainer.should_stop or self.stop

    def on_train_end(self, trainer, module) -> None:
        self.state["params"] = {k: v.detach().clone() for k, v in module.state_dict().items()}
        torch.save(self.state, self.out / f"rank{trainer.global_rank}.pt")


def step(out: Path, dist: str) -> None:
    x, y = make_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=PER_RANK, shuffle=False)
    run = trainer(RANKS, Record(out), max_steps=1, limit_val_batches=0)
    run.fit(make_model(dist), train_dataloaders=loader)


def objective_step(out: Path, case: str) -> None:
    objective, options, center, views = OBJECTIVE_CASES[case]
    x, y = make_data(views)
    loader = DataLoader(TensorDataset(x, y), batch_size=PER_RANK, shuffle=False)
    # stages count epochs: supcon's contrastive stage has 4 of these 5, its probe 1
    run = trainer(RANKS, Record(out, stop=True), max_epochs=5, limit_val_batches=0)
    run.fit(make_model("none", objective, options, center), train_dataloaders=loader)


def stages(out: Path, objective: str) -> None:
    """5 epochs of one step each, across the objective's stage boundary."""
    views = 2 if objective == "supcon" else 1
    x, y = make_data(views)
    loader = DataLoader(TensorDataset(x, y), batch_size=PER_RANK, shuffle=False)
    run = trainer(RANKS, Record(out), max_epochs=5, limit_train_batches=1, limit_val_batches=0)
    run.fit(make_model("none", objective, lr=0.1), train_dataloaders=loader)


class TinyData(HierarchyDataModule):
    """The tree above, 18 training images and ``EVAL_SIZE`` validation and test images;
    ``options``: ``HierarchyDataModule``'s (the batch size, ``coarse_fraction``, ...)."""

    def __init__(self, **options: object) -> None:
        super().__init__(**{"batch_size": 4, "num_workers": 0, **options})  # type: ignore[arg-type]

    def read_metadata(self) -> Hierarchy:
        return Hierarchy.from_nested(TREE)

    def setup(self, stage: str | None = None) -> None:
        self.train_set = TensorDataset(*make_data())
        self.val_set = TensorDataset(*make_data(n=EVAL_SIZE, seed=2))
        self.test_set = TensorDataset(*make_data(n=EVAL_SIZE, seed=3))


class RecordMetrics(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out
        self.metrics: dict[str, float] = {}

    def _keep(self, trainer: L.Trainer, split: str) -> None:
        for key, value in trainer.callback_metrics.items():
            if key.startswith(f"{split}/"):
                self.metrics[key] = float(value)

    def on_validation_end(self, trainer, module) -> None:
        self._keep(trainer, "val")

    def on_test_end(self, trainer, module) -> None:
        self._keep(trainer, "test")
        if trainer.global_rank == 0:
            torch.save(self.metrics, self.out / f"eval{trainer.world_size}.pt")


def evaluate(out: Path, devices: int) -> None:
    data, record = TinyData(), RecordMetrics(out)
    model = make_model("l2", lr=0.0)
    # one training step at rate 0, then its validation: the fit's path through DDP's forward
    run = trainer(devices, record, max_epochs=1, limit_train_batches=1, num_sanity_val_steps=0)
    run.fit(model, datamodule=data)
    run.test(model, datamodule=data, verbose=False)


def inner_model(case: str, data: HierarchyDataModule) -> HierarchyModule:
    """The model of ``case`` switched to the inner labels ``data`` holds."""
    objective, cpcc_nodes = INNER_CASES[case]
    model = make_model("l2", objective, cpcc_nodes=cpcc_nodes)
    model.use_inner_labels(data.hierarchy, data.inner_nodes)
    return model


def inner_step(out: Path, case: str) -> None:
    data = TinyData(batch_size=RANKS * PER_RANK, coarse_fraction=COARSE)
    run = trainer(RANKS, Record(out), max_steps=1, limit_val_batches=0)
    run.fit(inner_model(case, data), datamodule=data)


if __name__ == "__main__":
    if sys.argv[2] == "objective":
        objective_step(Path(sys.argv[1]), sys.argv[3])
    elif sys.argv[2] == "stages":
        stages(Path(sys.argv[1]), sys.argv[3])
    elif sys.argv[2] == "eval":
        evaluate(Path(sys.argv[1]), int(sys.argv[3]))
    elif sys.argv[2] == "inner":
        inner_step(Path(sys.argv[1]), sys.argv[3])
    else:
        step(Path(sys.argv[1]), sys.argv[2])

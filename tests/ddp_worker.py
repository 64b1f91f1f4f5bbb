"""One SGD step of ``HierarchyModule`` under Lightning DDP on 2 CPU processes (gloo).

``python tests/ddp_worker.py OUT DIST``: Lightning re-runs this script for rank 1. Each rank
saves its batch, the CPCC it computed and the parameters after the step to ``OUT/rank<r>.pt``;
``test_ddp.py`` compares them with one process on the concatenated batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hierot.hierarchy import Hierarchy
from hierot.models import HierarchyModule

RANKS = 2
PER_RANK = 9
TREE = {"a": {"a1": ["c0", "c1"], "a2": ["c2", "c3"]}, "b": {"b1": ["c4", "c5"], "b2": ["c6"]}}


class TinyBackbone(nn.Module):
    """No batch norm: its statistics would differ between one and two processes."""

    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_model(dist: str) -> HierarchyModule:
    torch.manual_seed(0)
    return HierarchyModule(
        backbone=TinyBackbone(),
        hierarchy=Hierarchy.from_nested(TREE),
        optimizer=lambda params: torch.optim.SGD(params, lr=1.0),
        dist=dist,
        lam=1.0,
    )


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(RANKS * PER_RANK, 3, 2, 2, generator=g)
    y = torch.arange(RANKS * PER_RANK) % 7
    return x, y


class Record(__import__("lightning").Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.cpcc = float(trainer.callback_metrics["train/cpcc"])
        self.batch = [t.clone() for t in batch]

    def on_train_end(self, trainer, module) -> None:
        params = {k: v.detach().clone() for k, v in module.state_dict().items()}
        state = {"cpcc": self.cpcc, "batch": self.batch, "params": params}
        torch.save(state, self.out / f"rank{trainer.global_rank}.pt")


def main(out: Path, dist: str) -> None:
    import lightning as L

    x, y = make_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=PER_RANK, shuffle=False)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=RANKS,
        strategy="ddp",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record(out)],
    )
    trainer.fit(make_model(dist), train_dataloaders=loader)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])

"""``curriculum``: coarse labels first, then the classes (HierarchyCPCC's
``curriculum_pretrain``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hierot.errors import require_integer, require_number
from hierot.hierarchy import Hierarchy
from hierot.objectives.registry import Objective, register_objective


def check_curriculum(
    hierarchy: Hierarchy | None, coarse_fraction: float, level: int | None
) -> None:
    if require_number(coarse_fraction, "curriculum: coarse_fraction", 0) >= 1:
        raise ValueError(f"curriculum: coarse_fraction must be below 1, got {coarse_fraction}")
    if level is not None:
        require_integer(level, "curriculum: level", 1)
        if hierarchy is not None and level >= hierarchy.depth:
            raise ValueError(
                f"curriculum: level {level} is not above the classes (the tree's levels are "
                f"1 .. {hierarchy.depth}, the classes at {hierarchy.depth})"
            )
    elif hierarchy is not None and hierarchy.depth < 2:
        raise ValueError("curriculum: the tree has no level above the classes")


@register_objective("curriculum", check=check_curriculum)
class Curriculum(Objective):
    """Two stages. First ``int(coarse_fraction * max_epochs)`` epochs: cross-entropy of a
    head of its own on the concepts at ``level``, without CPCC. Then a freshly initialised
    fine head, a fresh optimizer and schedule, and cross-entropy on the classes (+ CPCC) for
    the remaining epochs.

    HierarchyCPCC trains E' = int(1.25 E) epochs in all for a recipe of E (1.2 E on
    living17 and nonliving26), its stage 1 int(0.2 E'): set ``trainer.max_epochs`` to E'.

    Args:
        coarse_fraction: the first stage's share of the epochs (HierarchyCPCC: 0.2).
        level: the coarse level (1 is the top); None for the level just above the classes.
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        num_features: int,
        coarse_fraction: float = 0.2,
        level: int | None = None,
    ) -> None:
        super().__init__()
        check_curriculum(hierarchy, coarse_fraction, level)
        self.coarse_fraction = float(coarse_fraction)
        lvl = hierarchy.depth - 1 if level is None else level
        names, fine_to_level = hierarchy.level_map(lvl)
        self.register_buffer("fine_to_level", fine_to_level, persistent=False)
        self.coarse_head = nn.Linear(num_features, len(names))
        self.coarse = False

    def stage_epochs(self, max_epochs: int) -> list[int]:
        first = int(self.coarse_fraction * max_epochs)
        return [first, max_epochs - first]

    def enter_stage(self, stage: int, module: nn.Module) -> None:
        self.coarse = stage == 0
        self.regularized = not self.coarse
        if stage == 1:
            module.head.reset_parameters()

    def forward(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.coarse:
            return F.cross_entropy(self.coarse_head(z), self.fine_to_level[y])
        return F.cross_entropy(logits, y)

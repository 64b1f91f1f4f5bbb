"""``curriculum``: coarse labels first, then the classes (HierarchyCPCC's
``curriculum_pretrain``)."""

from __future__ import annotations

from collections.abc import Mapping

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

    The fresh fine head is drawn from a generator seeded by ``init_seed``, a seed drawn from
    torch's global generator when the objective is built and saved with the model: a run
    resumed before the fine stage draws the same head as the uninterrupted run, whatever
    state its process's global generator is in.

    HierarchyCPCC trains E' = int(1.25 E) epochs in all for a recipe of E (1.2 E on
    living17 and nonliving26), its stage 1 int(0.2 E'): set ``trainer.max_epochs`` to E'.

    Args:
        coarse_fraction: the first stage's share of the epochs (HierarchyCPCC: 0.2).
        level: the coarse level (1 is the top); None for the level just above the classes.
    """

    stage_names = ("coarse", "fine")
    # each stage leaves the other's head unused
    unused_parameters = True

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
        self.register_buffer("init_seed", torch.empty((), dtype=torch.int64).random_())
        self.coarse = False

    @classmethod
    def plan_stages(cls, max_epochs: int, options: Mapping[str, object]) -> list[int]:
        first = int(float(options["coarse_fraction"]) * max_epochs)  # type: ignore[arg-type]
        return [first, max_epochs - first]

    def stage_epochs(self, max_epochs: int) -> list[int]:
        return self.plan_stages(max_epochs, {"coarse_fraction": self.coarse_fraction})

    def set_stage(self, stage: int) -> None:
        self.coarse = stage == 0
        self.regularized = not self.coarse

    def enter_stage(self, stage: int, module: nn.Module) -> None:
        if stage != 1:
            return
        head = module.head
        # One value read at the transition; nn.Linear's own initialisation, on the CPU.
        seed = int(self.init_seed) + stage
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None)
        with torch.no_grad():
            head.weight.copy_(fresh.weight)
            if head.bias is not None:
                head.bias.copy_(fresh.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints made before the seed was saved: keep this objective's own.
        state_dict.setdefault(prefix + "init_seed", self.init_seed.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.coarse:
            return F.cross_entropy(self.coarse_head(z), self.fine_to_level[y])
        return F.cross_entropy(logits, y)

"""Learning-rate schedules stepped every optimizer step, sized by the run's total steps.

Each is ``fn(optimizer, total_steps, **options) -> LRScheduler``; configs give the options
with ``_partial_: true`` and the module supplies the optimizer and the step count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from hierot.errors import ConfigError


def _warmup_steps(total_steps: int, warmup: float) -> int:
    if not 0 <= warmup < 1:
        raise ConfigError(f"scheduler.warmup must be a fraction in [0, 1), got {warmup}")
    return int(warmup * total_steps)


def cosine(optimizer: Optimizer, total_steps: int, warmup: float = 0.05) -> LRScheduler:
    """Linear warm-up over ``warmup`` of the steps, then cosine decay to 0."""
    warm = _warmup_steps(total_steps, warmup)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return LambdaLR(optimizer, factor)


def step(
    optimizer: Optimizer,
    total_steps: int,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
    warmup: float = 0.0,
) -> LRScheduler:
    """Multiply the rate by ``gamma`` at each milestone (fractions of the run)."""
    if any(not 0 < m < 1 for m in milestones):
        raise ConfigError(f"scheduler.milestones must be fractions in (0, 1), got {milestones}")
    warm = _warmup_steps(total_steps, warmup)
    # rounded: a milestone of 1/3 (a step every third of the run) lands on its step exactly
    at = sorted(round(m * total_steps) for m in milestones)

    def factor(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return gamma ** sum(s >= m for m in at)

    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer, total_steps: int, warmup: float = 0.0) -> LRScheduler:
    """The optimizer's rate throughout (after an optional warm-up)."""
    warm = _warmup_steps(total_steps, warmup)
    return LambdaLR(optimizer, lambda s: (s + 1) / warm if s < warm else 1.0)

"""``supcon``: supervised contrastive learning on two augmented views through a projection
head (Khosla et al. 2020; HypStructure's base loss), then a linear probe on the frozen
features, so that the run ends with a classifier like the others."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from hierot.errors import require_integer, require_number
from hierot.hierarchy import Hierarchy
from hierot.objectives.registry import Objective, register_objective


def check_supcon(
    hierarchy: Hierarchy | None,
    temperature: float,
    base_temperature: float,
    projection: int,
    probe_fraction: float,
    lr_scale: float,
) -> None:
    if not require_number(lr_scale, "supcon: lr_scale", 0) > 0:
        raise ValueError("supcon: lr_scale must be > 0, got 0")
    if not require_number(temperature, "supcon: temperature", 0) > 0:
        raise ValueError("supcon: temperature must be > 0, got 0")
    if not require_number(base_temperature, "supcon: base_temperature", 0) > 0:
        raise ValueError("supcon: base_temperature must be > 0, got 0")
    require_integer(projection, "supcon: projection", 1)
    if require_number(probe_fraction, "supcon: probe_fraction", 0) >= 1:
        raise ValueError(f"supcon: probe_fraction must be below 1, got {probe_fraction}")


def supcon_loss(
    features: torch.Tensor, labels: torch.Tensor, temperature: float, base_temperature: float
) -> torch.Tensor:
    """SupContrast's ``SupConLoss`` (contrast_mode ``all``) on every row as an anchor.

    Args:
        features: (N, p) L2-normalised projections, every view of every image one row.
        labels: (N,) class ids; rows of one class (other views included) are positives.
    Returns:
        ``-(T / T_base) * mean over anchors of the mean log-probability of its positives``,
        the softmax over all other rows at temperature T; an anchor without a positive
        counts 0 (the reference divides by zero there).
    """
    n = labels.numel()
    logits = features @ features.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    self_mask = torch.eye(n, dtype=torch.bool, device=features.device)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    log_prob = logits - torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), 1, True)
    count = positives.sum(1)
    mean_pos = (log_prob * positives).sum(1) / count.clamp_min(1)
    return -(temperature / base_temperature) * mean_pos.mean()


@register_objective("supcon", check=check_supcon)
class SupCon(Objective):
    """Two stages. First ``1 - probe_fraction`` of the epochs: the supervised contrastive
    loss of ``normalize(projection(z))`` over every view (CPCC, if on, on the first view's
    backbone features, as HypStructure). Then the backbone is frozen (eval mode, no
    gradient) and the linear head trains with cross-entropy, with a fresh optimizer and
    schedule, for the rest: the test accuracy and TestCPCC are those of this classifier and
    these features. Under DDP the contrastive loss is over the global batch's pairs (every
    process's views, gathered), the probe's cross-entropy over each process's share.

    Needs ``data.views >= 2`` (``objective=supcon`` sets 2). The projection head is
    SupContrast's: Linear(d, d), ReLU, Linear(d, ``projection``).

    Args:
        temperature: the softmax temperature (HypStructure: 0.1).
        base_temperature: the loss is scaled by temperature / base_temperature (0.07).
        projection: the projection's output size (128).
        probe_fraction: the linear probe's share of the epochs.
        lr_scale: the contrastive stage's learning rate is ``optimizer.lr`` times this (the
            probe's is ``optimizer.lr``). From scratch with SGD at the default lr 0.1 the
            projections collapse to one point within a few steps (the loss stays at
            ``log(2B - 1) T / T_base``, 7.92 at B = 128); at 0.001 they separate
            (``tests/test_objectives.py``).
    """

    views = 2
    # the contrastive stage leaves the head unused, the probe the backbone and projection
    unused_parameters = True
    # the contrastive stage's pairs span the global batch under DDP; the probe's
    # cross-entropy is per sample
    batch_wide = True
    stage_names = ("contrastive", "probe")

    def __init__(
        self,
        hierarchy: Hierarchy,
        num_features: int,
        temperature: float = 0.1,
        base_temperature: float = 0.07,
        projection: int = 128,
        probe_fraction: float = 0.2,
        lr_scale: float = 0.01,
    ) -> None:
        super().__init__()
        check_supcon(hierarchy, temperature, base_temperature, projection, probe_fraction, lr_scale)
        self.contrastive_lr_scale = float(lr_scale)
        self.temperature, self.base_temperature = float(temperature), float(base_temperature)
        self.probe_fraction = float(probe_fraction)
        self.projection = nn.Sequential(
            nn.Linear(num_features, num_features),
            nn.ReLU(inplace=True),
            nn.Linear(num_features, projection),
        )
        self.probing = False

    @classmethod
    def plan_stages(cls, max_epochs: int, options: Mapping[str, object]) -> list[int]:
        probe = int(float(options["probe_fraction"]) * max_epochs)  # type: ignore[arg-type]
        return [max_epochs - probe, probe]

    def stage_epochs(self, max_epochs: int) -> list[int]:
        return self.plan_stages(max_epochs, {"probe_fraction": self.probe_fraction})

    def set_stage(self, stage: int) -> None:
        self.probing = stage == 1
        self.regularized = self.trains_backbone = self.batch_wide = not self.probing

    def lr_scale(self, stage: int) -> float:
        return 1.0 if stage == 1 else self.contrastive_lr_scale

    def sample_loss(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.probing:
            return F.cross_entropy(logits, y)
        return logits.new_zeros(())

    def batch_loss(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        features = F.normalize(self.projection(z), dim=1)
        return supcon_loss(features, y, self.temperature, self.base_temperature)

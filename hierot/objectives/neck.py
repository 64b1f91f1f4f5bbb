"""The neck that HAF's and Flamingo's reference models put between the backbone's pooled
features and their level heads (07Agarg/HAF ``util/arch/custom_resnet18.py``, PRIS-CV/
Fine-Grained-or-Not ``birds/Birds_ours_resnet.py`` ``model_bn``, ltong1130ztr/HAFrame
``util/arch/custom_resnet.py``, each model's ``features_1``)::

    nn.BatchNorm1d(num_ftrs), nn.Linear(num_ftrs, feature_size),
    nn.BatchNorm1d(feature_size), nn.ELU(inplace=True)

An objective's option ``neck`` (the references' ``feature_size``, HAFrame's
``--hidden_units``: 600) builds it inside the objective, so it trains and is saved with the
objective's heads; CPCC keeps reading the backbone's features, before the neck."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hierot.errors import is_integer


def check_neck(neck: int | None, objective: str) -> None:
    """``neck``: None or 0 (no neck), or the neck's width, an integer >= 1."""
    if neck is not None and (not is_integer(neck) or neck < 0):
        raise ValueError(
            f"{objective}: neck must be an integer >= 0 (its hidden units; 0 or null: no "
            f"neck), got {neck!r}"
        )


def batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor, update: bool) -> torch.Tensor:
    """``bn(x)``; with ``update`` False in training mode, the batch's statistics without
    moving the running ones (a second pass over the step's batch)."""
    if update or not bn.training:
        return bn(x)
    return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)


class Neck(nn.Sequential):
    """The references' ``features_1``, layer for layer (their indices, so a state dict's
    ``0. .. 2.`` keys are theirs): ``BatchNorm1d(d)``, ``Linear(d, hidden)``,
    ``BatchNorm1d(hidden)``, ``ELU``, with PyTorch's defaults (eps 1e-5, momentum 0.1, a
    bias on the linear map, ELU's alpha 1). ``forward(x, update=False)`` in training mode
    normalises with the batch's statistics without moving the running ones: only the
    loss's pass over a step's batch moves them, once, as in the reference's single
    forward."""

    def __init__(self, num_features: int, hidden: int) -> None:
        super().__init__(
            nn.BatchNorm1d(num_features),
            nn.Linear(num_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ELU(),
        )
        self.hidden = hidden

    def forward(self, x: torch.Tensor, update: bool = True) -> torch.Tensor:
        bn1, linear, bn2, elu = self
        return elu(batch_norm(bn2, linear(batch_norm(bn1, x, update)), update))


def build_neck(num_features: int, neck: int | None) -> Neck | None:
    """The neck of width ``neck`` on ``num_features`` features, or None for 0 or None."""
    return Neck(num_features, int(neck)) if neck else None

"""A neck (``hierot.objectives.neck.Neck`` or a reference's ``features_1``) with parameters and
running statistics away from their initial values, so that a comparison sees every one."""

from __future__ import annotations

import torch
from torch import nn


def randomize_neck(neck: nn.Sequential, seed: int) -> None:
    """Both batch norms' affine parameters and running statistics drawn at random (the
    linear map keeps its random initialisation)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (neck[0], neck[2]):
            n = bn.num_features
            bn.weight.copy_(1 + 0.3 * torch.randn(n, generator=g))
            bn.bias.copy_(0.3 * torch.randn(n, generator=g))
            bn.running_mean.copy_(0.5 * torch.randn(n, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(n, generator=g))

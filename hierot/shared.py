"""One tensor that several modules read and that moves once.

The loss and every metric of a run read the same (K, K) tree-distance matrix. Registered as
a buffer of each, ``.to(device)`` would copy it once per module (400 MB a copy at 10 000
classes). Instead the run's module owns one ``SharedTensor`` (a registered submodule, so it
moves with it) and hands it to the others, which keep a reference that is not a submodule
and read ``.value`` when they run. A module given a plain tensor owns its own, so each
works on its own as well.
"""

from __future__ import annotations

import torch
from torch import nn


class SharedTensor(nn.Module):
    """Holds ``value`` as a non-persistent buffer (derived data, not saved in checkpoints)."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value, persistent=False)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.value.shape)}, dtype={self.value.dtype}"


def attach(module: nn.Module, name: str, value: torch.Tensor | SharedTensor) -> None:
    """Give ``module`` the tensor ``value`` under ``name``: a ``SharedTensor`` by reference
    (its owner moves it), a plain tensor as the module's own (a registered submodule)."""
    if isinstance(value, SharedTensor):
        module.__dict__[name] = value  # a reference: not a submodule, not moved twice
    else:
        module.add_module(name, SharedTensor(value))

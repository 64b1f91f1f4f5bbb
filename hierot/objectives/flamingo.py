"""``flamingo``: Chang et al., "Your 'Flamingo' is my 'Bird': Fine-Grained, or Not" (CVPR 2021;
PRIS-CV/Fine-Grained-or-Not, ``birds/Birds_ours_resnet.py``, ``model_bn``): the features cut
into one disjoint slice per level, the top level's first; each level's head reads its own
slice and the finer levels' slices detached (the classes' head its slice alone), and the
loss is the sum of the levels' cross-entropies."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hierot.errors import ConfigError, is_integer
from hierot.hierarchy import Hierarchy
from hierot.objectives.levels import level_weights
from hierot.objectives.neck import build_neck, check_neck
from hierot.objectives.registry import Objective, register_objective


def check_sizes(hierarchy: Hierarchy | None, sizes: Sequence[int] | None) -> None:
    """``sizes``: None, or one positive integer per level (the tree's depth of them)."""
    if sizes is None:
        return
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise ValueError(f"flamingo: sizes must be a list of integers, got {sizes!r}")
    if not all(is_integer(s) and s >= 1 for s in sizes):
        raise ValueError(f"flamingo: sizes must be integers >= 1, got {list(sizes)!r}")
    if hierarchy is not None and len(sizes) != hierarchy.depth:
        raise ValueError(
            f"flamingo: sizes has {len(sizes)} values but the tree has {hierarchy.depth} "
            f"levels (one slice per level, the top level first and the classes last)"
        )


def check_flamingo(
    hierarchy: Hierarchy | None,
    weights: Sequence[float] | None,
    sizes: Sequence[int] | None,
    detach: bool,
    neck: int | None = None,
) -> None:
    level_weights(hierarchy, weights, "flamingo")
    check_sizes(hierarchy, sizes)
    if not isinstance(detach, bool):
        raise ValueError(f"flamingo: detach must be true or false, got {detach!r}")
    check_neck(neck, "flamingo")


def slice_sizes(
    num_features: int, depth: int, sizes: Sequence[int] | None, source: str = "the backbone's"
) -> list[int]:
    """The features of each level's slice, the top level first: ``sizes`` if given (they
    must add up to ``num_features``), else ``num_features // depth`` each with the remainder
    in the classes' slice (the reference's ``x[:, H // 3 * 2 : H]``). Raised where they do
    not fit: a ``ConfigError``, as the backbone's size is known only here; ``source`` names
    the features cut (the backbone's, the neck's)."""
    if sizes is not None:
        if sum(sizes) != num_features:
            raise ConfigError(
                f"objective.options: flamingo: sizes {list(sizes)} add up to {sum(sizes)}, "
                f"not to {source} {num_features} features"
            )
        return [int(s) for s in sizes]
    share = num_features // depth
    if share < 1:
        raise ConfigError(
            f"objective=flamingo: {source} {num_features} features cannot be cut into "
            f"{depth} slices, one per level of the tree, of at least 1 feature each"
        )
    return [share] * (depth - 1) + [num_features - share * (depth - 1)]


@register_objective("flamingo", check=check_flamingo)
class DisjointLevelHeads(Objective):
    """``sum_l w_l CE(head_l(z[s_l:e_l] ++ sg(z[e_l:])), y_l)`` over the levels
    ``1 .. depth``: the features cut into slices ``[s_l, e_l)``, the top level's first and
    the classes' last; ``sg`` stops the gradient, so a level's loss trains only its own
    slice and the classes' head reads its slice alone. The classes' head is this
    objective's ``Linear(e_D - s_D, K)``, and its logits are the model's class scores: the
    model's own head, on every feature, gets no gradient and predicts nothing.

    Args:
        weights: one weight per level, the top level first and the classes last; None for
            all 1 (the reference sums its cross-entropies unweighted).
        sizes: the slices' sizes, the top level first, adding up to the features; None
            for ``d // depth`` each, the remainder in the classes' slice.
        detach: whether a coarser head reads the finer slices detached (the reference's
            ``.detach()``); false lets every head's loss reach every slice it reads.
        neck: the hidden units of the references' neck, ``BatchNorm1d``, ``Linear(d,
            neck)``, ``BatchNorm1d``, ELU (``hierot.objectives.neck``; PRIS-CV's
            ``Hiden_Number`` and HAFrame's ``--hidden_units``: 600), whose output the slices
            are cut from (``sizes`` then add up to ``neck``); None or 0: the slices are cut
            from the features. CPCC regularises the backbone's features, before the neck.
    """

    # the model's own head is left without a gradient (DDP must look for it every step)
    unused_parameters = True

    def __init__(
        self,
        hierarchy: Hierarchy,
        num_features: int,
        weights: Sequence[float] | None = None,
        sizes: Sequence[int] | None = None,
        detach: bool = True,
        neck: int | None = None,
    ) -> None:
        super().__init__()
        check_flamingo(hierarchy, weights, sizes, detach, neck)
        self.weights = level_weights(hierarchy, weights, "flamingo")
        self.neck = build_neck(num_features, neck)
        if self.neck is not None:
            num_features, source = self.neck.hidden, "the neck's"
        else:
            source = "the backbone's"
        self.sizes = slice_sizes(num_features, hierarchy.depth, sizes, source)
        self.detach = detach
        # the slices' bounds: level l (1-based) owns [starts[l - 1], starts[l])
        self.starts = [sum(self.sizes[:i]) for i in range(len(self.sizes) + 1)]
        # (depth, K): each level's concept of every class (the last row the class itself)
        maps = torch.stack(list(hierarchy.label_maps().values()))
        self.register_buffer("maps", maps, persistent=False)
        self.heads = nn.ModuleList(
            nn.Linear(num_features - start, int(m.max()) + 1)
            for start, m in zip(self.starts, maps, strict=False)
        )

    def neck_output(self, z: torch.Tensor, update: bool = False) -> torch.Tensor:
        """The features the slices are cut from: the neck's output on ``z``, or ``z``
        without a neck. Only the loss's pass (``update``) moves the neck's running
        statistics."""
        return z if self.neck is None else self.neck(z, update)

    def head_input(self, z: torch.Tensor, level: int) -> torch.Tensor:
        """What level ``level``'s head reads from the cut features ``z`` (``neck_output``):
        its own slice, then the finer slices (detached when ``detach``)."""
        start, end = self.starts[level - 1], self.starts[level]
        finer = z[:, end:].detach() if self.detach else z[:, end:]
        return torch.cat([z[:, start:end], finer], dim=1)

    def all_level_logits(self, z: torch.Tensor, update: bool = False) -> list[torch.Tensor]:
        """Every level's head on its input, the top level first and the classes last, from
        the features ``z`` (through the neck, if any; ``update``: see ``neck_output``)."""
        x = self.neck_output(z, update)
        return [head(self.head_input(x, lvl)) for lvl, head in enumerate(self.heads, start=1)]

    def level_logits(self, z: torch.Tensor) -> dict[int, torch.Tensor]:
        """``{level: (B, concepts) logits}`` of the heads of the levels ``1 .. depth - 1``
        (concept indices as ``Hierarchy.level_map``): what ``hierot.evaluate``'s
        ``acc_<level>_head`` and ``acc_path`` read."""
        x = self.neck_output(z)
        levels = range(1, len(self.heads))
        return {lvl: self.heads[lvl - 1](self.head_input(x, lvl)) for lvl in levels}

    def class_scores(self, z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The classes' head on the classes' slice (the model's ``logits`` unused)."""
        return self.heads[-1](self.neck_output(z)[:, self.starts[-2] :])

    def forward(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = z.new_zeros(())
        outputs = self.all_level_logits(z, update=True)
        for w, out, fine_to_level in zip(self.weights, outputs, self.maps, strict=True):
            loss = loss + w * F.cross_entropy(out, fine_to_level[y])
        return loss

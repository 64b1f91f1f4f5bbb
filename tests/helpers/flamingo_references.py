"""Flamingo's heads and loss as its repositories write them, in float64, the tree taken from a
``Hierarchy`` (the datasets' ``get_order_family_target`` tables replaced by its level maps) and
the backbone (``features_2``, ``self.max``) left out. Built with ``num_ftrs``, ``forward``
takes the pooled features and runs the neck first, ``x = self.features_1(x)`` (``features_1``:
PRIS-CV's ``model_bn.__init__`` as written; HAFrame's ``ResNet50_flamingo_l3.__init__`` the
same without the commented-out dropouts); without, it takes the neck's output ``x``.

- ``PrisCVFlamingo``: PRIS-CV/Fine-Grained-or-Not ``birds/Birds_ours_resnet.py``
  (``model_bn.__init__`` and ``forward``; ``air/Airs_ours_resnet.py`` is the same on 3 levels,
  ``cars/Cars_ours_resnet.py`` on 2), its three levels written for ``L``: ``classifier_1``
  ``Linear(feature_size, n_1)``, ``classifier_l`` ``Linear(feature_size // L * (L - l + 1),
  n_l)`` (``feature_size // 3 * 2``, ``feature_size // 3``), each followed by ``Softmax(1)``;
  the slices ``x[:, H // L * (l - 1) : H // L * l]``, the last ``x[:, H // L * (L - 1) : H]``;
  the loss ``NLLLoss(log(softmax))`` per level, summed unweighted.
- ``HAFrameFlamingo``: ltong1130ztr/HAFrame ``util/arch/custom_resnet.py``
  (``ResNet50_flamingo_l3``/``_l7``/``_l12``, ``HAFrameResNet50_flamingo_l3``, ...): the same
  slices, ``classifier_l`` ``Linear(feature_size - (l - 1) * feature_diff, n_l)`` with
  ``feature_diff = feature_size // L``, no softmax, ``CrossEntropyLoss`` per level, summed.
"""

from __future__ import annotations

import torch
from torch import nn

from hierot.hierarchy import Hierarchy

criterion = nn.CrossEntropyLoss()
criterion_NLLLoss = nn.NLLLoss()


def level_targets(hierarchy: Hierarchy, targets: torch.Tensor) -> list[torch.Tensor]:
    """``get_order_family_target(targets)``: each level's concept of every target, the top
    level first, the levels above the classes."""
    maps = hierarchy.label_maps()
    return [maps[level][targets] for level in hierarchy.levels[:-1]]


def features_1(num_ftrs: int, feature_size: int) -> nn.Sequential:
    """``self.features_1`` (``num_ftrs = 2048``, ``feature_size = Hiden_Number = 600``)."""
    return nn.Sequential(
        nn.BatchNorm1d(num_ftrs),
        # nn.Dropout(0.5),
        nn.Linear(num_ftrs, feature_size),
        nn.BatchNorm1d(feature_size),
        nn.ELU(inplace=True),
        # nn.Dropout(0.5),
        # nn.Linear(feature_size, classes_num),
    )


class PrisCVFlamingo(nn.Module):
    def __init__(self, hierarchy: Hierarchy, feature_size: int, num_ftrs: int | None = None):
        super().__init__()
        self.hierarchy = hierarchy
        self.Hiden_Number = feature_size
        self.features_1 = features_1(num_ftrs, feature_size) if num_ftrs else None
        levels = hierarchy.depth
        counts = [int(m.max()) + 1 for m in hierarchy.label_maps().values()]
        self.classifiers = nn.ModuleList()
        for level in range(1, levels + 1):
            width = feature_size if level == 1 else feature_size // levels * (levels - level + 1)
            self.classifiers.append(
                nn.Sequential(nn.Linear(width, counts[level - 1]), nn.Softmax(1))
            )
        self.double()

    def forward(self, x: torch.Tensor, targets: torch.Tensor):
        if self.features_1 is not None:
            x = self.features_1(x)  # N * 512
        L, H = self.hierarchy.depth, self.Hiden_Number
        xs = [x[:, H // L * (i - 1) : H // L * i] for i in range(1, L)]
        xs.append(x[:, H // L * (L - 1) : H])
        inputs = [torch.cat([xs[i]] + [m.detach() for m in xs[i + 1 :]], 1) for i in range(L)]
        level_targets_ = [*level_targets(self.hierarchy, targets), targets]
        outs, ce_loss = [], 0
        for classifier, input_, target in zip(self.classifiers, inputs, level_targets_):
            out = classifier(input_)
            outs.append(out)
            ce_loss = ce_loss + criterion_NLLLoss(torch.log(out), target)
        return ce_loss, outs


class HAFrameFlamingo(nn.Module):
    def __init__(self, hierarchy: Hierarchy, feature_size: int, num_ftrs: int | None = None):
        super().__init__()
        self.hierarchy = hierarchy
        self.feature_size = feature_size
        self.features_1 = features_1(num_ftrs, feature_size) if num_ftrs else None
        levels = hierarchy.depth
        counts = [int(m.max()) + 1 for m in hierarchy.label_maps().values()]
        feature_diff = feature_size // levels
        self.classifiers = nn.ModuleList(
            nn.Sequential(nn.Linear(feature_size - (level - 1) * feature_diff, counts[level - 1]))
            for level in range(1, levels + 1)
        )
        self.double()

    def forward(self, x: torch.Tensor, targets: torch.Tensor):
        if self.features_1 is not None:
            x = self.features_1(x)  # N * 512
        L, H = self.hierarchy.depth, self.feature_size
        xs = [x[:, H // L * (i - 1) : H // L * i] for i in range(1, L)]
        xs.append(x[:, H // L * (L - 1) : H])
        inputs = [torch.cat([xs[i]] + [m.detach() for m in xs[i + 1 :]], 1) for i in range(L)]
        level_targets_ = [*level_targets(self.hierarchy, targets), targets]
        outs, ce_loss = [], 0
        for classifier, input_, target in zip(self.classifiers, inputs, level_targets_):
            out = classifier(input_)
            outs.append(out)
            ce_loss = ce_loss + criterion(out, target)
        return ce_loss, outs

"""Hierarchy-aware evaluation metrics (torchmetrics, so they reduce correctly across ranks).

- ``LevelAccuracy``: accuracy of the fine prediction mapped up the tree to one level.
- ``MistakeSeverity``: mean tree distance between prediction and truth over the mistakes.
- ``MeanCrossEntropy``: the split's cross-entropy, a mean over its samples.
- ``SplitCPCC``: CPCC over all features of a split (TestCPCC), with several class distances.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from hierot.checks import config_check
from hierot.correlation import reported_cpcc
from hierot.distances import DEFAULT_MEMORY_MB, check_memory, evaluation_options
from hierot.errors import ConfigError, is_integer
from hierot.shared import SharedTensor, attach


class LevelAccuracy(Metric):
    """Accuracy at one level: fine predictions and targets mapped through ``fine_to_level``.

    Args:
        fine_to_level: (K,) long tensor, the concept index at this level of every class
            (``Hierarchy.level_map(level)[1]``); or (N,) for every training label
            (``hierot.hierarchy.labels.label_level_maps``), where a label at an inner node
            above this level is -1: such a sample is not counted at this level.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, fine_to_level: torch.Tensor, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.register_buffer("fine_to_level", fine_to_level.long().clone(), persistent=False)
        self.partial = bool((fine_to_level < 0).any())
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """preds: (N,) fine class ids or (N, K) scores; target: (N,) fine class ids."""
        if preds.dim() == 2:
            preds = preds.argmax(dim=1)
        m = self.fine_to_level
        if self.partial:  # labels above this level say nothing here
            known = m[target] >= 0
            self.correct += ((m[preds] == m[target]) & known).sum()
            self.total += known.sum()
            return
        self.correct += (m[preds] == m[target]).sum()
        self.total += target.numel()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp_min(1)


def float_tree(tree_dist: torch.Tensor | SharedTensor) -> torch.Tensor | SharedTensor:
    """A plain matrix as float32 (a metric's own copy); the run's shared one as it is."""
    return tree_dist if isinstance(tree_dist, SharedTensor) else tree_dist.float()


class MistakeSeverity(Metric):
    """Mean tree distance ``t(pred, target)`` over the misclassified samples (0 if none).

    Args:
        tree_dist: (K, K) tree distances (``Hierarchy.tree_distances()``), or the run's
            ``SharedTensor`` of them (read, not copied).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, tree_dist: torch.Tensor | SharedTensor, **kwargs: object) -> None:
        super().__init__(**kwargs)
        attach(self, "_tree", float_tree(tree_dist))
        self.add_state("severity", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("mistakes", default=torch.tensor(0), dist_reduce_fx="sum")

    @property
    def tree_dist(self) -> torch.Tensor:
        return self._tree.value

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """preds: (N,) fine class ids or (N, K) scores; target: (N,) fine class ids."""
        if preds.dim() == 2:
            preds = preds.argmax(dim=1)
        wrong = preds != target
        self.severity += self.tree_dist[preds[wrong], target[wrong]].sum()
        self.mistakes += wrong.sum()

    def compute(self) -> torch.Tensor:
        return self.severity / self.mistakes.clamp_min(1)


class MeanCrossEntropy(Metric):
    """Cross-entropy of the logits, the mean over every sample of a split: summed on each
    rank and then over the ranks, so it stays the per-sample mean when the ranks hold
    different numbers of samples (a mean of each rank's mean would not be)."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """logits: (N, K) scores; target: (N,) class ids."""
        self.total += F.cross_entropy(logits.float(), target, reduction="sum")
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp_min(1)


class SplitCPCC(Metric):
    """CPCC over every feature of a split, once per class distance in ``methods``.

    Keeps the (N, d) features until ``compute``; under DDP they are gathered from all ranks.
    ``compute`` runs the class distances chunk by chunk within ``memory_mb``, so a whole
    test split of thousands of classes is fine.

    Args:
        tree_dist: (K, K) tree distances, or the run's ``SharedTensor`` of them.
        methods: ``{name: (method, options)}``; ``compute`` returns ``{name: cpcc}``, NaN
            where the correlation is undefined, and leaves ``{name: why}`` of those in
            ``undefined`` (``hierot.correlation.reported_cpcc``) and the number of samples
            in ``evaluated``. A random distance left at
            ``seed=None`` (``swd``) evaluates with ``hierot.distances.EVALUATION_SEED``.
        memory_mb: the class distances' memory budget (``hierot.distances.class_distances``).
        classes: if given, only samples of these class ids are kept (a subsample of a large
            label set, e.g. for a validation CPCC every epoch).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        tree_dist: torch.Tensor | SharedTensor,
        methods: dict[str, tuple[str, dict[str, object]]],
        memory_mb: float = DEFAULT_MEMORY_MB,
        classes: torch.Tensor | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        check_memory(memory_mb)
        # Not a copy: at 10 000 classes the (K, K) matrix is 400 MB.
        attach(self, "_tree", float_tree(tree_dist))
        keep = None
        if classes is not None:
            keep = torch.zeros(self.tree_dist.shape[0], dtype=torch.bool)
            keep[classes.long()] = True
        self.register_buffer("keep", keep, persistent=False)
        # A random distance (swd) draws from its own seeded generator: the same directions
        # at every evaluation, and the global generator (the training batches) untouched.
        self.methods = {
            name: (method, evaluation_options(method, options))
            for name, (method, options) in methods.items()
        }
        self.memory_mb = memory_mb
        # the last ``compute``'s undefined correlations with why, and its number of samples
        # (the same on every rank)
        self.undefined: dict[str, str] = {}
        self.evaluated = 0
        self.add_state("features", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    @property
    def tree_dist(self) -> torch.Tensor:
        return self._tree.value

    def update(self, features: torch.Tensor, target: torch.Tensor) -> None:
        features, target = features.detach().float(), target.detach()
        if self.keep is not None:
            kept = self.keep[target]
            features, target = features[kept], target[kept]
        self.features.append(features)
        self.labels.append(target)

    def compute(self) -> dict[str, torch.Tensor]:
        # After a DDP sync the list states are already concatenated tensors.
        if isinstance(self.features, list) and not self.features:
            self.undefined, self.evaluated = dict.fromkeys(self.methods, "no class"), 0
            return {name: torch.tensor(float("nan")) for name in self.methods}
        z, y = dim_zero_cat(self.features), dim_zero_cat(self.labels)
        self.evaluated = int(y.numel())
        values: dict[str, torch.Tensor] = {}
        self.undefined = {}
        for name, (method, options) in self.methods.items():
            value, why = reported_cpcc(z, y, self.tree_dist, method, self.memory_mb, **options)
            values[name] = value
            if why is not None:
                self.undefined[name] = why
        return values


def check_val_cpcc(every: object, max_classes: object) -> None:
    """Raise ``ValueError`` on a bad ``val/cpcc`` schedule (``every`` epochs, ``max_classes``)."""
    if not is_integer(every) or every < 1:
        raise ValueError(f"cpcc.val_every must be an integer >= 1, got {every!r}")
    if max_classes is not None and (not is_integer(max_classes) or max_classes < 3):
        raise ValueError(
            f"cpcc.val_classes must be an integer >= 3 (a CPCC needs 3 classes) or null, "
            f"got {max_classes!r}"
        )


@config_check
def check_val_cpcc_config(cfg: DictConfig) -> None:
    """``cpcc.val_every`` and ``cpcc.val_classes`` (the ``val/cpcc`` schedule)."""
    node = cfg.get("cpcc")
    if isinstance(node, DictConfig):
        try:
            check_val_cpcc(node.get("val_every"), node.get("val_classes"))
        except ValueError as e:
            raise ConfigError(str(e)) from None


def class_subsample(
    num_classes: int, max_classes: int | None, seed: int = 0
) -> torch.Tensor | None:
    """A seeded, sorted subset of ``max_classes`` of ``0..num_classes-1`` (None: all of
    them, also when there are no more than ``max_classes``)."""
    if max_classes is None or max_classes >= num_classes:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(num_classes, generator=gen)[:max_classes].sort().values

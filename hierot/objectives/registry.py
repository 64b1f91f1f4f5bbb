"""Name -> training objective registry, so a new objective is one decorated class.

An objective is the base loss of a run (``objective=<name>``), computed from the backbone's
features, the linear head's logits and the labels; CPCC (``dist=...``, ``lam``) is added on
top of any of them by ``HierarchyModule``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from hierot.checks import config_check
from hierot.errors import ConfigError, reject_unknown_options
from hierot.hierarchy import Hierarchy

if TYPE_CHECKING:
    from omegaconf import DictConfig


class Objective(nn.Module):
    """Base class: ``__init__(hierarchy, num_features, **options)`` and
    ``forward(z, logits, y)`` with z (B, d) features, logits (B, K) of the fine head and y
    (B,) class ids, returning a 0-dim loss. Parameters an objective adds (``mtl``'s level
    heads) are trained with the model and saved in its checkpoints. ``class_scores`` is
    what the model predicts with: the head's logits unless the objective scores the classes
    otherwise (``yolo``, ``embedding``, ``hiercos``).

    A loss of per-sample terms (means over the batch's samples: cross-entropy and its
    variants) overrides ``forward``: under DDP each process computes it on its own share,
    and DDP's averaging of the gradients makes it the global batch's. A loss with a term
    over pairs or groups of samples (contrastive pairs, quadruplets) sets ``batch_wide``
    and splits itself instead: ``sample_loss`` (the per-sample terms, each process its
    share) plus ``batch_loss`` (the batch-wide term, which ``HierarchyModule`` computes on
    the global batch gathered from every process, as it does CPCC); ``forward`` is then
    their sum on one batch.
    """

    def forward(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.sample_loss(z, logits, y)
        return loss + self.batch_loss(z, y) if self.batch_wide else loss

    def sample_loss(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss's per-sample terms on a process's share of the batch (a batch-wide
        objective's; the others override ``forward``)."""
        raise NotImplementedError(
            f"objective {type(self).__name__} defines neither forward nor sample_loss"
        )

    def class_scores(self, z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` scores of the classes from features ``z`` and the head's ``logits``:
        what the model predicts with (``HierarchyModule.forward``), so every metric, decoder,
        ``hierot.evaluate`` and ``hierot.predict`` read them (the arg max the class, a
        softmax their probabilities, ``val/loss`` their cross-entropy). The head's logits
        unless overridden: an objective whose classes are scored otherwise (a softmax
        cascade over the tree's nodes, cosines to class embeddings) returns its own,
        log-probabilities or logits."""
        return logits

    def batch_loss(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch-wide term on the global batch's features ``z`` (every view of every
        image a row, ``b * views + v``) and class ids ``y``; used when ``batch_wide``."""
        raise NotImplementedError(f"objective {type(self).__name__} has no batch-wide term")

    # Whether the loss has a batch-wide term (``batch_loss``) in the current stage.
    batch_wide: bool = False
    # Whether some stage leaves a trainable parameter without a gradient (a head that waits
    # for its stage, a frozen backbone): DDP then looks for such parameters every step.
    unused_parameters: bool = False
    # Whether CPCC is added to this objective's loss in the current stage.
    regularized: bool = True
    # Whether the backbone trains in the current stage (False: a linear probe on frozen
    # features).
    trains_backbone: bool = True
    # Augmented views of each training image the objective needs (data.views).
    views: int = 1
    # Whether the loss can take training labels at the tree's inner nodes (labels K and
    # above, ``hierot.hierarchy.labels``); such an objective overrides ``use_inner_labels``.
    inner_labels: bool = False

    # The names of the training's stages, in order (one unless overridden).
    stage_names: tuple[str, ...] = ("training",)

    @classmethod
    def plan_stages(cls, max_epochs: int, options: Mapping[str, object]) -> list[int]:
        """The epochs of each stage (``stage_names``) of a run of ``max_epochs``, summing
        to it, given the objective's ``options`` (every option, defaults filled in); each
        stage starts with a fresh optimizer and schedule. One stage unless overridden."""
        return [max_epochs]

    def stage_epochs(self, max_epochs: int) -> list[int]:
        """``plan_stages`` with this objective's options."""
        return self.plan_stages(max_epochs, self.options)

    @property
    def options(self) -> dict[str, object]:
        """The options this objective was built with (``build_objective`` records them)."""
        return getattr(self, "_options", {})

    def set_stage(self, stage: int) -> None:
        """Behave as in ``stage``: called when a run starts, at every stage transition and
        when a checkpoint is loaded (the stage is saved with it). Sets modes only."""

    def enter_stage(self, stage: int, module: nn.Module) -> None:
        """A real transition into ``stage`` (the run trains its first epoch after the
        previous stage's last; not when a run resumes inside a stage): re-initialise what
        the stage starts afresh (``module``: the model being trained). After ``set_stage``."""

    def lr_scale(self, stage: int) -> float:
        """The factor on the configured learning rate in ``stage`` (1 unless overridden)."""
        return 1.0

    def use_inner_labels(self, hierarchy: Hierarchy) -> None:
        """Take labels at inner nodes from now on (the training data hold some): build what
        the loss needs for them, on the device of the objective's other tensors. Called
        once, before training, on an objective whose class sets ``inner_labels``; with
        class labels alone the loss is never switched and stays as it was."""
        raise NotImplementedError(f"objective {type(self).__name__} takes no inner labels")


ObjectiveCheck = Callable[..., None]
_OBJECTIVES: dict[str, type[Objective]] = {}
_CHECKS: dict[str, ObjectiveCheck] = {}


def register_objective(
    name: str, check: ObjectiveCheck | None = None
) -> Callable[[type[Objective]], type[Objective]]:
    """Class decorator: ``@register_objective("name", check=fn)`` on an ``Objective``.

    The options are the keyword arguments of its ``__init__`` after ``hierarchy`` and
    ``num_features``. ``check(hierarchy, **options)``, if given, receives every option
    (defaults filled in) and raises ``ValueError`` with a one-line message on a bad value;
    ``check_objective`` runs it before a run starts, and the class calls it too.
    """

    def add(cls: type[Objective]) -> type[Objective]:
        if name in _OBJECTIVES and _OBJECTIVES[name] is not cls:
            raise ValueError(f"objective '{name}' is already registered")
        _OBJECTIVES[name] = cls
        if check is not None:
            _CHECKS[name] = check
        return cls

    return add


def list_objectives() -> list[str]:
    return sorted(_OBJECTIVES)


def get_objective(name: str) -> type[Objective]:
    try:
        return _OBJECTIVES[name]
    except KeyError:
        raise ValueError(
            f"unknown objective '{name}'; available: {', '.join(list_objectives())}"
        ) from None


def objective_options(name: str) -> dict[str, object]:
    """``{option: default}`` of a registered objective (what configs may set)."""
    params = list(inspect.signature(get_objective(name).__init__).parameters.values())[3:]
    return {p.name: p.default for p in params}


def check_objective(
    name: str, options: Mapping[str, object], hierarchy: Hierarchy | None = None
) -> None:
    """Refuse an unknown objective, options it does not take (naming those it does) and
    values its registered check rejects. Without ``hierarchy`` only the options that do not
    depend on the tree are judged (the config check runs before the data is read)."""
    known = objective_options(name)
    reject_unknown_options(f"objective '{name}'", known, options)
    if name in _CHECKS:
        _CHECKS[name](hierarchy, **{**known, **options})


@config_check
def check_objective_config(
    cfg: DictConfig,
    hierarchy: Hierarchy | None = None,
    views: int | None = None,
    inner_nodes: Sequence[str] = (),
) -> None:
    """``objective.name`` and ``objective.options`` judged by the objective's own check;
    with the data's ``hierarchy`` also what depends on the tree (one weight per level),
    with its ``views`` whether the data gives the objective the views it needs, and with
    the ``inner_nodes`` its training images are labelled at whether the objective takes
    such labels."""
    from omegaconf import DictConfig, OmegaConf  # the application's (the core has no omegaconf)

    name = cfg.objective.get("name")
    if name not in _OBJECTIVES:
        raise ConfigError(
            f"objective.name: unknown objective {name!r}; available: {list_objectives()}"
        )
    node = cfg.objective.get("options")
    if node is not None and not isinstance(node, DictConfig):
        raise ConfigError(f"objective.options must be a mapping, got {node!r}")
    options = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    try:
        check_objective(name, options, hierarchy)  # type: ignore[arg-type]
    except ValueError as e:
        raise ConfigError(f"objective.options: {e}") from None
    trainer = cfg.get("trainer") or {}
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps")
    counts = all(v is None or type(v) is int for v in (epochs, steps))
    if counts and not trainer.get("fast_dev_run"):  # a dry run takes one batch of a stage
        check_stages(name, options, epochs, steps)  # (bad types: the trainer's own check)
    needed = get_objective(name).views
    if views is not None and views < needed:
        raise ConfigError(
            f"data.views: objective {name} needs {needed} augmented views of every training "
            f"image, got data.views={views}"
        )
    try:
        check_inner_labels(name, inner_nodes)
    except ValueError as e:
        raise ConfigError(f"objective.name: {e}") from None


def build_objective(
    name: str, hierarchy: Hierarchy, num_features: int, options: Mapping[str, object] | None = None
) -> Objective:
    """The objective ``name`` for ``hierarchy`` on features of ``num_features``."""
    options = dict(options or {})
    check_objective(name, options, hierarchy)
    objective = get_objective(name)(hierarchy, num_features, **options)
    objective._options = {**objective_options(name), **options}
    return objective


def check_inner_labels(name: str, nodes: Sequence[str]) -> None:
    """Refuse, in one line naming the objective and a node, training data with labels at
    the inner ``nodes`` for an objective that cannot take them (``Objective.inner_labels``)."""
    if not nodes or get_objective(name).inner_labels:
        return
    able = ", ".join(n for n in list_objectives() if get_objective(n).inner_labels)
    more = f" (and {len(nodes) - 1} more nodes)" if len(nodes) > 1 else ""
    raise ValueError(
        f"objective {name} cannot take labels at inner nodes, and the training data label "
        f"images only to '{nodes[0]}'{more}: choose an objective that can ({able}), or give "
        f"those images class labels (class folders; data.coarse_fraction=0)"
    )


def check_stages(
    name: str, options: Mapping[str, object], max_epochs: int | None, max_steps: int | None
) -> None:
    """Refuse a run in which a stage of objective ``name`` gets no epoch, and step-based
    training (``trainer.max_epochs=-1`` or a ``trainer.max_steps``) of an objective with
    several stages, which are counted in epochs. One line naming the stage and the setting."""
    cls = get_objective(name)
    if len(cls.stage_names) < 2:
        return
    options = {**objective_options(name), **options}
    stages = ", ".join(cls.stage_names)
    if max_epochs is None or max_epochs < 0 or (max_steps is not None and max_steps >= 0):
        setting = (
            f"trainer.max_steps={max_steps}" if max_steps is not None and max_steps >= 0
            else f"trainer.max_epochs={max_epochs}"
        )  # fmt: skip
        raise ConfigError(
            f"{setting}: objective {name} counts its stages ({stages}) in epochs: set "
            f"trainer.max_epochs, and trainer.max_steps=-1"
        )
    epochs = cls.plan_stages(max_epochs, options)
    for stage, count in zip(cls.stage_names, epochs, strict=True):
        if count < 1:
            plan = ", ".join(f"{s} {n}" for s, n in zip(cls.stage_names, epochs, strict=True))
            raise ConfigError(
                f"trainer.max_epochs={max_epochs}: objective {name}'s {stage} stage gets 0 "
                f"epochs ({plan}); raise trainer.max_epochs or change objective.options"
            )

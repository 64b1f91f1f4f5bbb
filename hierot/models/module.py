"""``HierarchyModule``: a backbone, a linear head, a base objective (cross-entropy, HXE, ...)
+ ``lam * (1 - CPCC)``, and hierarchy-aware metrics (accuracy at every level, top-k, mistake
severity, split CPCC)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from hierot.correlation import NO_DISTANCE, CPCCLoss, undefined_lines
from hierot.distances import DEFAULT_MEMORY_MB, batch_centre
from hierot.errors import ConfigError, Diverged, require_integer, require_number
from hierot.hierarchy import Hierarchy
from hierot.hierarchy.labels import label_level_maps
from hierot.metrics import (
    LevelAccuracy,
    MeanCrossEntropy,
    MistakeSeverity,
    SplitCPCC,
    check_val_cpcc,
    class_subsample,
)
from hierot.objectives import DEFAULT_OBJECTIVE, build_objective
from hierot.objectives.registry import check_inner_labels, check_stages
from hierot.shared import SharedTensor

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]

log = logging.getLogger(__name__)


def level_keys(hierarchy: Hierarchy, level_names: Sequence[str] | None = None) -> dict[int, str]:
    """``{level: name}`` for metric keys: the deepest level is ``fine``; coarser ones take
    ``level_names`` (top level first) or ``level<N>``."""
    coarse = hierarchy.levels[:-1]
    names = list(level_names or [])
    if names and len(names) != len(coarse):
        raise ConfigError(
            f"data.level_names: {len(names)} names ({', '.join(names)}) but the tree has "
            f"{len(coarse)} levels above the classes"
        )
    keys = {lvl: names[i] if names else f"level{lvl}" for i, lvl in enumerate(coarse)}
    keys[hierarchy.depth] = "fine"
    return keys


def split_metrics(
    split: str,
    hierarchy: Hierarchy,
    keys: Mapping[int, str],
    k: int,
    tree_dist: SharedTensor,
    inner_labels: bool = False,
) -> MetricCollection:
    """A split's metrics: accuracy at every level, and outside training the top-``k``
    accuracy, the mistake severity (on the run's shared tree distances) and the loss (the
    cross-entropy, a mean over the split's samples on any number of processes). With
    ``inner_labels`` (training only) a sample labelled at an inner node counts at the
    levels at and above its node."""
    maps = label_level_maps(hierarchy) if inner_labels else hierarchy.label_maps()
    metrics: dict[str, nn.Module] = {
        f"acc_{keys[lvl]}": LevelAccuracy(maps[lvl]) for lvl in hierarchy.levels
    }
    if split != "train":
        metrics[f"acc_top{k}"] = MulticlassAccuracy(hierarchy.num_classes, top_k=k, average="micro")
        metrics["mistake_severity"] = MistakeSeverity(tree_dist)
        metrics["loss"] = MeanCrossEntropy()
    # Compute groups would merge levels whose counts agree on the first batch.
    return MetricCollection(metrics, prefix=f"{split}/", compute_groups=False)


class HierarchyModule(L.LightningModule):
    """Classifier trained with ``objective(z, head(z), y) + lam * (1 - CPCC(z, y))`` on pooled
    features z.

    Args:
        backbone: maps images to (B, d) features; must expose ``num_features`` = d.
        hierarchy: the label tree; its leaves are the class ids.
        dist: the class distance of the regularizer (``l2``, ``emd``, ...) or ``"none"`` for flat
            cross-entropy. Evaluation CPCC uses it too (``l2`` when ``"none"``).
        dist_options: the distance's options (e.g. ``{"reg": 1.0}``).
        lam: weight of the regularizer (>= 0).
        objective: the base loss, a registered objective (``ce``, ``hxe``, ``mtl``, ...;
            ``hierot.objectives``); objective_options: its options.
        head_weight_decay: the optimizer's weight decay on the linear head (its own
            parameter group); None for the optimizer's own. With SGD, ``wd + 24 * lamb``
            is HierarchyCPCC's ``GroupLasso(lamb)`` on top of weight decay ``wd``.
        cpcc_nodes: the points of the regularizer: ``leaves`` (the classes) or ``all``
            (every node of the tree with a sample below it; ``CPCCLoss``). The split
            CPCCs (``val/cpcc``, ``test/cpcc``) are over the classes either way.
        check_every_n_steps: read the divergence record (the first step whose loss was not
            finite) and check the backbone's statistics every this many steps, at the end
            of each epoch and before every checkpoint; the loss itself is checked on the
            device every step, without the host waiting for it.
        center: weight of HypStructure's centring loss, ``|centre of the batch's features|``
            in the distance's geometry (``hierot.distances.batch_centre``: the Einstein
            midpoint in the ball for ``hyperbolic``); 0 for none (its recipes use 0.01).
        optimizer: ``fn(params) -> Optimizer`` (a Hydra ``_partial_``).
        scheduler: ``fn(optimizer, total_steps) -> LRScheduler`` stepped per step, or None.
        level_names: names of the coarse levels, top first, for metric keys.
        top_k: k of the top-k accuracy (capped at the number of classes).
        memory_mb: memory budget of the class distances (regularizer and split CPCCs).
        val_cpcc_every: compute ``val/cpcc`` every this many epochs (and after the last).
        val_cpcc_classes: compute ``val/cpcc`` over at most this many classes, a subset
            drawn once with a fixed seed (the same classes every epoch and every run); None
            for all. ``test/cpcc`` always uses every class.
    """

    def __init__(
        self,
        backbone: nn.Module,
        hierarchy: Hierarchy,
        optimizer: OptimizerFactory | None = None,
        dist: str = "l2",
        dist_options: Mapping[str, object] | None = None,
        lam: float = 1.0,
        scheduler: SchedulerFactory | None = None,
        level_names: Sequence[str] | None = None,
        top_k: int = 5,
        memory_mb: float = DEFAULT_MEMORY_MB,
        val_cpcc_every: int = 1,
        val_cpcc_classes: int | None = 1000,
        objective: str = DEFAULT_OBJECTIVE,
        objective_options: Mapping[str, object] | None = None,
        head_weight_decay: float | None = None,
        cpcc_nodes: str = "leaves",
        center: float = 0.0,
        check_every_n_steps: int = 20,
    ) -> None:
        super().__init__()
        # Checked and normalized first: save_hyperparameters saves these locals' values.
        lam = require_number(lam, "lam", 0)  # the config check calls the same
        center = require_number(center, "cpcc.center", 0)
        if head_weight_decay is not None:
            require_number(head_weight_decay, "model.head_weight_decay", 0)
        check_val_cpcc(val_cpcc_every, val_cpcc_classes)
        require_integer(check_every_n_steps, "speed.check_every_n_steps", 1)
        dist_options = dict(dist_options or {})
        objective_options = dict(objective_options or {})
        level_names = list(level_names) if level_names else None
        top_k = min(top_k, hierarchy.num_classes)
        # every hyper-parameter but the objects passed in (checkpoints.load_module)
        self.save_hyperparameters(ignore=["backbone", "hierarchy", "optimizer", "scheduler"])
        self.lam, self.center, self.head_weight_decay = lam, center, head_weight_decay
        self.dist, self.dist_options, self.val_cpcc_every = dist, dist_options, val_cpcc_every
        self.check_every_n_steps = check_every_n_steps
        self.level_names = level_names
        # images in channels-last memory format (hierot.speed sets it with the backbone's)
        self.channels_last = False
        # The first non-finite step, recorded on the device (``_check_finite``): its global
        # step (-1: none yet), batch, whether its pixels were finite, and its loss terms.
        self._divergence: torch.Tensor | None = None
        self._clean_until = 0  # the steps before this one were checked and finite
        # the objective's stage: set when training starts, saved with every checkpoint
        self._stage: int | None = None
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, hierarchy.num_classes)
        self.objective_name = objective
        self.objective = build_objective(
            objective, hierarchy, backbone.num_features, objective_options
        )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # The class tree distances, one copy that the loss and every metric read (and that
        # moves once with .to(device)).
        self.tree_dist = SharedTensor(hierarchy.tree_distances().float())
        self.regularizer = (
            None
            if dist == NO_DISTANCE
            else CPCCLoss(
                hierarchy, dist, memory_mb, nodes=cpcc_nodes, tree_dist=self.tree_dist,
                **dist_options,
            )
        )  # fmt: skip
        self._build_metrics(hierarchy, level_names, top_k, memory_mb, val_cpcc_classes)

    def _build_metrics(
        self,
        hierarchy: Hierarchy,
        level_names: Sequence[str] | None,
        top_k: int,
        memory_mb: float,
        val_cpcc_classes: int | None,
    ) -> None:
        """Each split's metrics, and the split CPCCs: the run's distance (``l2`` without
        CPCC) and ``l2``, ``val/cpcc`` over a fixed class subset."""
        dist, options = self.dist, self.dist_options
        methods = {"cpcc": ("l2", {}) if dist == NO_DISTANCE else (dist, options)}
        methods["cpcc_l2"] = ("l2", {})
        keys = level_keys(hierarchy, level_names)
        self.train_metrics = split_metrics("train", hierarchy, keys, top_k, self.tree_dist)
        self.val_metrics = split_metrics("val", hierarchy, keys, top_k, self.tree_dist)
        self.test_metrics = split_metrics("test", hierarchy, keys, top_k, self.tree_dist)
        val_classes = class_subsample(hierarchy.num_classes, val_cpcc_classes)
        self.val_cpcc = SplitCPCC(self.tree_dist, methods, memory_mb, classes=val_classes)
        self.test_cpcc = SplitCPCC(self.tree_dist, methods, memory_mb)
        # The split CPCCs undefined at the last evaluation of their split, with why (what
        # model selection and early stopping skip, ``hierot.stages``), and the keys whose
        # reason this process has logged: once each.
        self.undefined: dict[str, str] = {}
        self._undefined_logged: set[str] = set()

    def use_inner_labels(self, hierarchy: Hierarchy, nodes: Sequence[str]) -> None:
        """Train on labels at inner nodes too: the training data label some images only to
        ``nodes`` (labels K and above, ``hierot.hierarchy.labels``; validation and test
        hold classes only). The objective must take them (``Objective.inner_labels``; a
        one-line error naming it and a node otherwise); CPCC leaves them out of the class
        means, or with ``cpcc.nodes=all`` counts them at their node (``CPCCLoss``); the
        training accuracies count them at the levels at and above their node. Called
        before training, with the tree the model was built on; without ``nodes`` nothing
        changes."""
        if not nodes:
            return
        try:
            check_inner_labels(self.objective_name, nodes)
        except ValueError as e:
            raise ConfigError(f"objective.name: {e}") from None
        self.objective.use_inner_labels(hierarchy)
        if self.regularizer is not None:
            self.regularizer.use_inner_labels(hierarchy)
        keys = level_keys(hierarchy, self.level_names)
        self.train_metrics = split_metrics(
            "train", hierarchy, keys, 1, self.tree_dist, inner_labels=True
        )
        self.to(self.device)  # the tables just built, where the rest of the model is

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        """What DDP leaves alone (torch's ``DistributedDataParallel`` reads this attribute):
        every buffer but the backbone's. They are derived from the tree (tree distances,
        level maps, soft-label targets), built the same on every rank, and DDP would
        otherwise broadcast them from rank 0 before every forward (400 MB a step for the
        tree distances of 10 000 classes); the backbone's statistics are still broadcast."""
        return [name for name, _ in self.named_buffers() if not name.startswith("backbone.")]

    def monitorable(self) -> set[str]:
        """The metrics logged at the end of every epoch, which a checkpoint or early
        stopping may monitor (``val/cpcc`` only when it is computed every epoch)."""
        names = {"train/loss", f"train/{self.objective_name}", "val/loss"}
        names |= {*self.train_metrics, *self.val_metrics}
        if self.regularizer is not None and self.lam != 0:
            names.add("train/cpcc")
        if self.val_cpcc_every == 1:
            names |= {f"val/{name}" for name in self.val_cpcc.methods}
        return names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) images -> ((B, d) features, (B, K) class scores): the objective's
        ``class_scores`` (the head's logits for most objectives; a softmax cascade's leaf
        log-probabilities, cosines to class embeddings, ... for others), which every metric,
        decoder, evaluation and prediction reads."""
        z, logits = self._head_forward(x)
        return z, self.objective.class_scores(z, logits)

    def _head_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) images -> ((B, d) features, (B, K) logits of the linear head): what
        the objective's loss reads."""
        z = self.backbone(self._images(x))
        return z, self.head(z)

    def _global_batch(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels of every rank's batch, rank 0's first; gradients flow back to
        each rank's own slice. A no-op on one process. Rows keep their order within each
        rank, so a layout of ``b * views + v`` holds on the global batch too.

        Every rank then computes the same batch-wide term on the same global batch: the
        gather's backward sums the W identical gradients of a slice, and DDP's averaging of
        parameter gradients divides by W again, so the result is the global batch's gradient.
        The host reads the ranks' sizes (one wait per step).
        """
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return z, y
        # all_gather needs equal shapes: pad every rank to the largest batch, then drop it.
        sizes = self.all_gather(torch.tensor(y.numel(), device=y.device)).reshape(-1).tolist()
        pad = max(sizes) - y.numel()
        zs = self.all_gather(F.pad(z, (0, 0, 0, pad)), sync_grads=True)  # (W, n, d)
        ys = self.all_gather(F.pad(y, (0, pad)))
        if min(sizes) == max(sizes):
            return zs.flatten(0, 1), ys.flatten(0, 1)
        return (
            torch.cat([zs[r, :n] for r, n in enumerate(sizes)]),
            torch.cat([ys[r, :n] for r, n in enumerate(sizes)]),
        )

    def _losses(self, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, views: int = 1):
        """``(loss, objective's part, regularizer or None)``. With several views of each
        image (rows ``b * views + v``) the objective sees them all; CPCC and the centring
        loss see the first view of each image, as HypStructure's.

        The terms over the batch see the global batch under DDP (``_global_batch``, gathered
        once a step): the objective's ``batch_loss`` where it declares one (``batch_wide``),
        the centring loss and CPCC. The objective's per-sample terms stay on each rank's
        share; DDP's averaging makes them the global batch's.
        """
        objective = self.objective
        wide = objective.batch_wide
        regularized = self.regularizer is not None and self.lam != 0 and objective.regularized
        rows = (z, y) if wide or views == 1 else (z[::views], y[::views])
        if wide or self.center or regularized:
            rows = self._global_batch(*rows)
        if wide:
            base = objective.sample_loss(z, logits, y) + objective.batch_loss(*rows)
            if views > 1:
                rows = rows[0][::views], rows[1][::views]
        else:
            base = objective(z, logits, y)
        first, labels = rows
        if self.center:
            method = "l2" if self.dist == NO_DISTANCE else self.dist
            base = base + self.center * batch_centre(method, first, self.dist_options).norm()
        if not regularized:
            return base, base, None
        reg = self.regularizer(first, labels)
        return base + self.lam * reg, base, reg

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and the head's logits, or with a frozen backbone (a linear probe's
        stage) the features computed in eval mode without a graph, and the head on them."""
        if self.objective.trains_backbone:
            return self._head_forward(x)
        self.backbone.eval()  # batch-norm statistics stay as trained
        with torch.no_grad():
            z = self.backbone(self._images(x))
        return z, self.head(z)

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the backbone's memory format."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        views = x.shape[1] if x.dim() == 5 else 1
        if views < self.objective.views:
            raise ValueError(
                f"objective {self.objective_name} needs data.views >= {self.objective.views}, "
                f"got batches of {views}"
            )
        if views > 1:  # (B, V, C, H, W): every view a row, b * views + v
            x, y = x.flatten(0, 1), y.repeat_interleave(views)
        z, logits = self._train_forward(x)
        loss, base, reg = self._losses(z, logits, y, views)
        self._check_finite(loss, base, reg, x, batch_idx)
        # Logged values stay on the device: Lightning reads them every log_every_n_steps.
        # (None is shown in the progress bar: Lightning reads those every step;
        # hierot.logs.ProgressBar shows the loss and CPCC as logged.)
        n = y.numel()
        self.log("train/loss", loss, batch_size=n)
        self.log(f"train/{self.objective_name}", base, batch_size=n)
        if reg is not None:
            self.log("train/cpcc", 1 - reg.detach(), batch_size=n)
        with torch.no_grad():  # the objective's class scores (the logits for most)
            scores = self.objective.class_scores(z.detach(), logits.detach())
        self.train_metrics(scores.argmax(1), y)  # one argmax for every level
        self.log_dict(self.train_metrics, batch_size=n)
        return loss

    def _check_finite(
        self,
        loss: torch.Tensor,
        base: torch.Tensor,
        reg: torch.Tensor | None,
        x: torch.Tensor,
        batch_idx: int,
    ) -> None:
        """Record on the device the first step whose loss is not finite: its step, batch,
        loss terms and whether its pixels were finite. Nothing is read here (the host does
        not wait); ``raise_if_diverged`` reads the record."""
        loss = loss.detach()
        if self._divergence is None or self._divergence.device != loss.device:
            self._divergence = torch.full((6,), -1.0, dtype=torch.float64, device=loss.device)
        host = self._divergence.new_full  # a fill kernel, not a copy from the host
        record = torch.stack(
            [
                host((), self.global_step),
                host((), batch_idx),
                torch.isfinite(x).all().double(),
                base.detach().double(),
                host((), float("nan")) if reg is None else reg.detach().double(),
                host((), reg is not None),
            ]
        )
        first = ~torch.isfinite(loss) & (self._divergence[0] < 0)
        self._divergence = torch.where(first, record, self._divergence)

    def raise_if_diverged(self) -> None:
        """Raise ``Diverged`` when a step's loss was not finite or the backbone's statistics
        (batch-norm running means and variances, which the forward pass updates and the loss
        does not see) have overflowed, naming the step and the terms. One value read; under
        DDP the ranks agree, so all of them stop. Called every ``check_every_n_steps``
        steps, at the end of each epoch and before any checkpoint is made, so that no
        checkpoint holds weights trained on a non-finite loss."""
        stats = [b for b in self.backbone.buffers() if b.is_floating_point()]
        record = self._divergence
        if record is None:
            record = torch.full((6,), -1.0, dtype=torch.float64, device=self.device)
        finite = [torch.isfinite(b).all() for b in stats] or [torch.ones((), dtype=torch.bool)]
        flags = torch.cat([record, torch.stack(finite).all()[None].to(record)])
        step, batch_idx, pixels, base, reg, has_reg, stats_finite = flags.tolist()
        bad = step >= 0 or not stats_finite
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            self._clean_until = self.global_step  # every step before this one was finite
            return
        terms = [(self.objective_name, base)] + ([("cpcc", reg)] if has_reg > 0 else [])
        values = ", ".join(f"{name} {value:.4g}" for name, value in terms)
        culprits = [name for name, value in terms if not math.isfinite(value)]
        overflowed = [
            f"backbone.{name}"
            for name, b in self.backbone.named_buffers()
            if b.is_floating_point() and not torch.isfinite(b).all()
        ]
        if step >= 0:
            what = (" and ".join(culprits) or "the loss") + f" not finite ({values})"
            if not pixels:
                what += "; the batch holds non-finite pixels"
            where = f"step {int(step)} (epoch {self.current_epoch}, batch {int(batch_idx)})"
        else:
            what = f"{overflowed[0]} not finite ({len(overflowed)} statistics)"
            last = max(self.global_step - 1, 0)
            steps = f"{self._clean_until}-{last}" if self._clean_until < last else f"{last}"
            where = f"step {steps} (epoch {self.current_epoch})"
        raise Diverged(
            f"training diverged at {where}: {what}; no checkpoint holds weights trained after it"
        )

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        if self.global_step % self.check_every_n_steps == 0:
            self.raise_if_diverged()

    def on_train_epoch_end(self) -> None:
        self.raise_if_diverged()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.raise_if_diverged()
        checkpoint["hierot_stage"] = self._stage

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """The objective's stage as saved; for a checkpoint without one (made before stages
        were saved), the stage of the epoch it was saved in."""
        stage = checkpoint.get("hierot_stage")
        if stage is None and self._trainer is not None and "epoch" in checkpoint:
            stage = self._stage_at(int(checkpoint["epoch"]))[0]
        if stage is not None:
            self._stage = int(stage)
            self.objective.set_stage(self._stage)

    def _eval_step(self, split: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, y = batch
        z, scores = self(x)  # the objective's class scores
        metrics, split_cpcc = self._split_metrics(split)
        metrics.update(scores, y)  # the loss too (MeanCrossEntropy)
        if self._split_cpcc_due(split):
            split_cpcc.update(z, y)

    def _split_metrics(self, split: str) -> tuple[MetricCollection, SplitCPCC]:
        """The metrics of the ``val`` or ``test`` split and its TestCPCC."""
        if split == "val":
            return self.val_metrics, self.val_cpcc
        return self.test_metrics, self.test_cpcc

    def _split_cpcc_due(self, split: str) -> bool:
        """``val/cpcc`` runs every ``val_cpcc_every`` epochs and after the last one."""
        if split != "val" or self.val_cpcc_every == 1 or self._trainer is None:
            return True
        epoch = self.current_epoch + 1
        return epoch % self.val_cpcc_every == 0 or epoch >= (self.trainer.max_epochs or 0)

    def _eval_end(self, split: str) -> None:
        metrics, split_cpcc = self._split_metrics(split)
        values = metrics.compute()
        metrics.reset()
        if self._split_cpcc_due(split):
            cpccs = split_cpcc.compute()
            split_cpcc.reset()
            values.update({f"{split}/{name}": value for name, value in cpccs.items()})
            self._note_undefined(split, split_cpcc.undefined, split_cpcc.evaluated)
        shown = {f"{split}/acc_fine", f"{split}/cpcc"} & set(values)
        # torchmetrics already reduced these over ranks: every rank holds the same values.
        for keys, bar in ((shown, True), (set(values) - shown, False)):
            self.log_dict({k: values[k] for k in sorted(keys)}, prog_bar=bar, sync_dist=True)

    def _note_undefined(self, split: str, undefined: Mapping[str, str], samples: int) -> None:
        """Record ``split``'s undefined CPCCs (``{name: why}`` over ``samples`` samples) in
        ``self.undefined``, and log why for each key not logged before (rank zero, not in
        Lightning's sanity check, whose few batches say nothing of the split)."""
        keys = {f"{split}/{name}": why for name, why in undefined.items()}
        self.undefined = {k: v for k, v in self.undefined.items() if not k.startswith(f"{split}/")}
        self.undefined.update(keys)
        trainer = self._trainer
        if trainer is not None and (trainer.sanity_checking or not trainer.is_global_zero):
            return
        new = {k: v for k, v in keys.items() if k not in self._undefined_logged}
        for line in undefined_lines(new, split, samples):
            log.warning("%s", line)
        self._undefined_logged |= set(new)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def predict_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        """Features, class scores (``forward``'s: the objective's, the head's logits for
        most) and labels of a batch, in float32 (what ``hierot.evaluate`` collects)."""
        x, y = batch
        z, logits = self(x)
        return {"z": z.float(), "logits": logits.float(), "y": y}

    def _stages(self) -> list[int]:
        """The objective's stages in epochs (one stage of every epoch for most)."""
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        if max_epochs is None or max_epochs < 0:
            return [max_epochs or 0]
        return self.objective.stage_epochs(max_epochs)

    def _stage_at(self, epoch: int) -> tuple[int, int]:
        """``(stage, its first epoch)`` of ``epoch``."""
        start = 0
        stages = self._stages()
        for i, length in enumerate(stages):
            if epoch < start + length or i == len(stages) - 1:
                return i, start
            start += length
        return 0, 0

    @property
    def in_last_stage(self) -> bool:
        """Whether the epoch being trained is in the objective's last stage (always, for an
        objective of one stage): where model selection and early stopping act
        (``hierot.stages``)."""
        if self._trainer is None:
            return True
        return self._stage_at(self.current_epoch)[0] == len(self._stages()) - 1

    def setup(self, stage: str) -> None:
        if stage == "fit" and self._trainer is not None and self.objective.unused_parameters:
            self._find_unused_parameters()
        if stage == "fit" and self._trainer is not None and not self.trainer.fast_dev_run:
            # A stage without an epoch, or stages counted in steps: one line before training.
            check_stages(self.objective_name, self.objective.options, self.trainer.max_epochs,
                         self.trainer.max_steps)  # fmt: skip

    def _find_unused_parameters(self) -> None:
        """Have DDP look for the parameters without a gradient every step, for an objective
        whose stages leave some unused (``Objective.unused_parameters``): otherwise DDP
        averages no gradient of such a step and stops at the next. Lightning's
        ``DDPStrategy`` passes these options to ``DistributedDataParallel`` when it wraps the
        model, after ``setup``; other strategies have none."""
        options = getattr(self.trainer.strategy, "_ddp_kwargs", None)
        if isinstance(options, dict):
            options["find_unused_parameters"] = True

    def update_stage(self) -> None:
        """Enter the stage of the epoch about to be trained, if it is a new one: the
        objective's ``set_stage`` and ``enter_stage`` (a new fine head, ...), then a fresh
        optimizer and schedule. Only a real transition does this: the stage is saved with
        every checkpoint, so a run resumed inside a stage goes on with the optimizer state
        and schedule its checkpoint restored. Called by ``hierot.stages.StageSwitch``
        before the other callbacks (the learning-rate monitor then sees the new stage's
        rate), and by ``on_train_start`` and ``on_train_epoch_start`` without it."""
        stage = self._stage_at(self.current_epoch)[0]
        if stage == self._stage:
            return
        previous, self._stage = self._stage, stage
        self.objective.set_stage(stage)
        if previous is None:  # the run's first epoch: the optimizer was built for it
            return
        self.objective.enter_stage(stage, self)
        self.trainer.strategy.setup_optimizers(self.trainer)

    def on_train_start(self) -> None:
        # A run resumed from a checkpoint of a stage's last batch continues in the next
        # epoch without Lightning calling on_train_epoch_start for it.
        self.update_stage()

    def on_train_epoch_start(self) -> None:
        self.update_stage()

    def configure_optimizers(self):
        # The stage restored from a checkpoint (configure_optimizers runs after the weights
        # are loaded and before the optimizer state is), a transition's new stage, or the
        # first epoch's.
        if self._stage is None:
            self._stage = self._stage_at(self.current_epoch)[0] if self._trainer is not None else 0
            self.objective.set_stage(self._stage)
        stage = self._stage
        params: object = self.parameters()
        if self.head_weight_decay is not None:
            head = {id(p) for p in self.head.parameters()}
            params = [
                {"params": [p for p in self.parameters() if id(p) not in head]},
                {"params": list(self.head.parameters()), "weight_decay": self.head_weight_decay},
            ]
        if self.optimizer_factory is None:
            raise ConfigError(
                "this model was loaded to be evaluated (no optimizer): train or fine-tune it "
                "through python -m hierot.train"
            )
        optimizer = self.optimizer_factory(params)
        scale = self.objective.lr_scale(stage)
        if scale != 1.0:  # before the schedule reads the groups' rates as its base
            for group in optimizer.param_groups:
                group["lr"] *= scale
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        stages = self._stages()
        if len(stages) > 1:  # the schedule spans this stage's share of the steps
            total = total * stages[stage] // max(sum(stages), 1)
        scheduler = self.scheduler_factory(optimizer, total_steps=max(total, 1))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

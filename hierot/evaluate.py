"""Evaluate a checkpoint: ``python -m hierot.evaluate ckpt=PATH [data overrides]``.

Collects the test split's features and logits, writes ``metrics.json`` (TestCPCC under every
distance, accuracy at every level and along the full path, top-k, mistake severity, AHD@k,
HOPS, the making-better-mistakes table under each decoding, retrieval mAP at every level)
and two figures into its run directory (``evaluations/<date>/<time>/``):
``dendrograms.png`` (label tree next to the learned class distances) and ``embedding.png``
(test features on two principal components, colored by coarse class).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from hierot.arguments import check_arguments
from hierot.checkpoints import (
    check_checkpoint,
    load_module,
    run_config,
    run_data,
    run_file,
    run_group_overrides,
    use_run_groups,
)
from hierot.checks import run_checks
from hierot.cli import one_line_errors, run_checked
from hierot.config import (
    build,
    check_added_keys,
    check_target_arguments,
    compose_config,
    one_line,
    sweep_variants,
)
from hierot.correlation import NO_DISTANCE, present_tree_distances, reported_cpcc, undefined_lines
from hierot.data import HierarchyDataModule
from hierot.distances import DEFAULT_MEMORY_MB, class_distances, evaluation_options
from hierot.distances.emd import UNFINISHED_PLANS
from hierot.errors import ConfigError
from hierot.figures import embedding_figure, tree_and_learned_dendrograms
from hierot.hierarchy import Hierarchy
from hierot.logs import progress_bar_wanted
from hierot.metrics import evaluate_features
from hierot.metrics.decoding import DECODINGS
from hierot.metrics.epoch import class_subsample
from hierot.metrics.features import (
    EXTRA_FAMILIES,
    NEEDS_TRAIN_FEATURES,
    feature_space_metrics,
    require_integers,
)
from hierot.metrics.node_eval import node_metrics, write_operating_curve
from hierot.metrics.ood import ood_metrics
from hierot.models import HierarchyModule
from hierot.models.module import level_keys
from hierot.objectives import DEFAULT_OBJECTIVE
from hierot.overrides import keys
from hierot.report import format_report, shown, write_metrics

log = logging.getLogger(__name__)
# Classes a figure shows at most: a dendrogram of more leaves is unreadable.
FIGURE_CLASSES = 200


def check_run_classes(ckpt: Path, classes: list[str], key: str = "ckpt") -> None:
    """The classes about to be evaluated are those the checkpoint's run trained on, in the
    same order (its ``data.json``; a checkpoint moved out of its run is not checked); the
    error names config key ``key``."""
    trained = (run_data(ckpt) or {}).get("classes")
    if not isinstance(trained, list) or trained == classes:
        return
    path = run_file(ckpt, "data.json")
    if len(trained) != len(classes):
        detail = f"{len(trained)} classes there, {len(classes)} here"
    else:
        i = next(i for i, (a, b) in enumerate(zip(trained, classes, strict=True)) if a != b)
        detail = f"class {i} is '{trained[i]}' there and '{classes[i]}' here"
    raise ConfigError(
        f"{key}: the data differs from what its run trained on ({path}: {detail}); "
        f"evaluate with the run's data (drop data overrides such as data.split)"
    )


def load_model(ckpt: Path, cfg: DictConfig, datamodule: HierarchyDataModule) -> HierarchyModule:
    """The checkpoint's module on this data's tree (the classes were checked to be the run's)."""
    k = datamodule.hierarchy.num_classes
    return load_module(
        ckpt, "ckpt", build(cfg.backbone, "backbone"), datamodule.hierarchy,
        fits=f"backbone={cfg.backbone.name} with {k} classes of data",
        level_names=datamodule.level_names,
    )  # fmt: skip


def check_evaluate(cfg: DictConfig) -> Path:
    """The checked checkpoint path; raises ``ConfigError`` on the first bad value: the
    metrics' own checks (``hierot.checks``, ``config="evaluate"``), then this entry
    point's settings."""
    ckpt = check_checkpoint(None if OmegaConf.is_missing(cfg, "ckpt") else cfg.ckpt, "ckpt")
    run_checks(cfg, "evaluate")
    if cfg.get("decode_parent_ckpt") is not None:
        check_checkpoint(cfg.decode_parent_ckpt, "decode_parent_ckpt")
    require_integers(cfg.ood_knn_k, "ood_knn_k", "[50, 200]")
    if cfg.get("ood") is not None:
        check_target_arguments(cfg.ood, "ood")
    if not isinstance(cfg.figures, bool):
        raise ConfigError(f"figures must be true or false, got {cfg.figures!r}")
    trainer = {k: cfg.get(k) for k in ("accelerator", "precision", "enable_progress_bar")}
    check_arguments(L.Trainer, trainer, "", "lightning.Trainer")
    for key in ("data", "backbone"):
        check_target_arguments(cfg[key], key)
    return ckpt


def predict_split(
    trainer: L.Trainer, model: HierarchyModule, datamodule: HierarchyDataModule, split: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, labels)`` of one split of ``datamodule`` (``test`` or ``train``, the
    training images without augmentation), in order."""
    datamodule.predict_split = split
    try:
        batches = trainer.predict(model, datamodule=datamodule)
    finally:
        datamodule.predict_split = "test"
    return (
        torch.cat([b["z"] for b in batches]),  # type: ignore[index]
        torch.cat([b["y"] for b in batches]),  # type: ignore[index]
    )


def build_ood(cfg: DictConfig, datamodule: HierarchyDataModule) -> HierarchyDataModule | None:
    """The ``ood=`` data module (None without one), its images normalised as the model's
    own data; a one-line error if its images are not the size the model was trained on."""
    if cfg.get("ood") is None:
        return None
    ood = build(cfg.ood, "ood")
    if ood.image_size != datamodule.image_size:
        raise ConfigError(
            f"ood: its images are {ood.image_size} px, the model's data "
            f"{datamodule.image_size} px (set ood.image_size={datamodule.image_size})"
        )
    ood._mean, ood._std = datamodule._mean, datamodule._std
    return ood


def ood_name(cfg: DictConfig) -> str:
    """The ``ood=`` option chosen (its data module's class outside a Hydra run)."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("ood")
        if choice:
            return str(choice)
    return str(cfg.ood._target_).rsplit(".", 1)[-1]


def chosen_families(metrics: object) -> list[str]:
    """The extra metric families of ``metrics=`` (a name or a list; ``all`` is every one)."""
    names = [metrics] if isinstance(metrics, str) else list(metrics)  # type: ignore[call-overload]
    return list(EXTRA_FAMILIES) if "all" in names else names


def evaluate(cfg: DictConfig) -> dict[str, object]:
    """Every configured metric of a checkpoint on its data's test split, written to
    ``metrics.json`` (and the figures) in ``output_dir``; returns the metrics."""
    ckpt = check_evaluate(cfg)
    UNFINISHED_PLANS.reset()  # this evaluation's (a multirun evaluates in one process)
    out = Path(cfg.output_dir)
    datamodule = build(cfg.data, "data")
    check_run_classes(ckpt, list(datamodule.hierarchy.leaves))
    lca = datamodule.lca_heights()  # a shipped file is read (and its errors raised) first
    ood = build_ood(cfg, datamodule)
    model = load_model(ckpt, cfg, datamodule)
    trainer = evaluation_trainer(cfg, out)
    z, logits, y = stacked(trainer.predict(model, datamodule=datamodule), ("z", "logits", "y"))

    hierarchy = datamodule.hierarchy
    names = level_keys(hierarchy, datamodule.level_names)
    distances = OmegaConf.to_container(cfg.distances, resolve=True)
    undefined: dict[str, str] = {}  # each undefined CPCC's key and why
    heads = level_logits(model, z)
    other = parent_model_logits(cfg, trainer, datamodule, y)
    metrics = split_metrics(cfg, z, logits, y, hierarchy, names, distances, lca, undefined,  # type: ignore[arg-type]
                            heads, other)  # fmt: skip
    metrics.update(extra_metrics(cfg, trainer, model, datamodule, ood, z, y, names))
    metrics.update(node_family(cfg, logits, y, hierarchy, out))
    method, options = run_distance(model)
    if distances.get(method) == options:  # type: ignore[union-attr]
        metrics["test/cpcc"] = metrics[f"test/cpcc_{method}"]
        why = undefined.get(f"test/cpcc_{method}")
    else:
        value, why = reported_cpcc(
            z, y, hierarchy.tree_distances(), method, cfg.memory_mb, **options
        )
        metrics["test/cpcc"] = float(value)
    if why is not None:
        undefined = {"test/cpcc": why, **undefined}
    metrics.update(run_record(ckpt, model, int(y.numel())))
    out.mkdir(parents=True, exist_ok=True)
    if cfg.figures:
        fine = names[max(hierarchy.levels)]
        scores = (
            f"acc_{fine} {metrics[f'test/acc_{fine}']:.3f}, "
            f"TestCPCC ({method}) {shown(metrics['test/cpcc'])}"
        )
        write_figures(out, z, y, hierarchy, method, options, names, cfg.memory_mb, scores)
    write_metrics(out / "metrics.json", metrics)
    for line in undefined_lines(undefined, "test", int(y.numel())):
        log.warning("%s", line)
    columns = tuple(way for way in DECODINGS if way != "argmax")
    log.info("every metric of metrics.json, by family:\n\n%s\n", format_report(metrics, columns))
    if (unfinished := UNFINISHED_PLANS.summary(during="the evaluation")) is not None:
        log.warning("%s", unfinished)
    log.info("outputs: %s", out)
    return metrics


def stacked(batches: object, names: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    """Each of ``names`` of ``trainer.predict``'s batches, concatenated in order."""
    return tuple(torch.cat([b[name] for b in batches]) for name in names)  # type: ignore[attr-defined, index]


def split_metrics(
    cfg: DictConfig,
    z: torch.Tensor,
    logits: torch.Tensor,
    y: torch.Tensor,
    hierarchy: Hierarchy,
    names: Mapping[int, str],
    distances: Mapping[str, Mapping[str, object]],
    lca: torch.Tensor,
    undefined: dict[str, str] | None = None,
    heads: Mapping[int, torch.Tensor] | None = None,
    parent_logits: torch.Tensor | None = None,
) -> dict[str, object]:
    """The metrics every evaluation reports (``evaluate_features`` with the config's
    settings): accuracies and mistakes per level, CPCC per distance (NaN where undefined,
    the key and why added to ``undefined``), retrieval; ``heads`` the level heads' logits
    (``level_logits``), ``parent_logits`` the ``decode_parent_ckpt`` model's
    (``parent_model_logits``). A k of ``ahd_k`` above the number of classes ranks them all, which
    one log line says."""
    top_k = OmegaConf.to_container(cfg.top_k) if OmegaConf.is_list(cfg.top_k) else cfg.top_k
    classes = hierarchy.num_classes
    above = [int(k) for k in cfg.ahd_k if k > classes]
    if above:
        log.info(
            "ahd_k: %s above the %d classes: those @k metrics rank all %d classes (as CRM's "
            "top-k does)", ", ".join(map(str, above)), classes, classes,
        )  # fmt: skip
    return evaluate_features(
        z,
        logits,
        y,
        hierarchy,
        names,
        distances,
        top_k,  # type: ignore[arg-type]
        list(cfg.ahd_k),  # type: ignore[arg-type]
        memory_mb=cfg.memory_mb,
        decode=[cfg.decode] if isinstance(cfg.decode, str) else list(cfg.decode),
        crm_cost=cfg.crm_cost,
        lca=lca,
        undefined=undefined,
        level_logits=heads,
        parent_logits=parent_logits,
    )


def parent_model_logits(
    cfg: DictConfig, trainer: L.Trainer, datamodule: HierarchyDataModule, y: torch.Tensor
) -> torch.Tensor | None:
    """The test logits of the ``decode_parent_ckpt`` model (None without one), whose summed
    softmax gives ``hie`` the parents' probabilities: its run's backbone (``config.yaml``;
    this evaluation's without one), checked to have trained on these classes in this order
    (its ``data.json``, and its head's size)."""
    if cfg.get("decode_parent_ckpt") is None:
        return None
    key, hierarchy = "decode_parent_ckpt", datamodule.hierarchy
    path = check_checkpoint(cfg.decode_parent_ckpt, key)
    check_run_classes(path, list(hierarchy.leaves), key)
    saved = run_config(path)
    node = saved.backbone if saved is not None and "backbone" in saved else cfg.backbone
    unloaded = {"pretrained": False, "weights": None}  # the checkpoint's weights replace them
    node = OmegaConf.merge(node, {k: v for k, v in unloaded.items() if k in node})
    fits = f"backbone={node.get('name')} with {hierarchy.num_classes} classes of data"
    model = load_module(path, key, build(node, f"{key} backbone"), hierarchy, fits=fits,
                        level_names=datamodule.level_names)  # fmt: skip
    logits, labels = stacked(trainer.predict(model, datamodule=datamodule), ("logits", "y"))
    if not torch.equal(labels, y):
        raise ConfigError(f"{key}: its test labels came in another order than ckpt's")
    return logits


def node_family(
    cfg: DictConfig, logits: torch.Tensor, y: torch.Tensor, hierarchy: Hierarchy, out: Path
) -> dict[str, float]:
    """The ``nodes`` family when ``metrics=`` asks for it (``node_metrics``, keys
    ``test/nodes/...``), its operating curve written to ``out/operating_curve.csv``;
    nothing otherwise."""
    if "nodes" not in chosen_families(cfg.metrics):
        return {}
    found, curve = node_metrics(
        logits, y, hierarchy, cfg.node_curve_points, cfg.top_down_threshold, cfg.memory_mb
    )
    out.mkdir(parents=True, exist_ok=True)
    write_operating_curve(out / "operating_curve.csv", curve)
    return {f"test/{key}": value for key, value in found.items()}


def level_logits(model: HierarchyModule, z: torch.Tensor) -> dict[int, torch.Tensor] | None:
    """``{level: (N, concepts) logits}`` of the objective's own head for each level above the
    classes (its ``level_logits``, ``mtl``'s), on the test features ``z``; None for an
    objective without level heads."""
    heads = getattr(model.objective, "level_logits", None)
    if heads is None:
        return None
    device = next(model.parameters()).device
    with torch.no_grad():
        return {level: out.float() for level, out in heads(z.to(device)).items()}


def evaluation_trainer(cfg: DictConfig, out: Path) -> L.Trainer:
    """A one-device trainer that only predicts (features of a whole split in one process)."""
    try:
        return L.Trainer(
            accelerator=cfg.accelerator,
            devices=1,
            precision=cfg.precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=progress_bar_wanted(cfg.enable_progress_bar),
            enable_model_summary=False,
            default_root_dir=out,
        )
    except (ValueError, MisconfigurationException, ModuleNotFoundError) as e:
        raise ConfigError(one_line(e)) from None


def extra_metrics(
    cfg: DictConfig,
    trainer: L.Trainer,
    model: HierarchyModule,
    datamodule: HierarchyDataModule,
    ood: HierarchyDataModule | None,
    z: torch.Tensor,
    y: torch.Tensor,
    names: Mapping[int, str],
) -> dict[str, object]:
    """The ``metrics=`` families (feature space, kNN, ...) and the ``ood=`` scores; the
    training split's features are collected once, for whichever needs them."""
    families = chosen_families(cfg.metrics)
    metrics: dict[str, object] = {}
    train = None
    if ood is not None or any(f in families for f in NEEDS_TRAIN_FEATURES):
        train = predict_split(trainer, model, datamodule, "train")
        wanted = {"knn_k": cfg.knn_k if "knn" in families else 0}
        wanted["ood_knn_k"] = max(cfg.ood_knn_k) if ood is not None else 0
        for key, k in wanted.items():
            if k > len(train[1]):
                raise ConfigError(
                    f"{key}: {k} neighbours, but the training split has {len(train[1])} images"
                )
    hierarchy = datamodule.hierarchy
    if families:
        metrics.update(
            feature_space_metrics(
                z, y, hierarchy, names, families, train, cfg.knn_k, memory_mb=cfg.memory_mb
            )
        )
    if ood is not None and train is not None:
        z_out, _ = predict_split(trainer, model, ood, "test")
        numbers = ood_metrics(
            train[0].cpu(), train[1].cpu(), z.cpu(), z_out.cpu(), list(cfg.ood_knn_k),
            memory_mb=cfg.memory_mb,
        )  # fmt: skip
        metrics.update({f"ood/{key}": float(value) for key, value in numbers.items()})
        metrics.update({"ood_set": ood_name(cfg), "ood_samples": int(z_out.shape[0])})
    return metrics


def run_distance(model: HierarchyModule) -> tuple[str, dict[str, object]]:
    """The distance and options ``test/cpcc`` is measured with, as training defines it: the
    run's own (which may differ from the shared options of the ``cpcc_<method>`` columns),
    ``l2`` for a run without CPCC; a random distance left at ``seed=None`` evaluates with
    ``hierot.distances.EVALUATION_SEED``, as the training run's ``test/cpcc`` did."""
    run_dist = model.hparams.get("dist", "l2")
    if run_dist == NO_DISTANCE:
        return "l2", {}
    return run_dist, evaluation_options(run_dist, model.hparams.get("dist_options", {}))


def run_record(ckpt: Path, model: HierarchyModule, samples: int) -> dict[str, object]:
    """What was evaluated: the checkpoint, its run's objective, distance, weight and seed."""
    saved = run_config(ckpt)
    return {
        "checkpoint": str(ckpt),
        "objective": model.hparams.get("objective", DEFAULT_OBJECTIVE),
        "dist": model.hparams.get("dist", "l2"),
        "lam": model.hparams.get("lam"),
        "seed": saved.get("seed") if saved is not None else None,  # the training run's
        "test_samples": samples,
    }


def figure_classes(y: torch.Tensor, limit: int = FIGURE_CLASSES) -> torch.Tensor | None:
    """The classes the figures show when ``y`` holds more than ``limit``: a sorted sample of
    ``limit`` of them drawn with seed 0 (the same split always shows the same ones); None
    when all fit."""
    present = y.unique().cpu()
    chosen = class_subsample(present.numel(), limit, seed=0)
    return None if chosen is None else present[chosen]


def write_figures(
    out: Path,
    z: torch.Tensor,
    y: torch.Tensor,
    hierarchy: Hierarchy,
    method: str,
    options: Mapping[str, object],
    names: Mapping[int, str],
    memory_mb: float = DEFAULT_MEMORY_MB,
    scores: str = "",
) -> None:
    """``dendrograms.png`` (label tree next to the run's distances between the test classes)
    and ``embedding.png`` (features coloured by top-level class, marked by second-level
    class) in ``out``; ``scores`` (e.g. the fine accuracy and TestCPCC) go in the titles.

    Above ``FIGURE_CLASSES`` classes both figures show the test samples of a seeded sample
    of that many classes (``figure_classes``), and their titles say so."""
    shown = figure_classes(y)
    if shown is not None:
        kept = torch.isin(y, shown.to(y.device))
        note = f"{shown.numel()} of {y.unique().numel()} classes, a seeded sample"
        z, y = z[kept], y[kept]
        scores = f"{scores}; {note}" if scores else note
    levels = sorted(hierarchy.levels)
    top = levels[0]
    group_names, fine_to_top = hierarchy.level_map(top)
    classes, learned = class_distances(z, y, method, memory_mb, **options)
    tree = present_tree_distances(classes, hierarchy.tree_distances(), learned.numel())
    leaf_names = [hierarchy.leaves[int(c)] for c in classes]
    if len(leaf_names) >= 3:
        tree_and_learned_dendrograms(
            tree, learned, leaf_names, out / "dendrograms.png",
            f"learned {method} distances ({scores})" if scores else f"learned {method} distances",
            groups=fine_to_top[classes.cpu()].tolist(), group_names=group_names,
        )  # fmt: skip
    fine_to_top = fine_to_top.to(y.device)
    sub: dict[str, object] = {}
    described = f"colour: {names[top]}"
    if len(levels) > 1:
        sub_names, fine_to_sub = hierarchy.level_map(levels[1])
        parent = torch.zeros(len(sub_names), dtype=torch.long)
        parent[fine_to_sub] = fine_to_top.cpu()
        sub = {
            "subgroups": fine_to_sub.to(y.device)[y],
            "subgroup_names": sub_names,
            "subgroup_parent": parent.tolist(),
        }
        described += f", marker: {names[levels[1]]}"
    title = "test features on 2 principal components"
    embedding_figure(
        z, fine_to_top[y], group_names, out / "embedding.png",
        f"{title}\n{scores}; {described}" if scores else f"{title}\n{described}", **sub,
    )  # fmt: skip


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def _run(cfg: DictConfig) -> None:
    with one_line_errors(Path(cfg.output_dir), "evaluate"):
        overrides = list(HydraConfig.get().overrides.task)
        use_run_groups(cfg, overrides, check_evaluate(cfg))
        evaluate(cfg)


# Training-only keys a user may carry over from a train command, with what evaluate does.
TRAIN_ONLY = {
    "dist": "test/cpcc uses the checkpoint's own distance and test/cpcc_<method> each one "
    "under distances (drop one with ~distances.emd)",
    "lam": "lam only shapes training",
}


def precheck(overrides: list[str]) -> None:
    """Compose and check the command line before Hydra creates the run directory."""
    for key in sorted({k.split(".")[0] for k in keys(overrides)}):
        if key in TRAIN_ONLY:
            raise ConfigError(f"{key}: evaluate takes no {key}=; {TRAIN_ONLY[key]}")
    for job in sweep_variants(overrides):  # every value of a sweep (-m)
        cfg = compose_config(job, config_name="evaluate")
        check_added_keys(job, cfg)
        check_evaluate(cfg)


def main() -> None:
    run_checked(precheck, _run, run_group_overrides)


if __name__ == "__main__":
    main()

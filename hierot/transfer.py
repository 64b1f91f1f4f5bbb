"""Transfer to target classes: ``python -m hierot.transfer ckpt=PATH [shots=1] [level=fine]``.

The OT-CPCC downstream protocol: the checkpoint's encoder, frozen (evaluation mode, so batch
norm statistics stay those of pretraining), and a new linear head fitted on ``shots``
images per class of ``level`` drawn from the target split's training images, then tested
on the target split's test images. Features are computed once, without augmentation, so
the head trains in milliseconds. Writes ``metrics.json`` (``transfer/acc_<level>``,
``transfer/acc_top<k>``) into its run directory (``transfers/<date>/<time>/``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from hierot.checkpoints import (
    check_checkpoint,
    load_module,
    run_data,
    run_file,
    run_group_overrides,
    use_run_groups,
)
from hierot.cli import one_line_errors, run_checked
from hierot.config import (
    build,
    check_added_keys,
    check_integer,
    check_number,
    check_target_arguments,
    compose_config,
    sweep_variants,
)
from hierot.data import HierarchyDataModule
from hierot.errors import ConfigError
from hierot.models.module import level_keys
from hierot.overrides import set_values
from hierot.report import format_table, write_metrics

log = logging.getLogger(__name__)


def check_transfer(cfg: DictConfig) -> Path:
    """The checked checkpoint path; raises ``ConfigError`` on the first bad value."""
    ckpt = check_checkpoint(None if OmegaConf.is_missing(cfg, "ckpt") else cfg.ckpt, "ckpt")
    for key in ("shots", "top_k", "head.epochs", "head.step"):
        check_integer(cfg, key, 1)
    for key in ("head.lr", "head.momentum", "head.weight_decay", "head.gamma"):
        check_number(cfg, key, 0)
    check_integer(cfg, "seed", 0)
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda: torch finds no CUDA device here (device=auto uses one if any)"
        )
    for key in ("data", "backbone"):
        check_target_arguments(cfg[key], key)
    return ckpt


def source_run(ckpt: Path) -> dict[str, object]:
    """The checkpoint's run's ``data.json``; transfer needs a model pretrained on a source
    split, so that the target classes (or subpopulations) are new to it."""
    path = run_file(ckpt, "data.json")
    data = run_data(ckpt)
    if data is None:
        raise ConfigError(
            f"ckpt: {ckpt} has no readable {path.name} beside its checkpoints/ folder; "
            f"transfer needs a run trained with data.split=source"
        )
    if data.get("split") != "source":
        raise ConfigError(
            f"ckpt: its run trained on data.split={data.get('split')!r} ({path}); transfer "
            f"needs a run trained with data.split=source"
        )
    return data


def kshot_indices(labels: torch.Tensor, shots: int, seed: int) -> torch.Tensor:
    """Indices of ``shots`` samples of every label (all of a label's samples if it has
    fewer), drawn uniformly with ``seed``; sorted."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(labels.numel(), generator=generator)
    # A stable sort by label keeps the random order within each label.
    by_label = order[torch.sort(labels[order], stable=True).indices]
    sorted_labels = labels[by_label]
    first = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.arange(labels.numel()) - first
    return by_label[rank < shots].sort().values


@torch.no_grad()
def features(
    encoder: nn.Module,
    dataset: Dataset,
    datamodule: HierarchyDataModule,
    device: str,
    split: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """((N, d) features, (N,) labels) of a dataset, in order, the encoder in eval mode;
    progress is logged about every tenth of the way (``split`` names it). The batches come
    from the data module's own loader (``eval_loader``: its workers and, on CUDA, pinned
    memory, copied without blocking), as in training and ``hierot.evaluate``."""
    loader = datamodule.eval_loader(dataset)
    zs, ys = [], []
    total, done, start = len(dataset), 0, time.perf_counter()  # type: ignore[arg-type]
    every = max(1, len(loader) // 10)
    for i, (x, y) in enumerate(loader, start=1):
        zs.append(encoder(datamodule.normalize(x.to(device, non_blocking=True))).float().cpu())
        ys.append(torch.as_tensor(y))
        done += len(x)
        if i % every == 0 or i == len(loader):
            took = time.perf_counter() - start
            log.info("features of the %s split: %d/%d images (%.0f s)", split, done, total, took)
    return torch.cat(zs), torch.cat(ys)


def fit_head(
    z: torch.Tensor, y: torch.Tensor, num_classes: int, head: Mapping[str, float], seed: int
) -> nn.Linear:
    """A linear classifier on fixed features: full-batch SGD with a step schedule."""
    torch.manual_seed(seed)
    linear = nn.Linear(z.shape[1], num_classes)
    optimizer = torch.optim.SGD(
        linear.parameters(), lr=head["lr"], momentum=head["momentum"],
        weight_decay=head["weight_decay"],
    )  # fmt: skip
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, int(head["step"]), head["gamma"])
    epochs = int(head["epochs"])
    every = max(1, epochs // 5)
    for epoch in range(1, epochs + 1):
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(z), y)
        loss.backward()
        optimizer.step()
        schedule.step()
        if epoch % every == 0 or epoch == epochs:
            log.info("linear head: epoch %d/%d, loss %.4f", epoch, epochs, float(loss.detach()))
    return linear


def load_encoder(ckpt: Path, cfg: DictConfig) -> nn.Module:
    """The backbone of the checkpoint's module (loaded on its run's own tree), in eval mode."""
    module = load_module(
        ckpt, "ckpt", build(cfg.backbone, "backbone"), fits=f"backbone={cfg.backbone.name}"
    )
    return module.backbone.eval()


def transfer(cfg: DictConfig) -> dict[str, object]:
    ckpt = check_transfer(cfg)
    source = source_run(ckpt)
    datamodule = build(cfg.data, "data")
    split = getattr(datamodule, "split", None)
    if split != "target":
        raise ConfigError(f"data.split: transfer tests on a target split, got {split!r}")
    hierarchy = datamodule.hierarchy
    names = level_keys(hierarchy, datamodule.level_names)
    by_name = {name: lvl for lvl, name in names.items()}
    if cfg.level not in by_name:
        raise ConfigError(f"level: unknown '{cfg.level}'; this tree has {', '.join(by_name)}")
    level_names, fine_to_level = hierarchy.level_map(by_name[cfg.level])
    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    )
    encoder = load_encoder(ckpt, cfg).to(device)
    datamodule.setup("fit")
    datamodule.setup("test")
    z_train, y_train = features(encoder, datamodule.plain_train_set(), datamodule, device, "train")
    z_test, y_test = features(encoder, datamodule.test_set, datamodule, device, "test")
    y_train, y_test = fine_to_level[y_train], fine_to_level[y_test]
    chosen = kshot_indices(y_train, cfg.shots, cfg.seed)
    head = fit_head(z_train[chosen], y_train[chosen], len(level_names), cfg.head, cfg.seed)
    with torch.no_grad():
        logits = head(z_test)
    k = min(cfg.top_k, len(level_names))
    top = logits.topk(k, dim=1).indices
    metrics: dict[str, object] = {
        f"transfer/acc_{cfg.level}": float((top[:, 0] == y_test).float().mean()),
        f"transfer/acc_top{k}": float((top == y_test[:, None]).any(1).float().mean()),
        "checkpoint": str(ckpt),
        "source_classes": len(source.get("classes", [])),  # type: ignore[arg-type]
        "data.split": split,
        "level": cfg.level,
        "classes": len(level_names),
        "shots": int(cfg.shots),
        "seed": int(cfg.seed),
        "train_images": int(chosen.numel()),
        "test_images": int(y_test.numel()),
    }
    out = Path(cfg.output_dir)
    write_metrics(out / "metrics.json", metrics)
    log.info("%s", format_table(metrics, prefix="transfer/"))
    log.info("outputs: %s", out)
    return metrics


def target_data(cfg: DictConfig, overrides: list[str], ckpt: Path) -> None:
    """The checkpoint's run's data and backbone, with ``data.split=target`` unless the
    command line sets ``data.split``."""
    use_run_groups(cfg, overrides, ckpt)
    if not set_values(overrides, "data.split"):
        if "split" not in cfg.data:
            raise ConfigError(f"data.split: {cfg.data.get('_target_')} has no source/target split")
        cfg.data.split = "target"


@hydra.main(config_path="conf", config_name="transfer", version_base="1.3")
def _run(cfg: DictConfig) -> None:
    with one_line_errors(Path(cfg.output_dir), "transfer"):
        overrides = list(HydraConfig.get().overrides.task)
        target_data(cfg, overrides, check_transfer(cfg))
        transfer(cfg)


def precheck(overrides: list[str]) -> None:
    """Compose and check the command line (every value of a sweep) before Hydra creates a
    run directory."""
    for job in sweep_variants(overrides):
        cfg = compose_config(job, config_name="transfer")
        check_added_keys(job, cfg)
        source_run(check_transfer(cfg))


def main() -> None:
    run_checked(precheck, _run, run_group_overrides)


if __name__ == "__main__":
    main()

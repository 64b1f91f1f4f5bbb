"""Predict with a checkpoint: ``python -m hierot.predict ckpt=PATH images=DIR|IMAGE|LIST``.

Runs the checkpoint's model over image files and writes ``predictions.csv`` into its run
directory (``predictions/<date>/<time>/``, or ``output=``): per image its ``top_k`` classes
with their probabilities, the node of highest summed probability at every level of the tree
and, with ``decode=``, each decoding's class and its ancestors; ``features=true`` adds the
(N, d) features as ``.npy`` beside it. The images are batched and transformed as the run's
data module transforms its test images (``file_transform``, ``normalize``); the backbone,
tree and level names are the run's, so its training data need not be present.

An unreadable or non-image file stops the command with one line naming it before anything is
written, unless ``skip_unreadable=true``: then the others are predicted, and the unreadable
ones are named in a warning and listed in ``<output stem>_unreadable.txt``.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from hierot.checkpoints import load_trained, run_hierarchy, saved_config
from hierot.cli import fail, one_line_errors, run_checked
from hierot.config import build, check_added_keys, compose_config, sweep_variants
from hierot.data import HierarchyDataModule
from hierot.data.images import IMAGE_EXTENSIONS, Transform, read_image
from hierot.errors import ConfigError, DataError, DiskFull, require_integer
from hierot.hierarchy import Hierarchy
from hierot.hierarchy.distance_files import read_class_distances
from hierot.metrics.decoding import DECODINGS, check_decode, marginal_predictions, ranked_classes
from hierot.models import HierarchyModule
from hierot.models.module import level_keys
from hierot.writes import write_atomic

log = logging.getLogger(__name__)
# The costs CRM can minimise (as ``hierot.evaluate``'s ``crm_cost``).
CRM_COSTS = ("lca", "path")
# Unreadable files a warning names (all of them go to the ``_unreadable.txt`` list).
NAMED = 5


def decodings(value: object) -> list[str]:
    """``decode`` as a list of decodings (null: none); a one-line error on a bad one."""
    if value is None:
        return []
    if isinstance(value, str):
        values, keys = [value], ["decode"]
    elif OmegaConf.is_list(value) or isinstance(value, list):
        values = list(value)  # type: ignore[call-overload]
        keys = [f"decode[{i}]" for i in range(len(values))]
    else:
        raise ConfigError(f"decode must be null, {', '.join(DECODINGS)} or a list, got {value!r}")
    try:
        return list(dict.fromkeys(check_decode(v, k) for v, k in zip(values, keys, strict=True)))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_settings(cfg: DictConfig) -> None:
    """Every setting but the files (``ckpt``, ``images``): a ``ConfigError`` naming the first
    bad one."""
    require_integer(cfg.top_k, "top_k", 1)
    decodings(cfg.decode)
    if cfg.crm_cost not in CRM_COSTS:
        raise ConfigError(f"crm_cost: unknown cost {cfg.crm_cost!r}; available: lca, path")
    for key in ("features", "skip_unreadable"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"{key} must be true or false, got {cfg[key]!r}")
    if cfg.output is not None and not str(cfg.output).endswith(".csv"):
        raise ConfigError(f"output must be a .csv path (or null), got {cfg.output!r}")
    if cfg.batch_size is not None:
        require_integer(cfg.batch_size, "batch_size", 1)
    if cfg.num_workers is not None:
        require_integer(cfg.num_workers, "num_workers", 0)
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda: torch finds no CUDA device here (device=auto uses one)")


def check_predict(cfg: DictConfig) -> tuple[Path, DictConfig]:
    """The checked checkpoint and its run's saved config (its targets checked before any is
    instantiated); raises ``ConfigError`` on the first bad value."""
    ckpt, saved = saved_config(None if OmegaConf.is_missing(cfg, "ckpt") else cfg.ckpt)
    if OmegaConf.is_missing(cfg, "images") or cfg.images in (None, ""):
        raise ConfigError("images: give a folder of images, an image or a list, images=PATH")
    images = Path(str(cfg.images)).expanduser()
    if not images.exists():
        raise ConfigError(f"images: no such folder or file: {images}")
    check_settings(cfg)
    if cfg.output is not None:
        check_writable(Path(str(cfg.output)).expanduser())
    return ckpt, saved


def check_writable(path: Path) -> None:
    """A one-line error, before any image is read, when ``path`` cannot be written: its
    nearest existing folder is a file or not writable (missing folders below it are made)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if path.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"output: cannot write {path} (not a writable place)")


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def folder_images(folder: Path) -> list[tuple[str, Path]]:
    """``(shown path, file)`` of the image files under ``folder`` (subfolders included,
    hidden ones not), sorted; files of other extensions are left out and counted in the log."""
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )  # fmt: skip
    others = [p for p in files if not is_image_name(p)]
    if others:
        shown = ", ".join(str(p.relative_to(folder)) for p in others[:NAMED])
        more = f" and {len(others) - NAMED} more" if len(others) > NAMED else ""
        log.info(
            "images: %d file%s in %s without an image extension left out: %s%s",
            len(others), "s" if len(others) > 1 else "", folder, shown, more,
        )  # fmt: skip
    found = [(str(p), p) for p in files if is_image_name(p)]
    if not found:
        raise DataError(f"images: no image files in {folder} ({', '.join(IMAGE_EXTENSIONS)})")
    return found


def listed_images(listing: Path) -> list[tuple[str, Path]]:
    """``(line, file)`` of each path a text file lists, one per line (blank lines and lines
    starting with ``#`` skipped; relative paths from the list's folder); a missing file is a
    one-line error naming the line."""
    try:
        text = listing.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(
            f"images: {listing} is neither a folder, an image ({', '.join(IMAGE_EXTENSIONS)}) "
            f"nor a readable text list of image paths ({type(e).__name__})"
        ) from None
    found = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry).expanduser()
        path = path if path.is_absolute() else listing.parent / path
        if not path.is_file():
            raise DataError(f"images: {listing}:{lineno}: no such file: {path}")
        found.append((entry, path))
    if not found:
        raise DataError(f"images: {listing} lists no image paths")
    return found


def image_files(images: Path) -> list[tuple[str, Path]]:
    """``(shown path, file)`` of every image ``images`` names: a folder's image files, one
    image file, or the files a text list names; the shown path goes into the CSV."""
    if images.is_dir():
        return folder_images(images)
    if is_image_name(images):
        return [(str(images), images)]
    return listed_images(images)


class ImageFiles(Dataset):
    """Image files decoded on access (in the loader's workers) and transformed to the run's
    test input: ``((3, size, size) uint8, "")``, or for a file that does not decode a zero
    image and its one-line error, so that one bad file does not stop the loader."""

    def __init__(self, paths: Sequence[Path], transform: Transform, size: int) -> None:
        self.paths, self.transform, self.size = list(paths), transform, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        try:
            return self.transform(read_image(self.paths[i])), ""
        except DataError as e:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), str(e)


def crm_cost_matrix(tree: Hierarchy, crm_cost: str, saved: DictConfig) -> torch.Tensor:
    """(K, K) costs CRM minimises: LCA heights (the run's ``data.distances`` file where it
    names one, as ``hierot.evaluate`` reads them) or tree path lengths."""
    if crm_cost == "path":
        return tree.tree_distances()
    shipped = saved.data.get("distances")
    return tree.lca_heights() if shipped is None else read_class_distances(shipped, tree.leaves)


def batch_predictions(
    logits: torch.Tensor,
    k: int,
    level_maps: Mapping[int, torch.Tensor],
    ways: Sequence[str],
    cost: torch.Tensor | None,
    parent: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """What the CSV reads off a batch's (B, K) logits: ``top`` (B, k) the classes of highest
    logit, best first, ``prob`` (B, k) their softmax probabilities, ``level<l>`` (B,) the
    concept of coarse level l whose classes' summed probability is highest (its index in
    ``level_map(l)``), and ``<decoding>`` (B,) each decoding's class (``crm`` minimises
    ``cost``, ``hie`` reads every class's ``parent``)."""
    logits = logits.float()
    top = logits.topk(k, dim=1).indices  # ranked by logit, as argmax ranks
    out = {"top": top, "prob": logits.softmax(dim=1).gather(1, top)}
    for level, fine_to_level in level_maps.items():
        out[f"level{level}"] = marginal_predictions(logits, fine_to_level)
    for way in ways:
        if way == "argmax":
            out[way] = top[:, 0]
        else:
            out[way] = ranked_classes(logits, 1, way, cost, parent=parent)[:, 0]
    return out


def resolve_device(device: str) -> torch.device:
    return torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )


def image_loader(
    files: Sequence[Path], datamodule: HierarchyDataModule, cfg: DictConfig, device: torch.device
) -> DataLoader:
    """The files in order, in batches of ``batch_size`` (default the run's), decoded by
    ``num_workers`` workers (default the run's), transformed as the run's test images."""
    dataset = ImageFiles(files, datamodule.file_transform(), datamodule.image_size)
    workers = datamodule.num_workers if cfg.num_workers is None else cfg.num_workers
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size or datamodule.batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )


def unreadable_error(reason: str) -> DataError:
    return DataError(
        f"{reason}; nothing written (skip_unreadable=true predicts the other images and "
        f"lists the unreadable ones)"
    )


@dataclass
class Reading:
    """What ``run_model`` reads off every batch: ``k`` classes per image, the coarse levels'
    ``level_maps`` (level -> (K,) concept of every class), the decodings ``ways`` (CRM's
    ``cost``, the ``parent`` of every class for ``hie``), whether to keep the ``features``
    and whether an unreadable file may be skipped (``skip``) rather than stop the command."""

    k: int
    level_maps: Mapping[int, torch.Tensor]
    ways: Sequence[str]
    cost: torch.Tensor | None
    features: bool
    skip: bool
    parent: torch.Tensor | None = None


@torch.inference_mode()
def run_model(
    module: HierarchyModule, loader: DataLoader, datamodule: HierarchyDataModule, read: Reading
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, list[str]]:
    """``(predictions, features or None, reasons)`` of every image of ``loader``, in order:
    ``batch_predictions``' keys concatenated on the CPU, and each image's unreadable-file
    error ("" where it was read; without ``read.skip`` the first one is raised)."""
    device = next(module.parameters()).device
    parts: list[dict[str, torch.Tensor]] = []
    features: list[torch.Tensor] = []
    reasons: list[str] = []
    total, start = len(loader.dataset), time.perf_counter()  # type: ignore[arg-type]
    every = max(1, len(loader) // 10)
    for i, (x, why) in enumerate(loader, start=1):
        bad = [w for w in why if w]
        if bad and not read.skip:
            raise unreadable_error(bad[0])
        z, logits = module(datamodule.normalize(x.to(device, non_blocking=True)))
        found = batch_predictions(
            logits, read.k, read.level_maps, read.ways, read.cost, read.parent
        )
        parts.append({key: value.cpu() for key, value in found.items()})
        if read.features:
            features.append(z.float().cpu())
        reasons += why
        if i % every == 0 or i == len(loader):
            took = time.perf_counter() - start
            log.info("predict: %d/%d images (%.0f s)", len(reasons), total, took)
    joined = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    return joined, (torch.cat(features) if read.features else None), reasons


def csv_columns(
    shown: Sequence[str],
    found: Mapping[str, torch.Tensor],
    tree: Hierarchy,
    names: Mapping[int, str],
    ways: Sequence[str],
) -> dict[str, list[object]]:
    """The CSV's columns in order: ``path``; ``class_<r>``, ``prob_<r>`` for each rank r;
    one per level, top first (its concept of highest summed probability; ``fine``: the
    class of rank 1); ``<decoding>_<level>`` per decoding (its class and the class's
    ancestors, one path of the tree)."""
    leaves = tree.leaves
    columns: dict[str, list[object]] = {"path": list(shown)}
    for r in range(found["top"].shape[1]):
        columns[f"class_{r + 1}"] = [leaves[c] for c in found["top"][:, r].tolist()]
        columns[f"prob_{r + 1}"] = [f"{p:.6g}" for p in found["prob"][:, r].tolist()]
    maps = {level: tree.level_map(level) for level in tree.levels}
    fine = max(tree.levels)
    for level in tree.levels:
        chosen = found["top"][:, 0] if level == fine else found[f"level{level}"]
        concepts = maps[level][0] if level != fine else leaves
        columns[names[level]] = [concepts[c] for c in chosen.tolist()]
    for way in ways:
        for level in tree.levels:
            concepts, fine_to_level = maps[level]
            columns[f"{way}_{names[level]}"] = [
                concepts[c] for c in fine_to_level[found[way]].tolist()
            ]
    return columns


def write_file(path: Path, data: bytes | memoryview) -> None:
    """``data`` written whole or not at all (``write_atomic``); a folder that cannot be
    written is a one-line error naming the file."""
    try:
        write_atomic(path, data)
    except OSError as e:
        raise ConfigError(f"output: cannot write {path} ({e.strerror or e})") from None


def write_csv(path: Path, columns: Mapping[str, Sequence[object]]) -> None:
    """The columns as a CSV with a header row."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(list(columns))
    writer.writerows(zip(*columns.values(), strict=True))
    write_file(path, text.getvalue().encode())


def write_npy(path: Path, array: torch.Tensor) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array.numpy())
    write_file(path, buffer.getbuffer())


def output_path(cfg: DictConfig) -> Path:
    """The CSV: ``output``, or ``predictions.csv`` in the run directory."""
    if cfg.output is None:
        return Path(cfg.output_dir) / "predictions.csv"
    return Path(str(cfg.output)).expanduser()


def report_unreadable(csv_path: Path, shown: Sequence[str], reasons: Sequence[str]) -> Path:
    """A warning naming the first ``NAMED`` unreadable files, and all of them listed (one
    error per line) in ``<csv stem>_unreadable.txt``, whose path it returns."""
    bad = [(s, r) for s, r in zip(shown, reasons, strict=True) if r]
    listing = csv_path.with_name(f"{csv_path.stem}_unreadable.txt")
    write_file(listing, "".join(f"{r}\n" for _, r in bad).encode())
    named = ", ".join(s for s, _ in bad[:NAMED])
    more = f" and {len(bad) - NAMED} more" if len(bad) > NAMED else ""
    log.warning(
        "skipped %d unreadable file%s (listed in %s): %s%s",
        len(bad), "s" if len(bad) > 1 else "", listing, named, more,
    )  # fmt: skip
    return listing


def predict(cfg: DictConfig) -> Path:
    """Predict every image ``images`` names with the checkpoint; write the CSV (and the
    features); returns the CSV's path."""
    ckpt, saved = check_predict(cfg)
    ways = decodings(cfg.decode)
    files = image_files(Path(str(cfg.images)).expanduser())
    device = resolve_device(cfg.device)
    module = load_trained(ckpt, device)
    tree = run_hierarchy(ckpt)
    assert tree is not None  # load_trained loaded the module on it
    names = level_keys(tree, module.hparams.get("level_names"))
    datamodule = build(saved.data, "data")
    read = Reading(
        k=min(cfg.top_k, tree.num_classes),
        level_maps={lvl: tree.level_map(lvl)[1].to(device) for lvl in tree.levels[:-1]},
        ways=ways,
        cost=crm_cost_matrix(tree, cfg.crm_cost, saved) if "crm" in ways else None,
        features=cfg.features,
        skip=cfg.skip_unreadable,
        parent=tree.parent_map().to(device) if "hie" in ways else None,
    )
    log.info("predict: %d images with %s on %s", len(files), ckpt, device)
    loader = image_loader([p for _, p in files], datamodule, cfg, device)
    found, z, reasons = run_model(module, loader, datamodule, read)
    shown = [s for s, _ in files]
    kept = torch.tensor([not r for r in reasons])
    if not bool(kept.any()):
        raise DataError(f"images: none of the {len(files)} files is a readable image")
    out = output_path(cfg)
    if not bool(kept.all()):
        report_unreadable(out, shown, reasons)
    found = {key: value[kept] for key, value in found.items()}
    shown = [s for s, keep in zip(shown, kept.tolist(), strict=True) if keep]
    write_csv(out, csv_columns(shown, found, tree, names, ways))
    if z is not None:
        write_npy(out.with_suffix(".npy"), z[kept])
    log.info("predictions: %s (%d images)", out, len(shown))
    if z is not None:
        log.info("features: %s (%d x %d, float32)", out.with_suffix(".npy"), *z[kept].shape)
    return out


@hydra.main(config_path="conf", config_name="predict", version_base="1.3")
def _run(cfg: DictConfig) -> None:
    with one_line_errors(Path(cfg.output_dir), "predict"):
        try:
            predict(cfg)
        except DiskFull as e:
            fail(e)


def precheck(overrides: list[str]) -> None:
    """Compose and check the command line (every value of a sweep) before Hydra creates a
    run directory."""
    for job in sweep_variants(overrides):
        cfg = compose_config(job, config_name="predict")
        check_added_keys(job, cfg)
        check_predict(cfg)


def main() -> None:
    run_checked(precheck, _run)


if __name__ == "__main__":
    main()

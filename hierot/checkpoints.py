"""Checkpoint files and the runs they belong to: a cheap structural check before a run
starts, the run's files (config, data, tree, config-group choices), and the one way to load
a trained module, with a one-line error instead of torch's unpickling or zip traceback.

Loading runs no code: every checkpoint is read with ``torch.load(weights_only=True)``
(tensors and plain values; a file that needs more is refused, naming what it needs, before
any of it is unpickled into objects), and a run's ``config.yaml`` instantiates only what
``hierot.targets`` allows."""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hierot.data.module import HierarchyDataModule
from hierot.errors import ConfigError
from hierot.hierarchy import Hierarchy
from hierot.models import HierarchyModule
from hierot.overrides import keys, parse_overrides, set_values, sets, value_text
from hierot.targets import check_saved_targets


def check_checkpoint(value: object, key: str) -> Path:
    """The checkpoint file named by config key ``key``, checked without reading its tensors.

    ``torch.save`` writes a zip archive whose central directory sits at the end, so a
    truncated copy (an interrupted transfer) and a file of another kind both fail here.
    Its pickle is then read as every load reads it (``weights_only_load``, the tensors
    memory-mapped, not read), so that a file that needs more than tensors and plain values
    is refused here, before a run starts.
    """
    if value is None or str(value) in ("", "???"):
        raise ConfigError(f"{key}: give a checkpoint file, {key}=PATH")
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}: no such checkpoint: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise ConfigError(
            f"{key}: {path} is not a readable PyTorch checkpoint (truncated, or another kind "
            f"of file: {e})"
        ) from None
    if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        raise ConfigError(f"{key}: {path} is a zip archive but not a PyTorch checkpoint")
    weights_only_load(path, key, mmap=True)
    return path


# Where a pickled callable's module is the platform's name for a documented one.
PLATFORM_MODULES = {"posix": "os", "nt": "os"}


def unsafe_global(error: BaseException) -> str | None:
    """The global (``module.name``) that ``torch.load(weights_only=True)`` refused to
    unpickle, from its message; None for another failure."""
    match = re.search(r"GLOBAL ([\w.]+?)\.?(?:\s|$)", str(error))
    if match is None:
        return None
    name = match.group(1)
    module, _, rest = name.partition(".")
    if module in PLATFORM_MODULES and rest:
        return f"{PLATFORM_MODULES[module]}.{rest} (pickled as {name})"
    return name


def read_error(path: Path, key: str, error: BaseException) -> ConfigError:
    """The one-line error for a checkpoint that ``torch.load(weights_only=True)`` refused
    (naming what it needed) or could not read."""
    name = unsafe_global(error)
    if name is not None:
        return ConfigError(
            f"{key}: {path} needs {name} to load, and loading calls what it names: "
            f"refused, nothing of it run (hierot reads checkpoints with "
            f"torch.load(weights_only=True): tensors and plain values only)"
        )
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in lines if "WeightsUnpickler error" in line), None)
    detail = detail or (lines[0] if lines else type(error).__name__)
    return ConfigError(f"{key}: cannot read checkpoint {path}: {detail[:300]}")


def weights_only_load(path: Path, key: str, mmap: bool = False) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on the CPU, a failure as one ``ConfigError``
    line naming the file (and the global it needed, for one that holds more than tensors and
    plain values: none of it is unpickled). ``mmap``: tensors mapped, not read."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise read_error(path, key, e) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{key}: {path} is not a hierot (Lightning) checkpoint")
    return loaded


def run_file(ckpt: Path, name: str) -> Path:
    """A file of the training run a checkpoint belongs to (``<run>/checkpoints/<ckpt>``):
    ``config.yaml``, ``data.json``, ..."""
    return ckpt.resolve().parent.parent / name


def run_data(ckpt: Path) -> dict[str, Any] | None:
    """The ``data.json`` of the checkpoint's run, or None when there is no readable one
    (a checkpoint moved out of its run)."""
    try:
        data = json.loads(run_file(ckpt, "data.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# The name of a config group's option (a file in its folder, without a path).
OPTION = re.compile(r"[\w-]+")


def run_choices(ckpt: Path) -> dict[str, str]:
    """The config-group options the checkpoint's run was composed with (``data: breeds``,
    ``backbone: resnet18``, ...), from Hydra's record of it; empty when there is none."""
    try:
        choices = OmegaConf.load(run_file(ckpt, ".hydra/hydra.yaml")).hydra.runtime.choices
        # an option's name, never a path: "../../x" would compose a file from anywhere
        return {str(k): str(v) for k, v in choices.items() if OPTION.fullmatch(str(v))}
    except Exception:  # no record, or not Hydra's: the caller falls back to the defaults
        return {}


def run_hierarchy(ckpt: Path) -> Hierarchy | None:
    """The label tree the checkpoint's run trained on: its ``hierarchy.txt`` (a weighted
    tree) or ``hierarchy.json``, with the class ids of its ``data.json``; None when the run
    did not write them (or the checkpoint was moved out of its run)."""
    classes = (run_data(ckpt) or {}).get("classes")
    for name in ("hierarchy.txt", "hierarchy.json"):
        path = run_file(ckpt, name)
        if path.is_file() and isinstance(classes, list):
            return Hierarchy.from_file(path, classes=classes)
    return None


def load_module(
    ckpt: Path,
    key: str,
    backbone: nn.Module,
    hierarchy: Hierarchy | None = None,
    fits: str = "",
    **kwargs: Any,
) -> HierarchyModule:
    """The trained module of a checkpoint, through Lightning's ``load_from_checkpoint``: the
    hyper-parameters it saved, ``backbone`` (built from the run's config) and ``hierarchy``
    (default: the run's own tree, ``run_hierarchy``); no optimizer. ``kwargs`` override saved
    hyper-parameters. Weights that do not fit are a one-line error naming ``fits`` (the
    backbone and data the caller built). Read with ``weights_only=True``: a file that holds
    more than tensors and plain values is refused (``read_error``)."""
    tree = hierarchy if hierarchy is not None else run_hierarchy(ckpt)
    if tree is None:
        raise ConfigError(
            f"{key}: {ckpt} has no hierarchy.json and data.json of its run beside it "
            f"(<run>/checkpoints/<file>); keep the checkpoint in its run directory"
        )
    try:
        return HierarchyModule.load_from_checkpoint(
            ckpt, map_location="cpu", weights_only=True, backbone=backbone, hierarchy=tree,
            optimizer=None, **kwargs,
        )  # fmt: skip
    except pickle.UnpicklingError as e:
        raise read_error(ckpt, key, e) from None
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        detail = detail.split(":", 1)[-1].strip()[:300]
        raise ConfigError(f"{key}: {ckpt} does not fit {fits or 'the model'} ({detail})") from None
    except KeyError:  # a torch file without Lightning's "state_dict"
        raise ConfigError(f"{key}: {ckpt} is not a hierot (Lightning) checkpoint") from None
    except (EOFError, OSError, ValueError) as e:
        raise read_error(ckpt, key, e) from None


# The config groups a checkpoint's run chose that evaluating or transferring it reuses.
RUN_GROUPS = ("data", "backbone")


def run_config(ckpt: Path) -> DictConfig | None:
    """The training run's saved config, when the checkpoint sits in ``<run>/checkpoints/``;
    every ``_target_`` in it checked (``hierot.targets``), as any part of it may be
    instantiated."""
    path = run_file(ckpt, "config.yaml")
    if not path.is_file():
        return None
    cfg = OmegaConf.load(path)
    check_saved_targets(cfg, path)
    return cfg  # type: ignore[return-value]


def saved_config(ckpt: str | Path) -> tuple[Path, DictConfig]:
    """The checked checkpoint path and its run's ``config.yaml``; a one-line error when the
    checkpoint is not one or sits outside its run."""
    path = check_checkpoint(ckpt, "ckpt")
    cfg = run_config(path)
    if cfg is None:
        raise ConfigError(f"ckpt: {path} has no config.yaml of its run (<run>/checkpoints/)")
    return path, cfg


def run_datamodule(ckpt: str | Path) -> HierarchyDataModule:
    """The data module of the checkpoint's run, from its ``config.yaml``: cheap (it reads
    no file until its tree or images are asked for); ``normalize`` turns images into the
    model's input."""
    return instantiate(saved_config(ckpt)[1].data, _convert_="all")


def load_trained(ckpt: str | Path, device: str | torch.device = "cpu") -> HierarchyModule:
    """The trained module of a run's checkpoint, for inference in Python, in eval mode on
    ``device``: its backbone rebuilt from the run's ``config.yaml`` (no weights downloaded:
    the checkpoint holds them), its tree and hyper-parameters the run's.

    ``module(x)`` maps images normalized as the run's data are
    (``run_datamodule(ckpt).normalize(images)``) to ``((B, d) features, (B, K) class
    scores)``: the head's logits, or the objective's own scores (``yolo``'s leaf
    log-probabilities, ``embedding``'s cosines, ``hiercos``' projection norms; the class of
    the largest is the prediction); score ``i`` is the class ``run_hierarchy(ckpt).leaves[i]``."""
    ckpt, cfg = saved_config(ckpt)
    unloaded = {"pretrained": False, "weights": None}  # the checkpoint's weights replace them
    node = OmegaConf.merge(cfg.backbone, {k: v for k, v in unloaded.items() if k in cfg.backbone})
    backbone = instantiate(node, _convert_="all")
    module = load_module(ckpt, "ckpt", backbone, fits=f"backbone={cfg.backbone.get('name')}")
    return module.to(device).eval()


def run_group_overrides(overrides: list[str]) -> list[str]:
    """Overrides ``data=<option>`` and ``backbone=<option>`` as the run of the command line's
    ``ckpt`` chose them, for the groups the command line leaves alone, added before Hydra
    composes: its dotted overrides (``data.height=3`` on a BREEDS run) then compose against
    the run's config group instead of the default's."""
    values = set_values(overrides, "ckpt")
    if len(values) != 1:
        return []  # no checkpoint, or a sweep over several
    choices = run_choices(Path(values[0]).expanduser())
    given = keys(overrides)
    return [f"{g}={choices[g]}" for g in RUN_GROUPS if g in choices and g not in given]


def use_run_groups(cfg: DictConfig, overrides: list[str], ckpt: Path) -> None:
    """After composing: give ``cfg.data`` and ``cfg.backbone`` the values the run of
    ``ckpt`` trained with (its ``config.yaml``), unless the command line chose another option
    of the group than the run did; the command line's dotted overrides apply on top either
    way."""
    saved = run_config(ckpt)
    choices = run_choices(ckpt)
    parsed = parse_overrides(overrides)
    for group in RUN_GROUPS:
        chosen = any(
            o.key_or_group == group and sets(o) and str(o.value()) != choices.get(group)
            for o in parsed
        )
        if chosen or saved is None or group not in saved:
            continue
        mine = [o for o in parsed if o.key_or_group.startswith(f"{group}.")]
        dotted = [f"{o.key_or_group}={value_text(o)}" for o in mine if sets(o)]
        node = OmegaConf.merge(saved[group], OmegaConf.from_dotlist(dotted).get(group, {}))
        for o in mine:
            if o.is_delete():  # ~data.split: the key goes, as it would from the group
                node.pop(o.key_or_group.split(".", 1)[1], None)
        cfg[group] = node

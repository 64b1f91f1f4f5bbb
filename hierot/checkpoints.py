"""Checkpoint files: a cheap structural check before a run starts, and loading with a
one-line error instead of torch's unpickling or zip traceback."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from hierot.errors import ConfigError


def check_checkpoint(value: object, key: str) -> Path:
    """The checkpoint file named by config key ``key``, checked without reading its tensors.

    ``torch.save`` writes a zip archive whose central directory sits at the end, so a
    truncated copy (an interrupted transfer) and a file of another kind both fail here.
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
    return path


def run_file(ckpt: Path, name: str) -> Path:
    """A file of the training run a checkpoint belongs to (``<run>/checkpoints/<ckpt>``):
    ``config.yaml``, ``data.json``, ..."""
    return ckpt.resolve().parent.parent / name


def run_data(ckpt: Path) -> dict[str, Any] | None:
    """The ``data.json`` of the checkpoint's run, or None when there is no readable one
    (runs from before hierot wrote it, checkpoints moved out of their run)."""
    try:
        data = json.loads(run_file(ckpt, "data.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_choices(ckpt: Path) -> dict[str, str]:
    """The config-group options the checkpoint's run was composed with (``data: breeds``,
    ``backbone: resnet18``, ...), from Hydra's record of it; empty when there is none."""
    try:
        choices = OmegaConf.load(run_file(ckpt, ".hydra/hydra.yaml")).hydra.runtime.choices
        return {str(k): str(v) for k, v in choices.items() if v is not None}
    except Exception:  # no record, or not Hydra's: the caller falls back to the defaults
        return {}


def load_checkpoint(path: Path, key: str) -> dict[str, Any]:
    """A Lightning checkpoint's dictionary (``state_dict``, ``hyper_parameters``, ...)."""
    try:
        # Lightning checkpoints hold hyper-parameters and loop state besides tensors.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{key}: cannot read checkpoint {path}: {first}") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ConfigError(f"{key}: {path} is not a hierot (Lightning) checkpoint")
    return state

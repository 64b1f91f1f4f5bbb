"""The speed switches of the training step (the ``speed`` section of the config): compile,
channels-last memory format and the float32 matmul precision, each ``auto`` by default:
on where it helps, by the device the trainer runs on.

``auto`` turns all three on for CUDA and leaves them off on a CPU, where ``torch.compile``
of a ResNet-18 costs more time compiling than a short run saves and channels-last
convolutions are no faster (``docs/results/speed_switches.csv`` has the measurements on
this project's CPU; the GPU rows come from ``scripts/device_check.py``).

Only the backbone is compiled, in place (``nn.Module.compile``: its ``state_dict`` keys
stay those of the eager module, so checkpoints load either way). The CPCC part sees another
number of classes, and so other shapes, in every batch; compiled, it would recompile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightning as L
import torch
from omegaconf import DictConfig

from hierot.checks import config_check
from hierot.errors import ConfigError, require_integer

log = logging.getLogger(__name__)

SWITCHES = ("compile", "channels_last")
PRECISIONS = ("highest", "high", "medium")


@dataclass(frozen=True)
class Speed:
    """The switches as decided for one device."""

    compile: bool
    channels_last: bool
    matmul_precision: str | None  # None: left as torch has it


def _switch(value: object, key: str) -> bool | None:
    if value == "auto":
        return None
    if not isinstance(value, bool):
        raise ConfigError(f"speed.{key} must be true, false or auto, got {value!r}")
    return value


def decide(node: DictConfig | dict, device: torch.device) -> Speed:
    """The switches of ``node`` (the ``speed`` section) on ``device``, ``auto`` resolved:
    on for CUDA, off elsewhere."""
    cuda = device.type == "cuda"
    flags = {}
    for key in SWITCHES:
        chosen = _switch(node.get(key, "auto"), key)
        flags[key] = cuda if chosen is None else chosen
    precision = node.get("matmul_precision", "auto")
    if precision == "auto":
        precision = "high" if cuda else None
    elif precision not in PRECISIONS:
        raise ConfigError(
            f"speed.matmul_precision must be one of auto, {', '.join(PRECISIONS)}, "
            f"got {precision!r}"
        )
    return Speed(flags["compile"], flags["channels_last"], precision)


def apply_speed(
    node: DictConfig | dict,
    model: L.LightningModule,
    trainer: L.Trainer,
    benchmark: bool | None = None,
) -> Speed:
    """Set the switches of ``node`` for the trainer's device on ``model`` (which must have a
    ``backbone`` and a ``channels_last`` attribute) and on torch; returns what was set.

    ``benchmark`` is ``trainer.benchmark``: left null, cuDNN's benchmark mode (the fastest
    convolution for each input shape, which training keeps fixed) is turned on for CUDA
    unless the run is deterministic; Lightning has set any other value already."""
    device = trainer.strategy.root_device
    speed = decide(node, device)
    if benchmark is None and device.type == "cuda" and not torch.backends.cudnn.deterministic:
        torch.backends.cudnn.benchmark = True
    if speed.matmul_precision is not None:
        torch.set_float32_matmul_precision(speed.matmul_precision)
    if speed.channels_last:
        model.backbone.to(memory_format=torch.channels_last)
        model.channels_last = True
    if speed.compile:
        model.backbone.compile()
    log.debug("speed: %s", speed)
    return speed


@config_check
def check_speed_config(cfg: DictConfig) -> None:
    """The ``speed`` section: ``compile``/``channels_last`` true, false or auto,
    ``matmul_precision`` auto or a torch precision, ``check_every_n_steps`` >= 1."""
    node = cfg.get("speed")
    if not isinstance(node, DictConfig):
        raise ConfigError("speed: missing section (compile, channels_last, matmul_precision)")
    decide(node, torch.device("cpu"))
    require_integer(node.get("check_every_n_steps"), "speed.check_every_n_steps", 1)

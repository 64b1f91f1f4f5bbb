"""The registry of config checks: each component declares the check of the settings it reads
where it is defined, and the entry points run them all without knowing any
(``hierot.config.check_config`` for ``train``, ``hierot.evaluate`` for ``evaluate``)::

    @config_check
    def check_backbone_config(cfg: DictConfig) -> None:
        ...  # a one-line ``ConfigError`` naming the key on a bad value

    @config_check(config="evaluate")
    def check_ood_config(cfg: DictConfig) -> None: ...

A check is registered when its module is imported. ``import hierot`` loads only the
torch-only core, so ``registered_checks`` and ``run_checks`` first import the application
(``hierot.components``, the list of every component), and with it every check. Checks run in
the order of registration and must be cheap: they build no model and read no data. A check
defined in the core imports omegaconf inside itself, never at module level.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

Check = Callable[["DictConfig"], None]

# config name -> "<module>.<name>" -> check; by name, so that importing a module again
# replaces its checks
_CHECKS: dict[str, dict[str, Check]] = {}


def config_check(check: Check | None = None, *, config: str = "train") -> Any:
    """Register ``check`` (a function of the whole composed ``config``: ``train`` or
    ``evaluate``) and return it; as ``@config_check`` or ``@config_check(config=...)``."""

    def register(fn: Check) -> Check:
        _CHECKS.setdefault(config, {})[f"{fn.__module__}.{fn.__qualname__}"] = fn
        return fn

    return register(check) if check is not None else register


def registered_checks(config: str = "train") -> list[str]:
    """The names of the checks registered for ``config``, in the order they run."""
    importlib.import_module("hierot.components")
    return list(_CHECKS.get(config, {}))


def run_checks(cfg: DictConfig, config: str = "train") -> None:
    """Every check registered for ``config`` on ``cfg``; the first failure propagates."""
    importlib.import_module("hierot.components")
    for check in _CHECKS.get(config, {}).values():
        check(cfg)

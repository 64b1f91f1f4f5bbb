"""The registry of config checks: each component declares the check of the settings it reads
where it is defined, and ``hierot.config.check_config`` runs them all without knowing any.

    @config_check
    def check_backbone_config(cfg: DictConfig) -> None:
        ...  # a one-line ``ConfigError`` naming the key on a bad value

A check is registered when its module is imported; ``hierot/__init__.py`` imports every
component, so importing any part of hierot registers them all. Checks run in the order of
registration and must be cheap: they build no model and read no data.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

Check = Callable[[DictConfig], None]

# by "<module>.<name>", so that importing a module again replaces its checks
_CHECKS: dict[str, Check] = {}


def config_check(check: Check) -> Check:
    """Register ``check`` (a function of the whole composed config) and return it."""
    _CHECKS[f"{check.__module__}.{check.__qualname__}"] = check
    return check


def registered_checks() -> list[str]:
    """The names of the registered checks, in the order they run."""
    return list(_CHECKS)


def run_checks(cfg: DictConfig) -> None:
    """Every registered check on ``cfg``; the first failure propagates."""
    for check in _CHECKS.values():
        check(cfg)

"""Compose, check and instantiate the Hydra configuration; every problem is one ``ConfigError``
line that names the key, raised before the run directory is created."""

from __future__ import annotations

import difflib
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, InstantiationException, MissingConfigException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hierot.arguments import check_arguments
from hierot.checks import run_checks
from hierot.errors import (
    ConfigError,
    DataError,
    HierarchyError,
    require_integer,
    require_number,
)
from hierot.overrides import keys, parse_overrides

CONFIG_DIR = Path(__file__).parent / "conf"

# ``${hierot.run_id:}`` in the run and sweep directory names: random, fixed for the process
# (and cached in the config that a launcher ships to its jobs), so two runs started in the
# same second never share a directory.
RUN_ID = secrets.token_hex(3)
if not OmegaConf.has_resolver("hierot.run_id"):
    OmegaConf.register_new_resolver("hierot.run_id", lambda: RUN_ID, use_cache=True)
CONFIG_NAME = "train"


def one_line(error: BaseException) -> str:
    """A Hydra/OmegaConf/hierot error as one line: its own lines joined, blank ones dropped."""
    if isinstance(error, MissingConfigException) and error.options:
        group = (error.missing_cfg_file or "").split("/")[0]
        name = (error.missing_cfg_file or "").split("/")[-1]
        return f"unknown {group} '{name}'; available: {', '.join(sorted(error.options))}"
    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    text = str(error)
    if isinstance(error, OmegaConfBaseException):
        text = text.split("\n    full_key:")[0]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def compose_config(overrides: Sequence[str] = (), config_name: str = CONFIG_NAME) -> DictConfig:
    """The config as ``python -m hierot.<config_name> *overrides`` would see it (the
    ``hydra`` node excluded, ``output_dir`` left unresolved)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        message = one_line(e)
    finally:
        GlobalHydra.instance().clear()
    raise ConfigError(nearest_key_hint(message, overrides, config_name) or message)


def nearest_key_hint(message: str, overrides: Sequence[str], config_name: str) -> str | None:
    """For Hydra's "Could not override 'a.b'" (a key the config does not have): the key of
    the same section that is nearest to ``b``, where one is near, instead of Hydra's advice
    to add ``+a.b`` (which would reach the component as an argument it does not take)."""
    match = re.match(r"Could not override '([\w.]+)'", message)
    if match is None:
        return None
    key = match.group(1)
    section, _, name = key.rpartition(".")
    rest = [o for o in overrides if keys([o]) != {key}]
    try:
        cfg = compose_config(rest, config_name)
    except ConfigError:
        return None
    node = OmegaConf.select(cfg, section) if section else cfg
    known = [str(k) for k in node] if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(name, known, n=1)
    if not close:
        return None
    return f"{key}: unknown key (did you mean {f'{section}.' if section else ''}{close[0]}?)"


def _as_line(o: Override, value: str | None = None) -> str:
    if value is None:
        return o.input_line
    return f"{o.get_key_element()}={value}"


def sweep_variants(overrides: Sequence[str]) -> list[list[str]]:
    """Jobs that together use every value of every sweep: the first job (each sweep at its
    first value), then one job per further value of each sweep, the others at their first.
    Checking these checks every value a multirun will use without composing the whole grid."""
    parsed = [o for o in parse_overrides(overrides) if not o.is_hydra_override()]
    values = [list(o.sweep_string_iterator()) if o.is_sweep_override() else [] for o in parsed]
    first = [_as_line(o, v[0] if v else None) for o, v in zip(parsed, values, strict=True)]
    jobs = [first]
    for i, (o, v) in enumerate(zip(parsed, values, strict=True)):
        for value in v[1:]:
            jobs.append([*first[:i], _as_line(o, value), *first[i + 1 :]])
    return jobs


def is_config_group(name: str) -> bool:
    """Whether ``name`` is a top-level config group shipped in ``conf/`` (``data``, ``dist``,
    ... and Hydra's own ``hydra``) rather than a plain key."""
    return name.isidentifier() and (CONFIG_DIR / name).is_dir()


def check_added_keys(overrides: Sequence[str], cfg: DictConfig) -> None:
    """``+name=value`` adds a top-level key that nothing reads (a typo such as ``+lamda=2``
    would otherwise be ignored silently); config groups (``+experiment=...``) are fine."""
    for o in parse_overrides(overrides):
        key = o.key_or_group
        if not o.is_add() or o.is_hydra_override() or "." in key or is_config_group(key):
            continue
        known = sorted(str(k) for k in cfg if k != key and not is_config_group(str(k)))
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"unknown key '{key}'{hint}: nothing reads +{key}=...; top-level keys: "
            f"{', '.join(known)}"
        )


def check_number(cfg: DictConfig, key: str, minimum: float) -> float:
    """``cfg``'s value at dotted ``key``, a real number >= ``minimum``, else a ConfigError."""
    return require_number(OmegaConf.select(cfg, key), key, minimum)


def check_integer(cfg: DictConfig, key: str, minimum: int) -> int:
    """``cfg``'s value at dotted ``key``, an integer >= ``minimum``, else a ConfigError."""
    return require_integer(OmegaConf.select(cfg, key), key, minimum)


def check_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` on the first bad value; cheap (builds no model, loads no data)."""
    try:
        _check(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(one_line(e)) from None


def model_aliases() -> dict[str, str]:
    """``model.<key>`` -> the setting it follows (``lam``, ``dist.method``, ...): the keys
    the shipped ``model`` options interpolate, for every option."""
    aliases = {}
    for path in sorted((CONFIG_DIR / "model").glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        for key, value in node.items():  # type: ignore[union-attr]
            if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
                aliases[str(key)] = value[2:-1]
    return aliases


def check_model_aliases(cfg: DictConfig) -> None:
    """The model's copies of the top-level settings are read-only: ``model.lam=0.5`` would
    train with 0.5 while metrics.json and the sweep summary record ``lam``."""
    for key, source in model_aliases().items():
        if key in cfg.model and not OmegaConf.is_interpolation(cfg.model, key):
            value = OmegaConf.to_container(cfg.model, resolve=False)[key]  # type: ignore[index]
            raise ConfigError(
                f"model.{key} follows {source}: set {source}={value} instead (metrics.json "
                f"and the sweep summary record {source})"
            )


def _check(cfg: DictConfig) -> None:
    for key in ("data", "backbone", "objective", "dist", "optimizer", "trainer", "model"):
        if not isinstance(cfg.get(key), DictConfig):
            raise ConfigError(f"{key}: missing config group (choose one with {key}=<option>)")
    check_model_aliases(cfg)
    if not isinstance(cfg.seed, int):
        raise ConfigError(f"seed must be an integer, got {cfg.seed!r}")
    run_checks(cfg)  # each component's own (``hierot.checks``)
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    check_arguments(L.Trainer, trainer, "trainer", "lightning.Trainer")  # type: ignore[arg-type]
    check_optimization(cfg)
    if cfg.get("monitor_mode") not in ("min", "max"):
        raise ConfigError(f"monitor_mode must be 'min' or 'max', got {cfg.get('monitor_mode')!r}")
    check_integer(cfg, "top_k", 1)
    # Last: the model's settings interpolate the top-level keys checked above, which name
    # what the user typed.
    for key in ("data", "backbone", "model", "logger"):
        if isinstance(cfg.get(key), DictConfig):
            check_target_arguments(cfg[key], key)
    for name, node in (cfg.get("callbacks") or {}).items():
        if isinstance(node, DictConfig):
            check_target_arguments(node, f"callbacks.{name}")


def check_target_arguments(node: DictConfig, key: str) -> None:
    """The keys of a ``_target_`` node checked against what its target takes (names, and
    types where it declares them); a target that cannot be found is left to ``build``."""
    if "_target_" not in node:
        return
    try:
        target = get_object(node._target_)
    except (ImportError, ValueError, HydraException):
        return
    options = {}
    for name in node:
        if str(name).startswith("_"):
            continue
        try:
            value = node[name]
        except OmegaConfBaseException:
            continue  # ${hydra:...} before Hydra has started: judged when built
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        options[str(name)] = value
    check_arguments(target, options, key, node._target_)


def check_optimization(cfg: DictConfig) -> None:
    """Build the optimizer and schedule for one parameter and 100 steps: their own
    constructors judge their values (``optimizer.lr=-1``, ``scheduler.warmup=2``) now rather
    than when training starts."""
    optimizer = None
    for key in ("optimizer", "scheduler"):
        node = cfg.get(key)
        if node is None:
            continue
        check_target_arguments(node, key)
        try:
            if key == "optimizer":
                optimizer = build(node, key)([torch.nn.Parameter(torch.zeros(1))])
            else:
                build(node, key)(optimizer, total_steps=100)
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key}: {one_line(e)}") from None


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with a failure reported as one ``ConfigError`` line."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, (ConfigError, DataError, HierarchyError)):
            raise e.__cause__ from None  # already names its key or file
        raise ConfigError(f"{key}: {one_line(e)}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{key}: {one_line(e)}") from None

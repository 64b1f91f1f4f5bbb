"""What a saved config may instantiate: a run directory's ``config.yaml`` is data written by
training, and Hydra's ``instantiate`` calls whatever its ``_target_`` keys name. A config
from elsewhere (a colleague's run, a paper's release) is checked before any of it is
instantiated: every ``_target_``, anywhere in the tree (``_args_``, lists, ``_partial_``
nodes), must name one of hierot's own components or an entry of ``ALLOWED_TARGETS``.

The allow-list is what hierot's configs name besides its own components: the torch
optimizers and schedules (``optimizer=sgd``, ``adamw``), timm's ``create_model`` (which
reads weights with ``weights_only=True``; the rest of timm holds checkpoint loaders that
take ``weights_only=False``), and Lightning's loggers and callbacks (``logger=tensorboard``,
``callbacks``). A target must also be *defined* there: ``hierot.cli.shutil.rmtree`` starts
with ``hierot.`` but is ``shutil``'s. A saved config holds no interpolation (training saves
it resolved), so none can build a node when it is resolved."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from hierot.errors import ConfigError

# What a saved config's ``_target_`` may name (a name ending in "." is every name under it)
# -> the package its code must come from.
ALLOWED_TARGETS = {
    "hierot.": "hierot",
    "torch.optim.": "torch.optim",
    "timm.create_model": "timm",
    "lightning.pytorch.loggers.": "lightning.pytorch.loggers",
    "lightning.pytorch.callbacks.": "lightning.pytorch.callbacks",
}


def _under(name: object, package: str) -> bool:
    return isinstance(name, str) and (name == package or name.startswith(f"{package}."))


def _locate(target: str) -> object:
    """What the dotted ``target`` names: its longest importable module, then attributes
    (as Hydra finds it)."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            found = getattr(found, name)
        return found
    raise ImportError(target)


def allowed_target(target: object) -> bool:
    """Whether ``target`` names a callable that ``ALLOWED_TARGETS`` admits.

    The name is checked before anything is imported; then it is looked up (importing only
    modules of the allowed package) and what it names must be defined in that package (its
    ``__module__``), so that a module's imports (``hierot.cli.shutil``) do not pass. A name
    that cannot be found is left to ``instantiate``, which cannot call it either."""
    if not isinstance(target, str):
        return False
    parts = target.split(".")
    if not all(p.isidentifier() and not p.startswith("__") for p in parts):
        return False
    package = next(
        (
            package
            for entry, package in ALLOWED_TARGETS.items()
            if (target.startswith(entry) if entry.endswith(".") else target == entry)
        ),
        None,
    )
    if package is None:
        return False
    try:
        found = _locate(target)
    except (ImportError, AttributeError):
        return True
    except Exception:  # a module that fails to import: refused, not guessed
        return False
    return _under(getattr(found, "__module__", None), package)


def check_saved_targets(cfg: object, source: Path | str, key: str = "ckpt") -> None:
    """A ``ConfigError`` naming ``source`` (the config file), the dotted key and the target
    of the first ``_target_`` of ``cfg`` that ``allowed_target`` refuses, or of the first
    interpolation (a saved config is resolved). ``cfg``: a loaded config or plain
    containers."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    allowed = ", ".join(f"{e}*" if e.endswith(".") else e for e in ALLOWED_TARGETS)
    for where, value in _nodes(cfg, ""):
        if isinstance(value, str) and "${" in value:
            raise ConfigError(
                f"{key}: {source}: {where} is an interpolation ({value}); a saved config "
                f"holds plain values (training saves it resolved)"
            )
        if where.rsplit(".", 1)[-1] == "_target_" and not allowed_target(value):
            raise ConfigError(
                f"{key}: {source}: {where} is {value}, which a saved config may not "
                f"instantiate (only {allowed})"
            )


def _nodes(node: object, where: str) -> Iterator[tuple[str, object]]:
    """``(dotted key, value)`` of every entry under ``node``, depth first."""
    if isinstance(node, Mapping):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in node.items())
    elif isinstance(node, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(node))
    else:
        return
    for child, value in items:
        yield child, value
        yield from _nodes(value, child)

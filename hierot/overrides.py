"""Command-line overrides read with Hydra's own parser (``~key``, ``+key``, ``++key``,
quoted values, sweeps), the one way hierot reads them."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException

from hierot.errors import ConfigError


def parse_overrides(overrides: Sequence[str]) -> list[Override]:
    """``overrides`` parsed; a malformed one is a one-line ``ConfigError``."""
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:  # a parse error's lines (the input, a caret) joined
        raise ConfigError(
            " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        ) from None


def sets(o: Override) -> bool:
    """True when ``o`` gives its key a value (``key=v``, ``+key=v``, ``++key=v``): not a
    deletion (``~key``) and not a sweep (``key=a,b``)."""
    return not o.is_delete() and not o.is_sweep_override()


def value_text(o: Override) -> str:
    """The value ``o`` sets, as Hydra would write it back (quotes kept where needed)."""
    return o.get_value_element_as_str()


def set_values(overrides: Sequence[str], key: str) -> list[str]:
    """The values the command line sets ``key`` to (unquoted strings), in order."""
    return [str(o.value()) for o in parse_overrides(overrides) if o.key_or_group == key and sets(o)]


def keys(overrides: Sequence[str]) -> set[str]:
    """Every key or group the command line names (set, added, deleted or swept)."""
    return {o.key_or_group for o in parse_overrides(overrides)}

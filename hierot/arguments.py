"""Keyword arguments from a config checked against the signature that will receive them.

A value of the wrong type on the command line (``trainer.max_epochs=abc``) otherwise reaches
the callee untouched and fails minutes later, deep inside it. Only what a command line can
hold is judged (numbers, strings, booleans, null, lists, mappings); a parameter typed with
some other class (a ``Strategy``, a ``timedelta``) takes any value, and the callee judges it.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

from hierot.errors import ConfigError


def _matches(value: object, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return any(value == v and type(value) is type(v) for v in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    container = origin or hint
    if container in (list, tuple):
        return isinstance(value, (list, tuple))
    if container is dict:
        return isinstance(value, dict)
    return True  # Any, or a class that no command-line value is


def _describe(hint: Any) -> list[str]:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return [text for h in typing.get_args(hint) for text in _describe(h)]
    if origin is Literal:
        return [repr(v) for v in typing.get_args(hint)]
    names = {type(None): "null", bool: "true/false", int: "an integer", float: "a number"}
    names |= {str: "a string", list: "a list", tuple: "a list", dict: "a mapping"}
    return [names.get(origin or hint, getattr(hint, "__name__", str(hint)))]


def _parameters(function: Callable[..., Any]) -> tuple[set[str], dict[str, Any], bool]:
    """Names, type hints and whether more names are accepted (``**kwargs``). A class's
    ``**kwargs`` are taken as handed on to its base class, whose ``__init__`` is read in turn."""
    functions = [function]
    if inspect.isclass(function):
        functions = [k.__init__ for k in function.__mro__ if "__init__" in vars(k)]
    names: set[str] = set()
    hints: dict[str, Any] = {}
    for f in functions:
        parameters = inspect.signature(f).parameters.values()
        names |= {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        try:
            hints = typing.get_type_hints(f) | hints
        except (NameError, TypeError):  # hints naming what cannot be imported: no type check
            pass
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names - {"self"}, hints, False
    return names - {"self"}, hints, True


def check_arguments(
    function: Callable[..., Any], values: Mapping[str, object], key: str, callee: str
) -> None:
    """A ``ConfigError`` naming ``key.<name>`` (``<name>`` for top-level keys, ``key=""``)
    for the first of ``values`` that ``function`` (``callee`` in the message) does not take
    or whose type its hints rule out."""
    names, hints, more = _parameters(function)
    unknown = sorted(set(values) - names)
    if unknown and not more:
        where = f"{key}: " if key else ""
        close = difflib.get_close_matches(unknown[0], sorted(names), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{where}{callee} takes no argument {', '.join(unknown)}{hint}")
    for name, value in values.items():
        if name in hints and not _matches(value, hints[name]):
            kinds = list(dict.fromkeys(_describe(hints[name])))
            wanted = " or ".join(kinds) if len(kinds) < 4 else f"one of {', '.join(kinds)}"
            label = f"{key}.{name}" if key else name
            raise ConfigError(f"{label} must be {wanted}, got {value!r}")

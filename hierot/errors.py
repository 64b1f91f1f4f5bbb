"""Errors a user fixes in their configuration or data: reported as one line, never a traceback;
and the checks of plain values that the early config check and the constructors share."""

import numbers
from collections.abc import Iterable


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and what would be valid."""


class DataError(ValueError):
    """Bad input data; the message names the file, folder or class."""


class HierarchyError(ValueError):
    """A label tree that cannot be built; the message names the file, line and node."""


def user_message(error: BaseException) -> str:
    """The one line to show for a user error.

    An error raised in a DataLoader worker comes back with the worker's traceback folded into
    its message; its last line holds the original ``module.Class: message``.
    """
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        name = f"{type(error).__module__}.{type(error).__name__}: "
        text = last[len(name) :] if last.startswith(name) else last
    return " ".join(text.split("\n"))


def is_number(value: object) -> bool:
    """A real number, and not a bool (which Python counts as an int)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value: object) -> bool:
    """An int, and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def require_number(value: object, key: str, minimum: float) -> float:
    """``value`` as a float if it is a real number >= ``minimum``, else a ``ConfigError``
    naming ``key``."""
    if not is_number(value) or not value >= minimum:
        raise ConfigError(f"{key} must be a number >= {minimum}, got {value!r}")
    return float(value)


def require_integer(value: object, key: str, minimum: int) -> int:
    """``value`` if it is an integer >= ``minimum``, else a ``ConfigError`` naming ``key``."""
    if not is_integer(value) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def reject_unknown_options(what: str, known: Iterable[str], given: Iterable[str]) -> None:
    """A ``ValueError`` naming the options in ``given`` that ``what`` (a component, e.g.
    ``class distance 'l2'``) does not take, and the ones it does."""
    known = list(known)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(
            f"{what} has no option {', '.join(repr(u) for u in unknown)}; "
            f"its options: {', '.join(known) or 'none'}"
        )


class RunStopped(RuntimeError):
    """A run that cannot go on (a signal, a non-finite loss, a full disk): reported as one
    line; what it saved stays. ``status`` goes into ``metrics.json``; ``exit_code`` is the
    process's."""

    status = "failed"
    exit_code = 1


class Interrupted(RunStopped):
    """Stopped by a signal at the end of a step, after saving a resumable checkpoint."""

    status = "interrupted"

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum  # a shell's code for a process a signal ended


class Diverged(RunStopped):
    """A training step whose loss is not finite; the step was not taken."""

    status = "diverged"


class DiskFull(RunStopped):
    """A write that failed for lack of space; the file it replaces is intact."""

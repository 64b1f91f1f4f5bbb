"""Errors a user fixes in their configuration or data: reported as one line, never a traceback."""


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

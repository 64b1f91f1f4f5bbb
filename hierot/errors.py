"""The error a user fixes in their configuration: reported as one line, never a traceback."""


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and what would be valid."""

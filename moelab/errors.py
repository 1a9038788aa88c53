"""User-facing errors: the CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class MoelabError(Exception):
    """A problem with what the user asked for (bad input, bad config, missing file).

    The message must fit on one line and name the field or file at fault and, where there is a finite set,
    the allowed values.
    """

    exit_code = 2


class ConfigError(MoelabError, ValueError):
    """An invalid configuration value. Also a ValueError so library callers can catch it as one."""


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds."""
    if not condition:
        raise ConfigError(message)

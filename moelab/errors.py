"""User-facing errors: the CLI prints them as one line and exits with status 2."""

from __future__ import annotations

import errno
import math
import os
import re


class MoelabError(Exception):
    """A problem with what the user asked for (bad input, bad config, missing file).

    The message must fit on one line and name the field or file at fault and, where there is a finite set,
    the allowed values.
    """

    exit_code = 2


class ConfigError(MoelabError, ValueError):
    """An invalid configuration value. Also a ValueError so library callers can catch it as one."""


def shown(key) -> str:
    """A user-given key or name as an error message shows it: as written when it is printable text, else its
    repr (a key holding a newline or control characters must not break the one-line message)."""
    text = str(key)
    return text if text and text.isprintable() else repr(key)


def is_int(value) -> bool:
    """An int and not a bool (``True`` is an int to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float and not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds."""
    if not condition:
        raise ConfigError(message)


#: errno values that mean "the disk (or this process's file-size limit) has no room for the write"
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_TS_CODE = re.compile(r"os_error_code='(\d+)'")  # how tensorstore (orbax's writer) reports the OS error
_TS_PATHS = (re.compile(r'Failed writing: "([^"]+)"'), re.compile(r'local file "([^"]+)"'))


def disk_full_message(exc: BaseException) -> str | None:
    """One line for an error caused by a full disk (or a file-size limit) anywhere in ``exc``'s chain, naming
    the file being written; None for any other error."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            why = exc.strerror or os.strerror(exc.errno)
            return f"disk full ({why}) while writing {exc.filename or 'a file'}"
        code = _TS_CODE.search(str(exc))
        if code and int(code.group(1)) in DISK_FULL_ERRNOS:
            paths = [m.group(1) for m in (p.search(str(exc)) for p in _TS_PATHS) if m]
            where = paths[0] if paths else "a checkpoint"
            return f"disk full ({os.strerror(int(code.group(1)))}) while writing {where}"
        exc = exc.__cause__ or exc.__context__
    return None

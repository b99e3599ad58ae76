"""
The roles' one log level: lines below it cost nothing, under twistd too.

``twist`` drops events below its ``--log-level`` (info by default), but
``twistd``, which the README and most operators start the roles with,
writes every event it is given, debug included.  A super-node writes a few
debug lines per request (what the transport received, which transaction
answered, where a REGISTER was stored); formatting and writing them cost
about a quarter of a REGISTER's CPU and fill the log with lines nobody
asked for.

Every module of p2psip takes its :class:`Logger` from here instead of
:mod:`twisted.logger`.  It is Twisted's ``Logger`` with one change: an
event below the level set by :func:`set_log_level` is dropped in
:meth:`Logger.emit`, before the event is even built, so a debug line on
the hot path is one set lookup.  The roles set the level from their
``--log-level`` option (config key ``log-level``, default ``info``) in
``makeService``; code used as a library, and the tests, see every level
until something sets one.
"""

from __future__ import annotations

from typing import cast

from twisted.logger import Logger as TwistedLogger
from twisted.logger import LogLevel

__all__ = ["LOG_LEVEL_NAMES", "Logger", "log_level", "parse_log_level", "set_log_level"]

#: Levels from the most verbose to the least, as ``--log-level`` names them.
LOG_LEVEL_NAMES: tuple[str, ...] = ("debug", "info", "warn", "error", "critical")

_ORDER: tuple[LogLevel, ...] = tuple(LogLevel.levelWithName(name) for name in LOG_LEVEL_NAMES)
_enabled: frozenset[LogLevel] = frozenset(_ORDER)
_level: LogLevel = LogLevel.debug


def parse_log_level(text: str) -> LogLevel:
    """``"info"`` -> ``LogLevel.info``; anything else is a ValueError naming the choices."""
    name = text.strip().lower()
    if name == "warning":
        name = "warn"
    if name not in LOG_LEVEL_NAMES:
        raise ValueError(f"log level {text!r} is none of {', '.join(LOG_LEVEL_NAMES)}")
    level: LogLevel = LogLevel.levelWithName(name)
    return level


def set_log_level(level: LogLevel) -> None:
    """Drop every p2psip log event below ``level`` from now on (process-wide)."""
    global _enabled, _level
    _level = level
    _enabled = frozenset(_ORDER[_ORDER.index(level) :])


def log_level() -> LogLevel:
    """The level set last (``LogLevel.debug`` until a role sets one)."""
    return _level


class Logger(TwistedLogger):
    """Twisted's ``Logger``, dropping events below the process's p2psip log level."""

    def __get__(self, instance: object, owner: type | None = None) -> Logger:
        """As Twisted's (a class's logger named after it), typed as this class."""
        return cast(Logger, super().__get__(instance, owner))

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        """Emit the event unless its level is below the one :func:`set_log_level` set."""
        if level not in _enabled:
            return
        super().emit(level, format, **kwargs)

"""
A log file that cannot fill the disk: ``twistd --logger p2psip.util.log_files.bounded_observer``.

``twistd --logfile FILE`` rotates its log at 1 MB but keeps every old file
(``twistd.log.1``, ``.2``, ... for ever), so a busy or attacked role fills
its disk in the end.  This observer factory writes the same text lines to
one file, rotated at ``P2PSIP_LOG_MAX_BYTES`` and with at most
``P2PSIP_LOG_KEEP`` old files kept; the oldest is deleted at each rotation.
twistd's ``--logger`` takes a factory without arguments, so the file and
its limits come from the environment:

* ``P2PSIP_LOG_FILE``: the file (default ``twistd.log`` in the working
  directory, as twistd's);
* ``P2PSIP_LOG_MAX_BYTES``: rotate when a write would pass this size
  (default 10 MiB);
* ``P2PSIP_LOG_KEEP``: old files kept (default 5), so the log never takes
  more than ``(KEEP + 1) * MAX_BYTES`` plus one line.

Writes are plain buffered file writes in the reactor's thread, as
twistd's own; a rotation is a rename (and an unlink of the oldest), so it
does not pause the role.  ``SIGUSR1`` rotates at once (logrotate's
``postrotate``), like twistd's.  Under systemd the units log to the
journal instead, which journald bounds (``SystemMaxUse``).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, cast

from twisted.logger import ILogObserver, textFileLogObserver
from twisted.python.logfile import LogFile

DEFAULT_FILE = "twistd.log"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_KEEP = 5


class LogSettingsError(ValueError):
    """A ``P2PSIP_LOG_*`` variable is unusable; the message names it."""


def bounded_log_file(path: Path, max_bytes: int, keep: int) -> LogFile:
    """The file, rotated at ``max_bytes`` with ``keep`` old files at most (mode 0640)."""
    return LogFile(
        path.name,
        str(path.parent),
        rotateLength=max_bytes,
        defaultMode=0o640,
        maxRotatedFiles=keep,
    )


def _positive(environment: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    text = environment.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise LogSettingsError(f"{name}={text!r} is not a whole number") from None
    if value < minimum:
        raise LogSettingsError(f"{name}={value} must be at least {minimum}")
    return value


def settings_from(environment: Mapping[str, str]) -> tuple[Path, int, int]:
    """
    The file, the size limit and the number of old files from ``environment``.

    :raises LogSettingsError: naming the variable that is wrong.
    """
    path = Path(environment.get("P2PSIP_LOG_FILE") or DEFAULT_FILE).absolute()
    max_bytes = _positive(environment, "P2PSIP_LOG_MAX_BYTES", DEFAULT_MAX_BYTES, 4096)
    keep = _positive(environment, "P2PSIP_LOG_KEEP", DEFAULT_KEEP, 1)
    return path, max_bytes, keep


def bounded_observer() -> ILogObserver:
    """
    twistd's ``--logger``: a text log observer on the bounded file.

    A bad setting or an unwritable file stops twistd before it starts,
    with a message naming the variable or the path.
    """
    try:
        path, max_bytes, keep = settings_from(os.environ)
    except LogSettingsError as e:
        raise SystemExit(f"p2psip: {e}") from None
    try:
        log_file = bounded_log_file(path, max_bytes, keep)
    except OSError as e:
        raise SystemExit(
            f"p2psip: cannot open the log file {path}: {e.strerror}; set P2PSIP_LOG_FILE "
            "to a file in a directory the role's user may write"
        ) from None

    def rotate(_signal: int, _frame: Any) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

    signal.signal(signal.SIGUSR1, rotate)
    return textFileLogObserver(cast(IO[Any], log_file))

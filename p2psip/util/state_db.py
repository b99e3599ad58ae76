"""
A role's durable state in one embedded database, ``DATA_DIR/state.sqlite3``.

A super-node holds things that only it knows and that would otherwise be
lost when its process dies: the bindings of the phones it serves (which
phone, over which flow) and the DHT values the ring stored at it.  They
live in one sqlite3 file (no server to run, one file to back up), in a
single table of ``(section, key) -> value`` rows; each part that persists
something owns a section and encodes its own values.

Writes are batched.  Parts *stage* changes (a key's new bytes, or its
removal) in memory, which costs a dict assignment on the reactor's
thread; :class:`StateFlusher` writes everything staged in one transaction
every ``FLUSH_INTERVAL_SECONDS`` (and at shutdown).  The database runs in
WAL mode with ``synchronous=NORMAL``: a commit is one sequential append,
and a process killed (SIGKILL, a crash) loses at most what was staged
since the last commit, one interval's worth; a power failure may also
lose the last commits, never the file's consistency.

Errors are the operator's to fix and name the path: a file that cannot be
opened, is not a database or is from a newer version stops the role
(:class:`StateDatabaseError`); a commit that fails (full disk) is logged,
throttled, and retried at the next interval with everything still staged.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from p2psip.util.log_throttle import LogThrottle

FILE_NAME = "state.sqlite3"
#: The layout this code reads and writes (``PRAGMA user_version``).
SCHEMA_VERSION = 1
#: How often staged changes are committed: a SIGKILL loses at most this much.
FLUSH_INTERVAL_SECONDS = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    section TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (section, key)
) WITHOUT ROWID
"""


class StateDatabaseError(Exception):
    """The state database cannot be used; the message names the file and the fix."""


class StateDatabase:
    """
    The ``state`` table of one sqlite3 file, with changes staged in memory
    until :meth:`flush` commits them.
    """

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._connection = connection
        #: (section, key) -> bytes to write, or None to delete.
        self._staged: dict[tuple[str, str], bytes | None] = {}

    @classmethod
    def open(cls, path: Path) -> StateDatabase:
        """
        Open (or create, mode 0600) the database at ``path``.

        :raises StateDatabaseError: naming ``path``: unreadable, not a
            database, damaged, or written by a newer version.
        """
        fix = (
            "check that the data directory is readable and writable by the role's user and "
            "that its disk is not full (or move the file away to start with no saved state)"
        )
        try:
            if not path.exists():
                path.touch(mode=0o600)
            connection = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            reason = getattr(e, "strerror", None) or str(e)
            raise StateDatabaseError(f"cannot open the state database {path}: {reason}; {fix}")
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateDatabaseError(
                    f"the state database {path} has layout {version}, newer than this "
                    f"version reads ({SCHEMA_VERSION}); run the newer version, or move the "
                    "file away to start with no saved state"
                )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(_SCHEMA)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            connection.execute("SELECT count(*) FROM state").fetchone()
        except sqlite3.Error as e:
            connection.close()
            raise StateDatabaseError(f"cannot use the state database {path}: {e}; {fix}") from None
        except StateDatabaseError:
            connection.close()
            raise
        return cls(path, connection)

    def load(self, section: str) -> dict[str, bytes]:
        """Every committed row of ``section`` (read once, at start)."""
        rows = self._connection.execute(
            "SELECT key, value FROM state WHERE section = ?", (section,)
        ).fetchall()
        return {key: bytes(value) for key, value in rows}

    def stage(self, section: str, key: str, value: bytes | None) -> None:
        """Write ``value`` under ``key`` at the next flush (None: remove the row)."""
        self._staged[section, key] = value

    @property
    def staged(self) -> int:
        """Changes waiting for the next flush."""
        return len(self._staged)

    def flush(self) -> int:
        """
        Commit everything staged in one transaction; returns the rows changed.

        :raises sqlite3.Error: the commit failed (a full disk); the changes
            stay staged for the next flush.
        """
        if not self._staged:
            return 0
        staged, self._staged = self._staged, {}
        writes = [(s, k, v) for (s, k), v in staged.items() if v is not None]
        removals = [(s, k) for (s, k), v in staged.items() if v is None]
        connection = self._connection
        try:
            connection.execute("BEGIN")
            if writes:
                connection.executemany(
                    "INSERT OR REPLACE INTO state (section, key, value) VALUES (?, ?, ?)", writes
                )
            if removals:
                connection.executemany("DELETE FROM state WHERE section = ? AND key = ?", removals)
            connection.execute("COMMIT")
        except sqlite3.Error:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            # Newer stages win over the ones that failed to commit.
            staged.update(self._staged)
            self._staged = staged
            raise
        return len(staged)

    def close(self) -> None:
        self._connection.close()


class StateFlusher(Service):
    """
    Commits a :class:`StateDatabase` every interval on the injected clock.

    It is the first child of a role's service, so it starts first and
    stops last: at shutdown the other parts have stopped, and what they
    staged is committed before the database closes.

    Before each commit it calls its ``sources``, the parts that stage what
    changed since the last round (the registrar's bindings, the DHT
    values), so they need no timers of their own.  ``longest_flush_seconds``
    is how long one round held the reactor at most (the bench reports it).
    """

    log = Logger()

    def __init__(
        self,
        database: StateDatabase,
        clock: IReactorTime,
        interval_seconds: float = FLUSH_INTERVAL_SECONDS,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.database = database
        self.interval_seconds = interval_seconds
        self.sources: list[Callable[[], None]] = []
        self.longest_flush_seconds = 0.0
        self.failed_flushes = 0
        self._timer = timer
        self._loop = LoopingCall(self.flush)
        self._loop.clock = clock
        self._failure_log = LogThrottle(clock)

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval_seconds, now=False)

    def stopService(self) -> None:
        """Commit one last time and close the database."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self.flush()
        self.database.close()

    def flush(self) -> None:
        """Collect from every source, then commit (a failure is logged and retried)."""
        started = self._timer()
        for source in self.sources:
            source()
        try:
            self.database.flush()
        except sqlite3.Error as e:
            self.failed_flushes += 1
            held_back = self._failure_log.admit("flush")
            if held_back is not None:
                self.log.warn(
                    "cannot write the state database {path}: {why}; check that its disk is "
                    "not full and the data directory is writable; the changes are kept in "
                    "memory and written when it works again ({held_back} more failures "
                    "since the last line)",
                    path=str(self.database.path),
                    why=str(e),
                    held_back=held_back,
                )
        self.longest_flush_seconds = max(self.longest_flush_seconds, self._timer() - started)

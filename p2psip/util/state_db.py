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
every ``FLUSH_INTERVAL_SECONDS`` (and at shutdown).  Given the reactor's
threads, it commits in a thread of its own (sqlite releases the GIL while
it writes), so the reactor is held only while the rows are collected; a
round that finds the previous commit still running waits for the next.  The database runs in
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
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from p2psip.util.log_throttle import LogThrottle
from p2psip.util.logs import Logger

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
        staged = self.take_staged()
        try:
            return self.commit(staged)
        except sqlite3.Error:
            self.restage(staged)
            raise

    def take_staged(self) -> dict[tuple[str, str], bytes | None]:
        """Everything staged so far, to :meth:`commit` (then nothing is staged)."""
        staged, self._staged = self._staged, {}
        return staged

    def restage(self, staged: dict[tuple[str, str], bytes | None]) -> None:
        """Stage again what a failed :meth:`commit` was given; newer stages win."""
        staged.update(self._staged)
        self._staged = staged

    def commit(self, staged: dict[tuple[str, str], bytes | None]) -> int:
        """
        Write ``staged`` in one transaction (from one thread at a time; it
        touches nothing else of this object); returns the rows changed.

        :raises sqlite3.Error: nothing was written.
        """
        if not staged:
            return 0
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
            raise
        return len(staged)

    def close(self) -> None:
        self._connection.close()


def state_threads(reactor: object) -> IReactorThreads | None:
    """The reactor's threads, to commit off the reactor; None for fakes (tests commit inline)."""
    if IReactorThreads.providedBy(reactor):
        return reactor
    return None


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
        threads: IReactorThreads | None = None,
    ) -> None:
        self.database = database
        self.threads = threads
        self._pool: ThreadPool | None = None
        #: The commit running in the pool, if any.
        self._committing: Deferred[int] | None = None
        self.interval_seconds = interval_seconds
        self.sources: list[Callable[[], None]] = []
        self.longest_flush_seconds = 0.0
        self.failed_flushes = 0
        self._timer = timer
        self._loop = LoopingCall(self.tick)
        self._loop.clock = clock
        self._failure_log = LogThrottle(clock)

    def startService(self) -> None:
        super().startService()
        if self.threads is not None:
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name="p2psip-state-db")
            self._pool.start()
        self._loop.start(self.interval_seconds, now=False)

    def stopService(self) -> Deferred[None]:
        """Wait for a commit in progress, commit one last time and close the database."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        running = self._committing if self._committing is not None else succeed(0)

        def last(_: object) -> None:
            if self._pool is not None:
                self._pool.stop()
                self._pool = None
            self.flush()
            self.database.close()

        return running.addBoth(last)

    @property
    def committing(self) -> Deferred[int] | None:
        """The commit running in the thread, if any (tests wait for it)."""
        return self._committing

    def _collect(self) -> None:
        for source in self.sources:
            source()

    def tick(self) -> None:
        """
        One round: collect, then commit in the pool (or here without
        threads); a round that finds a commit still running only collects.
        """
        if self._pool is None or self.threads is None:
            self.flush()
            return
        if self._committing is not None:
            started = self._timer()
            self._collect()
            self.longest_flush_seconds = max(self.longest_flush_seconds, self._timer() - started)
            return
        started = self._timer()
        self._collect()
        staged = self.database.take_staged()
        self.longest_flush_seconds = max(self.longest_flush_seconds, self._timer() - started)
        if not staged:
            return
        committing = deferToThreadPool(self.threads, self._pool, self.database.commit, staged)
        self._committing = committing

        def failed(failure: Failure) -> None:
            self.database.restage(staged)
            if failure.check(sqlite3.Error) and failure.value is not None:
                self._failed(failure.value)
            else:
                self.log.failure("while committing the state database", failure)

        def done(result: object) -> None:
            self._committing = None

        committing.addErrback(failed).addBoth(done)

    def flush(self) -> None:
        """Collect from every source, then commit here (a failure is logged and retried)."""
        started = self._timer()
        self._collect()
        try:
            self.database.flush()
        except sqlite3.Error as e:
            self._failed(e)
        self.longest_flush_seconds = max(self.longest_flush_seconds, self._timer() - started)

    def _failed(self, error: BaseException) -> None:
        self.failed_flushes += 1
        held_back = self._failure_log.admit("flush")
        if held_back is not None:
            self.log.warn(
                "cannot write the state database {path}: {why}; check that its disk is "
                "not full and the data directory is writable; the changes are kept in "
                "memory and written when it works again ({held_back} more failures "
                "since the last line)",
                path=str(self.database.path),
                why=str(error),
                held_back=held_back,
            )

"""The role's state database and its batched commits (p2psip.util.state_db)."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from p2psip.util.state_db import (
    FLUSH_INTERVAL_SECONDS,
    SCHEMA_VERSION,
    StateDatabase,
    StateDatabaseError,
    StateFlusher,
    state_threads,
)


class StateDatabaseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.path = self.directory / "state.sqlite3"

    def open(self) -> StateDatabase:
        database = StateDatabase.open(self.path)
        self.addCleanup(database.close)
        return database

    def test_staged_rows_are_committed_together(self) -> None:
        """Nothing staged is visible before the flush; after it, a new connection reads it."""
        database = self.open()
        database.stage("a", "k1", b"one")
        database.stage("a", "k2", b"two")
        database.stage("b", "k1", b"other section")
        self.assertEqual(self.open().load("a"), {})
        self.assertEqual(database.flush(), 3)
        self.assertEqual(database.flush(), 0)
        database.stage("a", "k1", None)
        database.stage("a", "k2", b"2")
        database.flush()
        self.assertEqual(self.open().load("a"), {"k2": b"2"})
        self.assertEqual(self.open().load("b"), {"k1": b"other section"})
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_a_failed_commit_keeps_the_changes(self) -> None:
        """A commit that fails leaves everything staged; newer stages win over it."""
        database = self.open()
        database.stage("a", "k", b"old")
        database._connection.execute("PRAGMA query_only=ON")
        self.assertRaises(sqlite3.Error, database.flush)
        database.stage("a", "k", b"new")
        database._connection.execute("PRAGMA query_only=OFF")
        database.flush()
        self.assertEqual(self.open().load("a"), {"k": b"new"})

    def test_errors_name_the_file(self) -> None:
        """Not a database, a newer layout, or an unreadable directory: an error naming the path."""
        self.path.write_bytes(b"this is not sqlite" * 100)
        error = self.assertRaises(StateDatabaseError, StateDatabase.open, self.path)
        self.assertIn(str(self.path), str(error))
        self.path.unlink()
        connection = sqlite3.connect(self.path)
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
        connection.close()
        error = self.assertRaises(StateDatabaseError, StateDatabase.open, self.path)
        self.assertIn("newer", str(error))
        self.assertIn(str(self.path), str(error))
        missing = self.directory / "gone" / "state.sqlite3"
        error = self.assertRaises(StateDatabaseError, StateDatabase.open, missing)
        self.assertIn(str(missing), str(error))


class StateFlusherTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        self.database = StateDatabase.open(directory / "state.sqlite3")
        self.clock = Clock()
        self.flusher = StateFlusher(self.database, self.clock)
        self.calls: list[str] = []
        self.flusher.sources.append(self.stage)

    def stage(self) -> None:
        self.calls.append("staged")
        self.database.stage("s", str(len(self.calls)), b"x")

    def test_commits_every_interval_and_at_stop(self) -> None:
        """Sources are asked and their changes committed each interval, and once more at stop."""
        self.flusher.startService()
        self.assertEqual(self.calls, [])
        self.clock.advance(FLUSH_INTERVAL_SECONDS)
        self.assertEqual((self.calls, self.database.staged), (["staged"], 0))
        self.flusher.stopService()
        self.assertEqual(len(self.calls), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertGreaterEqual(self.flusher.longest_flush_seconds, 0.0)

    def test_failures_are_logged_with_the_path_and_retried(self) -> None:
        """A failing commit is a warning naming the file, and the changes wait for the next one."""
        self.addCleanup(self.database.close)
        self.database._connection.execute("PRAGMA query_only=ON")
        with capturedLogs() as events:
            self.flusher.flush()
            self.flusher.flush()
        warnings = [formatEvent(e) for e in events if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 1, "throttled")
        self.assertIn(str(self.database.path), warnings[0])
        self.assertEqual((self.flusher.failed_flushes, self.database.staged), (2, 2))
        self.database._connection.execute("PRAGMA query_only=OFF")
        self.flusher.flush()
        self.assertEqual(len(self.database.load("s")), 3)


class ThreadedCommitTests(TestCase):
    """With the reactor's threads the commit runs in a thread of its own."""

    @inlineCallbacks
    def test_commit_in_a_thread(self) -> Any:
        """A round hands the rows to the thread; one started meanwhile only collects; stop waits."""
        from twisted.internet import reactor

        directory = Path(self.mktemp())
        directory.mkdir()
        database = StateDatabase.open(directory / "state.sqlite3")
        flusher = StateFlusher(database, Clock(), threads=state_threads(reactor))
        count = [0]

        def stage() -> None:
            count[0] += 1
            database.stage("s", str(count[0]), b"x")

        flusher.sources.append(stage)
        flusher.startService()
        flusher.tick()
        committing = flusher.committing
        self.assertIsNotNone(committing)
        flusher.tick()  # collects the second row, commits nothing yet
        self.assertEqual(database.staged, 1)
        yield committing
        self.assertIsNone(flusher.committing)
        yield flusher.stopService()
        reopened = StateDatabase.open(directory / "state.sqlite3")
        self.addCleanup(reopened.close)
        self.assertEqual(sorted(reopened.load("s")), ["1", "2", "3"])

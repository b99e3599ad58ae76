"""A child process for the interop tests: its output kept, killed at cleanup."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase


class Child(ProcessProtocol):
    """Collects stdout and stderr; ``ended`` fires with the exit code."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[int] = Deferred()
        self._watchers: list[tuple[bytes, Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for entry in list(self._watchers):
            if entry[0] in self.output:
                self._watchers.remove(entry)
                entry[1].callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.ended.callback(-1 if code is None else code)

    def wait_output(self, text: bytes, timeout: float = 15.0) -> Deferred[None]:
        """Fires once ``text`` has appeared in the output."""
        found: Deferred[None] = Deferred()
        if text in self.output:
            found.callback(None)
        else:
            self._watchers.append((text, found))
        return found.addTimeout(timeout, reactor)

    def wait_any(self, texts: list[bytes], timeout: float = 15.0) -> Deferred[bytes]:
        """Fires with the first of ``texts`` to appear in the output."""
        found: Deferred[bytes] = Deferred()
        for text in texts:
            if text in self.output:
                found.callback(text)
                return found
        for text in texts:
            watcher: Deferred[None] = Deferred()
            watcher.addCallback(lambda _, text=text: None if found.called else found.callback(text))
            self._watchers.append((text, watcher))
        return found.addTimeout(timeout, reactor)

    def tail(self) -> str:
        return self.output[-3000:].decode(errors="replace")

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


def spawn(test: TestCase, program: str, arguments: list[str], directory: Path) -> Child:
    """Start ``program``; the test's cleanup kills it (by its pid) if still running."""
    child = Child()
    process = reactor.spawnProcess(
        child, program, [program, *arguments], env=None, path=str(directory)
    )

    def stop() -> Deferred[int] | None:
        if child.ended.called:
            return None
        process.signalProcess("KILL")
        return child.ended

    test.addCleanup(stop)
    return child

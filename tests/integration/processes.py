"""
Real role processes on loopback for integration tests.

Each role runs as ``twistd -n`` in its own process with its own data
directory and log file, on ports the OS handed out.  Every process is
ended (by its own pid) in the test's cleanup, even when the test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from p2psip.cli.admin import AdminClient, AdminError
from p2psip.testing import free_port, repository_root


class RoleProcess:
    def __init__(
        self, role: str, directory: Path, args: list[str], overlay_port: int | None = None
    ) -> None:
        """``overlay_port`` lets a caller that must know the port first (a packet capture) choose it."""
        self.role = role
        self.directory = directory
        self.overlay_port = free_port() if overlay_port is None else overlay_port
        self.http_port = free_port()
        self.log_path = directory / "twistd.log"
        directory.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            f"--logfile={self.log_path}",
            role,
            "--overlay",
            f"tcp:{self.overlay_port}:interface=127.0.0.1",
            "--http",
            f"tcp:{self.http_port}:interface=127.0.0.1",
            "--data-dir",
            str(directory / "data"),
            *args,
        ]
        self.command = command
        self.process = self._launch()
        # The role writes its admin token there when it starts; it is read at the first call.
        self.api = AdminClient(
            f"http://127.0.0.1:{self.http_port}", token_file=directory / "data" / "admin-token"
        )

    def _launch(self) -> subprocess.Popen[bytes]:
        environment = dict(os.environ, PYTHONPATH=str(repository_root()))
        return subprocess.Popen(
            self.command,
            cwd=str(self.directory),
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def restart(self) -> None:
        """Start the role again after it exited: same arguments, ports, data directory and log."""
        if self.process.poll() is None:
            raise AssertionError(f"{self.role} in {self.directory} is still running")
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = self._launch()

    @property
    def endpoint(self) -> str:
        return f"tcp:127.0.0.1:{self.overlay_port}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def call(self, method: str, *args: Any) -> Deferred[Any]:
        return deferToThread(getattr(self.api, method), *args)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def stop(self) -> None:
        self.kill(signal.SIGKILL)
        self.wait_exit()
        if self.process.stderr is not None:
            self.process.stderr.close()


@inlineCallbacks
def wait_for(condition: Any, timeout_seconds: float, what: str, poll_seconds: float = 0.3) -> Any:
    """Poll ``condition`` (a function returning a Deferred of a bool) until true."""
    waited = 0.0
    last_error: Exception | None = None
    while waited < timeout_seconds:
        try:
            if (yield condition()):
                return
        except (AdminError, OSError) as error:
            last_error = error
        yield deferLater(reactor, poll_seconds, lambda: None)
        waited += poll_seconds
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error})")


@inlineCallbacks
def ring_converged(processes: list[RoleProcess]) -> Any:
    """True when every process's predecessor and successor are the true ones."""
    statuses = []
    for process in processes:
        statuses.append((yield process.call("status")))
    ring = sorted(status["node_id"] for status in statuses)
    for status in statuses:
        if status.get("state") != "joined":
            return False
        index = ring.index(status["node_id"])
        if not status["predecessors"] or not status["successors"]:
            return False
        if status["predecessors"][0]["node_id"] != ring[index - 1]:
            return False
        if status["successors"][0]["node_id"] != ring[(index + 1) % len(ring)]:
            return False
    return True


def overlay_arguments(name: str = "integration.test") -> list[str]:
    """Fast timers so failures are noticed within seconds."""
    return [
        "--overlay-name",
        name,
        "--update-interval",
        "2",
        "--ping-interval",
        "1",
        "--request-timeout",
        "3",
    ]


__all__ = ["RoleProcess", "wait_for", "ring_converged", "overlay_arguments", "repository_root"]

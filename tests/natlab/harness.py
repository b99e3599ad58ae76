"""
NAT lab harness for trial tests: one lab per test, always torn down.

The lab (``natlab`` beside the checkout, see its README) builds two NATs,
a core router and a public host from network namespaces.  Every lab gets a
prefix unique to this process and test, so labs of parallel trial workers
never collide; ``natlab down`` runs in a cleanup even when the test fails,
and also ends every process still running inside the lab's namespaces.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase

from p2psip.testing import (
    mediator_client_secret,
    repository_root,
    require_root,
    require_tool,
    shared_path,
)

SECRET = "natlab-secret"
_serial = itertools.count()

#: Mediator control port inside the lab's public host.
CONTROL = "tcp:198.51.100.10:3479"


def _python_command(*code_and_args: str) -> list[str]:
    return [sys.executable, *code_and_args]


#: Put this checkout first on the path of a child (which runs in a test's
#: temporary folder), so that it runs this checkout's code and plugins, not
#: whatever copy of p2psip the interpreter has installed.
_THIS_CHECKOUT = f"import sys; sys.path.insert(0, {str(repository_root())!r}); "


def twistd_command(*args: str) -> list[str]:
    """twistd from this interpreter and this checkout (so it sees this checkout's plugins)."""
    return _python_command(
        "-c", _THIS_CHECKOUT + "from twisted.scripts.twistd import run; run()", *args
    )


def p2psip_command(*args: str) -> list[str]:
    return _python_command(
        "-c", _THIS_CHECKOUT + "from p2psip.cli import main; sys.exit(main())", *args
    )


class NatLab:
    """One running lab; build with ``NatLab.up(testcase, ...)``."""

    def __init__(self, testcase: SynchronousTestCase, natlab: Path, prefix: str) -> None:
        self.testcase = testcase
        self.natlab = natlab
        self.prefix = prefix

    @classmethod
    def up(
        cls,
        testcase: SynchronousTestCase,
        nat_a: str,
        nat_b: str,
        filter_mode: str = "drop",
        tcp_liberal: bool = False,
    ) -> NatLab:
        require_root("the NAT lab")
        require_tool("nft")
        require_tool("ip")
        natlab = shared_path("natlab", "natlab")
        prefix = f"st{os.getpid() % 100000}x{next(_serial)}"
        lab = cls(testcase, natlab, prefix)
        args = ["up", "--prefix", prefix, "--nat-a", nat_a, "--nat-b", nat_b]
        if nat_a != "none" and nat_b != "none":
            args += ["--filter", filter_mode]
        elif nat_a == "none":
            args += ["--filter-a", "off", "--filter-b", filter_mode]
        else:
            args += ["--filter-a", filter_mode, "--filter-b", "off"]
        if tcp_liberal:
            args.append("--tcp-liberal")
        # Cleanup first: it must run even if `up` fails half-way.
        testcase.addCleanup(lab.natlab_run, "down", "--prefix", prefix)
        lab.natlab_run(*args)
        return lab

    def natlab_run(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, str(self.natlab), *args], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise AssertionError(f"natlab {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def exec_command(self, role: str, command: list[str]) -> list[str]:
        return [sys.executable, str(self.natlab), "exec", f"{self.prefix}-{role}", *command]

    def role_api(
        self, role: str, http_port: int, data_dir: Path | str, *args: str
    ) -> Deferred[dict[str, Any]]:
        """
        The JSON answer of ``p2psip ARGS --json`` run inside ``role`` (whose
        admin API is only reachable there); {} when it fails.
        """
        command = self.exec_command(
            role,
            p2psip_command(
                "--api",
                f"http://127.0.0.1:{http_port}",
                "--data-dir",
                str(data_dir),
                *args,
                "--json",
            ),
        )
        d: Deferred[tuple[bytes, bytes, int]] = getProcessOutputAndValue(
            command[0], command[1:], env=dict(os.environ)
        )

        def parse(result: tuple[bytes, bytes, int]) -> dict[str, Any]:
            try:
                answer = json.loads(result[0].decode("utf-8"))
            except ValueError:
                return {}
            return answer if isinstance(answer, dict) else {}

        return d.addCallback(parse)

    @inlineCallbacks
    def wait_for_status(
        self,
        role: str,
        http_port: int,
        data_dir: Path | str,
        what: str,
        condition: Any,
        seconds: float = 40,
        details: Any = lambda: "",
    ) -> Any:
        """Poll ``p2psip status`` in ``role`` until ``condition(status)``; that status."""
        deadline = reactor.seconds() + seconds
        status: dict[str, Any] = {}
        while reactor.seconds() < deadline:
            status = yield self.role_api(role, http_port, data_dir, "status")
            if status and condition(status):
                return status
            yield deferLater(reactor, 0.3, lambda: None)
        self.testcase.fail(
            f"timed out waiting for {what} in {role}; last status: {json.dumps(status)[:3000]}"
            f"{details()}"
        )

    def start(self, role: str, command: list[str], log_name: str) -> subprocess.Popen[str]:
        """Start a process inside the lab; it is ended (and reaped) in cleanup."""
        log_path = Path(self.testcase.mktemp() + f"-{log_name}.log")
        log_file = open(log_path, "w")
        process = subprocess.Popen(
            self.exec_command(role, command), stdout=log_file, stderr=subprocess.STDOUT, text=True
        )

        def stop() -> None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            log_file.close()

        self.testcase.addCleanup(stop)
        process.log_path = log_path  # type: ignore[attr-defined]
        return process

    def start_mediator(self, *extra: str) -> subprocess.Popen[str]:
        """The mediator in the public host, with RFC 5780 on its second address."""
        return self.start(
            "pub",
            twistd_command(
                "-n",
                "--pidfile=",
                "p2psip-mediator",
                "--secret",
                SECRET,
                "--control",
                "tcp:3479",
                "--stun",
                "tcp:3478",
                "--stun",
                "udp:3478:interface=198.51.100.10",
                "--stun-alternate",
                "198.51.100.11:3479",
                "--http",
                "tcp:8087:interface=127.0.0.1",
                *extra,
            ),
            "mediator",
        )

    def probe(self, role: str) -> dict[str, Any]:
        """Run ``p2psip nat probe --json`` in ``role``; its record."""
        done = subprocess.run(
            self.exec_command(
                role,
                p2psip_command("nat", "probe", "--mediator", CONTROL, "--json", "--wait", "15"),
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise AssertionError(f"nat probe failed: {done.stderr}")
        record: dict[str, Any] = json.loads(done.stdout)
        return record

    def start_listener(self, client_id: str = "B", count: int = 1) -> subprocess.Popen[str]:
        return self.start(
            "b",
            p2psip_command(
                "nat",
                "listen",
                "--mediator",
                CONTROL,
                "--id",
                client_id,
                "--secret",
                mediator_client_secret(SECRET, client_id),
                "--count",
                str(count),
                "--json",
                "--wait",
                "15",
            ),
            "listener",
        )

    def connect(self, *extra: str, timeout: float = 60) -> tuple[int, list[dict[str, Any]], str]:
        """Run ``p2psip nat connect`` in A; returns (exit status, JSON records, stderr)."""
        done = subprocess.run(
            self.exec_command(
                "a",
                p2psip_command(
                    "nat",
                    "connect",
                    "--mediator",
                    CONTROL,
                    "--id",
                    "A",
                    "--to",
                    "B",
                    "--secret",
                    mediator_client_secret(SECRET, "A"),
                    "--json",
                    "--wait",
                    "15",
                    *extra,
                ),
            ),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        return done.returncode, records, done.stderr


def listener_records(process: subprocess.Popen[str], timeout: float = 10) -> list[dict[str, Any]]:
    """Wait for a listener started with ``count`` to exit; its JSON records."""
    process.wait(timeout=timeout)
    text = process.log_path.read_text()  # type: ignore[attr-defined]
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

"""
``--workers 2`` under a real ``twistd`` on loopback: one supervisor, two
worker peers sharing the SIP ports with ``SO_REUSEPORT``.

A bootstrap founds an ``--insecure`` ring (every super-node signs its
users' registrations with self-signed credentials, so no CA is needed for
what this test is about), the peer starts with ``--workers 2``; both
workers join, phones on several source ports register at the one shared
port and call each other (whichever workers the kernel gave them), the
supervisor's ``/status`` and ``/metrics`` show both workers, and SIGTERM
to the supervisor stops both, each leaving the ring.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from p2psip.sip.transaction import Hop
from p2psip.sip.transport import SipTransport
from p2psip.sip.user_agent import SimpleUserAgent
from p2psip.testing import free_port, repository_root
from tests.integration.processes import RoleProcess, overlay_arguments, wait_for

DOMAIN = "workers.test"
WORKERS = 2
PHONES = 6


def free_ports(count: int, kinds: tuple[int, ...] = (socket.SOCK_STREAM,)) -> int:
    """A first port of ``count`` consecutive ones free on 127.0.0.1 (for PORT+K listeners)."""
    while True:
        base = free_port()
        if base + count > 65535:
            continue
        try:
            for offset in range(count):
                for kind in kinds:
                    with socket.socket(socket.AF_INET, kind) as probe:
                        probe.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())


class WorkersTests(TestCase):
    timeout = 150

    def setUp(self) -> None:
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)

    def start_supervisor(self, bootstrap: RoleProcess) -> subprocess.Popen[bytes]:
        self.overlay_port = free_ports(WORKERS)
        self.http_port = free_ports(WORKERS + 1)
        self.sip_port = free_ports(1, (socket.SOCK_STREAM, socket.SOCK_DGRAM))
        peer = self.directory / "peer"
        peer.mkdir()
        self.log_path = peer / "twistd.log"
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "-n",
                "--pidfile=",
                f"--logfile={self.log_path}",
                "p2psip-peer",
                *overlay_arguments(DOMAIN),
                "--insecure",
                *("--bootstrap", bootstrap.endpoint),
                *("--overlay", f"tcp:{self.overlay_port}:interface=127.0.0.1"),
                *("--http", f"tcp:{self.http_port}:interface=127.0.0.1"),
                *("--data-dir", str(peer / "data")),
                *("--sip", f"udp:{self.sip_port}:interface=127.0.0.1"),
                *("--sip", f"tcp:{self.sip_port}:interface=127.0.0.1"),
                "--sip-trusted-network",
                *("--sip-rate-limit", "0"),
                *("--workers", str(WORKERS)),
            ],
            cwd=str(peer),
            env=dict(os.environ, PYTHONPATH=str(repository_root())),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.worker_pids: list[int] = []

        def stop() -> None:
            if process.poll() is None:
                process.kill()
            process.wait()
            for pid in self.worker_pids:  # orphans, if the supervisor was killed
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

        self.addCleanup(stop)
        return process

    def status(self) -> Any:
        return deferToThread(get_json, f"http://127.0.0.1:{self.http_port}/status")

    @inlineCallbacks
    def workers_joined(self) -> Any:
        document = yield self.status()
        workers = document["workers"]
        self.worker_pids = [w["pid"] for w in workers if w.get("pid")]
        return len(workers) == WORKERS and all(
            w.get("status", {}).get("state") == "joined" for w in workers
        )

    @inlineCallbacks
    def phone(self, index: int) -> Any:
        transport = SipTransport(reactor)
        yield transport.listen("udp:0:interface=127.0.0.1")
        self.addCleanup(transport.stop)
        agent = SimpleUserAgent(
            f"sip:phone{index}@{DOMAIN}",
            "unused",
            transport,
            Hop("UDP", "127.0.0.1", self.sip_port),
            reactor,
        )
        self.addCleanup(agent.stop)
        return agent

    @inlineCallbacks
    def test_two_workers_share_the_sip_port(self) -> Any:
        bootstrap = RoleProcess(
            "p2psip-bootstrap",
            self.directory / "bootstrap",
            [*overlay_arguments(DOMAIN), "--insecure"],
        )
        self.addCleanup(bootstrap.stop)
        supervisor = self.start_supervisor(bootstrap)
        yield wait_for(self.workers_joined, 90, "both workers to join the ring")

        phones = []
        for index in range(PHONES):
            phone = yield self.phone(index)
            yield phone.register()
            phones.append(phone)
        document = yield self.status()
        bindings = [w["status"]["sip"]["registrations"]["bindings"] for w in document["workers"]]
        self.assertEqual(sum(bindings), PHONES)
        # Whichever workers the kernel chose, every phone reaches every other.
        for index, caller in enumerate(phones):
            callee = (index + 1) % PHONES
            dialog = yield caller.call(f"sip:phone{callee}@{DOMAIN}")
            yield caller.hang_up(dialog)
        self.assertEqual(sum(phone.calls_answered for phone in phones), PHONES)

        def labelled() -> Any:
            text = get_text(f"http://127.0.0.1:{self.http_port}/metrics")
            return all(f'worker="{k}"' in text for k in range(WORKERS))

        yield wait_for(lambda: deferToThread(labelled), 20, "metrics from both workers")

        supervisor.send_signal(signal.SIGTERM)
        code = yield deferToThread(supervisor.wait, 60)
        self.assertIn(code, (0, -signal.SIGTERM))
        for pid in self.worker_pids:
            yield wait_for(lambda pid=pid: deferToThread(_gone, pid), 30, f"worker {pid} to end")
        leaving = {
            line.split("peer ", 1)[1].split()[0]
            for line in bootstrap.log_text().splitlines()
            if line.endswith(" is leaving")
        }
        self.assertEqual(len(leaving), WORKERS)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie of the supervisor's (already reaped once it exits) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True

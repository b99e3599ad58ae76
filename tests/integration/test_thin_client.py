"""
Two thin clients on a ring of real ``twistd`` processes, driven by SIPp.

An enrolled ring on loopback (a bootstrap and two peers) and two
``p2psip-client`` processes, alice's and bob's, each enrolled with its
own node certificate and its user's certificate.  SIPp registers bob at
bob's client (its loopback SIP adaptor, no Digest) with a SIPp callee as
contact, and calls bob through alice's client: the INVITE goes from
alice's adaptor straight to bob's (found by AppAttach through the
overlay) and the call completes.  Then bob's attachment peer is
SIGKILLed: bob's client attaches to another peer (the time it took is
printed, not asserted), stores bob's registration again, and a second
call completes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from p2psip.testing import free_port, repository_root, require_tool
from tests.integration.processes import OverlayCA, RoleProcess, overlay_arguments, wait_for
from tests.integration.processes import ring_converged as converged
from tests.integration.test_sip_overlay import SCENARIOS, _Tool, free_udp_and_tcp_port

DOMAIN = "clients.test"


class ThinClientRing(TestCase):
    """An enrolled ring of ``twistd`` processes and thin clients on loopback, for the tests."""

    timeout = 150

    def setUp(self) -> None:
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        self.ca = OverlayCA(self.directory / "bootstrap", DOMAIN)

    def start_peer(self, role: str, name: str, extra: list[str]) -> RoleProcess:
        self.ca.enrol_offline(self.directory / name)
        process = RoleProcess(
            role,
            self.directory / name,
            overlay_arguments(DOMAIN)
            + [*(self.ca.bootstrap_arguments() if role == "p2psip-bootstrap" else []), *extra],
        )
        self.addCleanup(process.stop)
        return process

    def start_client(self, user: str, bootstrap: RoleProcess) -> RoleProcess:
        directory = self.directory / f"client-{user}"
        self.ca.enrol_offline(directory)
        self.ca.issue_user_certificates(directory, [f"{user}@{DOMAIN}"])
        sip_port = free_udp_and_tcp_port()
        process = RoleProcess(
            "p2psip-client",
            directory,
            overlay_arguments(DOMAIN)
            + [
                "--bootstrap",
                bootstrap.endpoint,
                "--sip",
                f"udp:{sip_port}:interface=127.0.0.1",
                "--sip",
                f"tcp:{sip_port}:interface=127.0.0.1",
            ],
            listens=False,
        )
        process.sip_port = sip_port  # type: ignore[attr-defined]
        self.addCleanup(process.stop)
        return process

    @inlineCallbacks
    def start_ring(self, peers: int) -> Any:
        """A bootstrap and ``peers`` peers, converged; the list of their processes."""
        bootstrap = self.start_peer("p2psip-bootstrap", "bootstrap", [])
        yield wait_for(
            lambda: bootstrap.call("status").addCallback(lambda s: s.get("state") == "alone"),
            30,
            "the bootstrap",
        )
        others = [
            self.start_peer("p2psip-peer", f"peer{i}", ["--bootstrap", bootstrap.endpoint])
            for i in range(1, peers + 1)
        ]
        ring = [bootstrap, *others]
        yield wait_for(lambda: converged(ring), 60, "the ring to converge")
        return ring

    @inlineCallbacks
    def start_clients(self, bootstrap: RoleProcess, *users: str) -> Any:
        """One attached thin client per user, in that order."""
        clients = [self.start_client(user, bootstrap) for user in users]
        for client in clients:
            yield wait_for(
                lambda c=client: c.call("status").addCallback(
                    lambda s: s.get("state") == "attached"
                ),
                30,
                "a client to attach",
            )
        return clients


class ThinClientTests(ThinClientRing):
    def setUp(self) -> None:
        self.sipp = require_tool("sipp")
        super().setUp()

    def run_sipp(self, arguments: list[str]) -> _Tool:
        tool = _Tool()
        argv = [self.sipp, *arguments, "-i", "127.0.0.1", "-nostdin", "-key", "domain", DOMAIN]
        handle = reactor.spawnProcess(tool, self.sipp, argv, env=None, path=str(self.directory))

        def stop() -> Any:
            if tool.ended.called:
                return None
            handle.signalProcess("KILL")
            return tool.ended

        self.addCleanup(stop)
        return tool

    @inlineCallbacks
    def sipp_succeeds(self, what: str, arguments: list[str], logs: list[RoleProcess]) -> Any:
        tool = self.run_sipp([*arguments, "-timeout", "30s", "-m", "1"])
        code = yield tool.ended
        if code != 0:
            details = "\n".join(f"--- {p.role} log tail:\n{p.log_text()[-3000:]}" for p in logs)
            self.fail(
                f"SIPp {what} exited {code}:\n{tool.output[-3000:].decode(errors='replace')}\n"
                + details
            )

    def call_bob(self, alice: RoleProcess, logs: list[RoleProcess]) -> Any:
        return self.sipp_succeeds(
            "call to bob through alice's client",
            [
                f"127.0.0.1:{alice.sip_port}",  # type: ignore[attr-defined]
                "-sf",
                str(SCENARIOS / "uac.xml"),
                "-inf",
                str(self.csv("callee.csv", "bob")),
                "-key",
                "caller_domain",
                "elsewhere.test",
                "-p",
                str(free_port(socket.SOCK_DGRAM)),
            ],
            logs,
        )

    @inlineCallbacks
    def p2psip(self, *arguments: str) -> Any:
        """Run the ``p2psip`` command in its own process; its JSON output."""
        environment = dict(os.environ, PYTHONPATH=str(repository_root()))
        command = [
            sys.executable,
            "-c",
            "import sys; from p2psip.cli import main; sys.exit(main())",
        ]
        done = yield deferToThread(
            subprocess.run,
            [*command, *arguments],
            capture_output=True,
            env=environment,
            timeout=60,
        )
        if done.returncode != 0:
            self.fail(f"p2psip {' '.join(arguments)} exited {done.returncode}: {done.stderr!r}")
        return json.loads(done.stdout)

    def csv(self, name: str, *users: str) -> Path:
        path = self.directory / name
        path.write_text("SEQUENTIAL\n" + "".join(f"{u}\n" for u in users), encoding="ascii")
        return path

    @inlineCallbacks
    def test_call_between_thin_clients_survives_peer_kill(self) -> Any:
        """SIPp registers at bob's client, calls through alice's; bob's peer dies, calls still work."""
        ring = yield self.start_ring(2)
        alice, bob = yield self.start_clients(ring[0], "alice", "bob")
        everyone = [*ring, alice, bob]
        node_ids = {}
        for process in ring:
            node_ids[(yield process.call("status"))["node_id"]] = process
        bob_status = yield bob.call("status")
        bob_peer = node_ids[bob_status["attachment"]["peer"]]
        # The client is in nobody's tables, but its peer lists it as attached.
        for process in ring:
            status = yield process.call("status")
            listed = [p["node_id"] for p in status["successors"] + status["predecessors"]]
            self.assertNotIn(bob_status["node_id"], listed)
        self.assertIn(bob_status["node_id"], (yield bob_peer.call("status"))["clients"])

        uas_port = free_port(socket.SOCK_DGRAM)
        self.run_sipp(["-sf", str(SCENARIOS / "uas.xml"), "-p", str(uas_port)])
        yield self.sipp_succeeds(
            "register bob at bob's client",
            [
                f"127.0.0.1:{bob.sip_port}",  # type: ignore[attr-defined]
                "-sf",
                str(SCENARIOS / "register.xml"),
                "-inf",
                str(self.csv("bob.csv", "bob")),
                "-key",
                "contact_port",
                str(uas_port),
                "-p",
                str(free_port(socket.SOCK_DGRAM)),
            ],
            [bob],
        )
        registered = (yield bob.call("status"))["sip"]["registered"]
        self.assertEqual([entry["aor"] for entry in registered], [f"sip:bob@{DOMAIN}"])
        yield self.call_bob(alice, everyone)
        calls = (yield alice.call("status"))["calls"]
        self.assertEqual((calls["started"], calls["answered"]), (1, 1))

        # The same through the p2psip command: bob's registration as alice's
        # client finds it, and a signalling-only test call.
        found = yield self.p2psip(
            "--api",
            f"http://127.0.0.1:{alice.http_port}",
            "--data-dir",
            str(alice.directory / "data"),
            "lookup",
            f"sip:bob@{DOMAIN}",
            "--json",
        )
        self.assertEqual(found["bindings"][0]["contact"], f"sip:bob@127.0.0.1:{uas_port}")
        self.assertEqual(found["bindings"][0]["served_by"], bob_status["node_id"])
        self.assertGreaterEqual(found["hops"], 1)
        called = yield self.p2psip(
            "call",
            f"sip:bob@{DOMAIN}",
            "--from",
            f"sip:alice@{DOMAIN}",
            "--via",
            f"udp:127.0.0.1:{alice.sip_port}",  # type: ignore[attr-defined]
            "--json",
        )
        self.assertEqual(called["outcome"], "answered")
        print(f"\np2psip call: set up in {called['setup_ms']} ms")

        killed_at = time.monotonic()
        bob_peer.kill()
        survivors = [p for p in everyone if p is not bob_peer]

        def reattached(status: dict[str, Any]) -> bool:
            attachment = status["attachment"]
            return status["state"] == "attached" and attachment["peer"] not in (
                None,
                bob_status["attachment"]["peer"],
            )

        yield wait_for(
            lambda: bob.call("status").addCallback(reattached),
            30,
            "bob's client to attach to another peer",
            poll_seconds=0.05,
        )
        seen = time.monotonic() - killed_at
        status = yield bob.call("status")
        print(
            f"\nbob's client re-attached {status['attachment']['last_reattach_seconds']:.3f} s "
            f"after losing its peer (seen by polling after {seen:.2f} s)"
        )
        yield wait_for(
            lambda: alice.call("status").addCallback(lambda s: s["state"] == "attached"),
            30,
            "alice's client to be attached",
        )
        yield self.call_bob(alice, survivors)
        calls = (yield alice.call("status"))["calls"]
        self.assertEqual((calls["started"], calls["answered"]), (3, 3))

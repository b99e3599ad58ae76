"""
A super-node restarted as an upgrade restarts it (SIGTERM, then start
again) still serves the phones registered at it, without their
registering again.

Two enrolled super-nodes on loopback under ``twistd``: SIPp registers
alice at the peer (her contact a SIPp callee), the peer is stopped with
SIGTERM (it leaves the ring and writes DATA_DIR/sip-bindings.json) and
started again, and a SIPp caller then calls alice through the bootstrap.
Before the bindings were kept, the restarted peer answered 480.
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from p2psip.testing import free_port, require_tool
from tests.integration.processes import OverlayCA, RoleProcess, overlay_arguments, wait_for
from tests.integration.processes import ring_converged as converged
from tests.integration import test_sip_overlay
from tests.integration.test_sip_overlay import FOREIGN_CALLER, SCENARIOS, free_udp_and_tcp_port

DOMAIN = "restart.test"
PASSWORD = "alice-restart-password"


class RestartKeepsRegistrationsTests(TestCase):
    timeout = 120

    # SIPp as the SIP-over-the-ring test runs it (on 127.0.0.1, in the test's
    # directory), with this test's domain.
    sipp_succeeds = test_sip_overlay.SipOverlayTests.sipp_succeeds

    def run_sipp(self, name: str, arguments: list[str]) -> Any:
        return test_sip_overlay.SipOverlayTests.run_sipp(
            self, name, [*arguments, "-key", "domain", DOMAIN]
        )

    def setUp(self) -> None:
        self.sipp = require_tool("sipp")
        self.tools: dict[str, Any] = {}
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        self.ca = OverlayCA(self.directory / "bootstrap", DOMAIN)
        self.users_path = self.directory / "users"
        from p2psip.sip.users import UsersFile

        users = UsersFile.load(self.users_path, missing_ok=True)
        users.set_password(f"sip:alice@{DOMAIN}", PASSWORD)
        users.save()

    def start(self, role: str, name: str, extra: list[str]) -> RoleProcess:
        self.ca.enrol_offline(self.directory / name)
        self.ca.issue_user_certificates(self.directory / name, [f"alice@{DOMAIN}"])
        sip_port = free_udp_and_tcp_port()
        process = RoleProcess(
            role,
            self.directory / name,
            overlay_arguments(DOMAIN)
            + [
                *("--sip", f"udp:{sip_port}:interface=127.0.0.1"),
                *("--users", str(self.users_path), "--sip-digest-algorithms", "MD5"),
                *(self.ca.bootstrap_arguments() if role == "p2psip-bootstrap" else []),
                *extra,
            ],
        )
        process.sip_port = sip_port  # type: ignore[attr-defined]
        self.addCleanup(process.stop)
        return process

    @inlineCallbacks
    def joined(self, process: RoleProcess) -> Any:
        yield wait_for(
            lambda: process.call("status").addCallback(lambda s: s.get("state") == "joined"),
            60,
            f"{process.role} to join",
        )

    @inlineCallbacks
    def test_phone_reachable_after_a_restart(self) -> Any:
        """alice, registered at the peer, is called through the bootstrap after the peer's restart."""
        bootstrap = self.start("p2psip-bootstrap", "bootstrap", [])
        yield wait_for(
            lambda: bootstrap.call("status").addCallback(lambda s: s.get("state") == "alone"),
            30,
            "the bootstrap",
        )
        peer = self.start("p2psip-peer", "peer", ["--bootstrap", bootstrap.endpoint])
        yield self.joined(peer)
        uas_port = free_port(socket.SOCK_DGRAM)
        self.run_sipp("uas", ["-sf", str(SCENARIOS / "uas.xml"), "-p", str(uas_port), "-m", "1"])
        register_csv = self.directory / "register.csv"
        register_csv.write_text(
            f"SEQUENTIAL\nalice;[authentication username=alice password={PASSWORD}]\n"
        )
        yield self.sipp_succeeds(
            "register",
            [
                f"127.0.0.1:{peer.sip_port}",  # type: ignore[attr-defined]
                *("-sf", str(SCENARIOS / "register_digest.xml"), "-inf", str(register_csv)),
                *("-auth_uri", DOMAIN, "-key", "contact_port", str(uas_port)),
                *("-p", str(free_port(socket.SOCK_DGRAM)), "-m", "1"),
            ],
            [peer],
        )

        peer.kill(signal.SIGTERM)
        # twistd shuts down cleanly, then re-raises the signal for its parent.
        self.assertIn(peer.wait_exit(), (0, -signal.SIGTERM))
        self.assertIn("left the ring", peer.log_text())
        self.assertTrue((self.directory / "peer" / "data" / "sip-bindings.json").exists())
        peer.restart()
        yield self.joined(peer)
        yield wait_for(lambda: converged([bootstrap, peer]), 60, "the ring of two")
        status = yield peer.call("status")
        self.assertEqual(status["sip"]["registrations"], {"aors": 1, "bindings": 1})
        self.assertIn("took back 1 SIP binding(s)", peer.log_text())

        callee_csv = self.directory / "callee.csv"
        callee_csv.write_text("SEQUENTIAL\nalice\n")
        yield self.sipp_succeeds(
            "call after the restart",
            [
                f"127.0.0.1:{bootstrap.sip_port}",  # type: ignore[attr-defined]
                *("-sf", str(SCENARIOS / "uac.xml"), *FOREIGN_CALLER, "-inf", str(callee_csv)),
                *("-p", str(free_port(socket.SOCK_DGRAM)), "-m", "1"),
            ],
            [bootstrap, peer],
        )
        status = yield peer.call("status")
        self.assertEqual(status["sip"]["final_responses"]["INVITE"], {"200": 1})

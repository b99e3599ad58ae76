"""
A super-node restarted as an upgrade restarts it (SIGTERM, then start
again), or killed outright (SIGKILL) and started again, still serves the
phones registered at it, without their registering again.

Two enrolled super-nodes on loopback under ``twistd``: SIPp registers
alice at the peer (her contact a SIPp callee), the peer is stopped with
SIGTERM (it leaves the ring; the state database, DATA_DIR/state.sqlite3,
gets its last commit) or SIGKILL (once the binding is committed, which
takes at most a second) and started again, and a SIPp caller then calls
alice through the bootstrap.  Before the bindings were kept, the
restarted peer answered 480.
"""

from __future__ import annotations

import signal
import socket
from typing import Any

from twisted.internet.defer import inlineCallbacks, succeed

from p2psip.overlay import peer_cache
from p2psip.sip.binding_store import SECTION as BINDINGS_SECTION
from p2psip.testing import free_port
from p2psip.util.state_db import FILE_NAME as STATE_DB_FILE_NAME
from p2psip.util.state_db import StateDatabase
from tests.integration.alice_ring import AliceRingCase
from tests.integration.processes import wait_for
from tests.integration.processes import ring_converged as converged
from tests.integration.test_sip_overlay import FOREIGN_CALLER, SCENARIOS

DOMAIN = "restart.test"
PASSWORD = "alice-restart-password"


class RestartKeepsRegistrationsTests(AliceRingCase):
    timeout = 120
    domain = DOMAIN
    password = PASSWORD

    def committed_bindings(self) -> dict[str, bytes]:
        """The peer's committed binding rows, read as a second connection would."""
        database = StateDatabase.open(self.directory / "peer" / "data" / STATE_DB_FILE_NAME)
        try:
            return database.load(BINDINGS_SECTION)
        finally:
            database.close()

    def test_phone_reachable_after_a_restart(self) -> Any:
        """alice, registered at the peer, is called through the bootstrap after the peer's restart."""
        return self.phone_reachable_after(signal.SIGTERM)

    def test_phone_reachable_after_sigkill(self) -> Any:
        """The same after SIGKILL: the batched commit had the binding, nothing else was needed."""
        return self.phone_reachable_after(signal.SIGKILL)

    @inlineCallbacks
    def phone_reachable_after(self, stop_signal: int) -> Any:
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

        if stop_signal == signal.SIGKILL:
            yield wait_for(
                lambda: succeed(len(self.committed_bindings()) == 1), 10, "the binding's commit"
            )
        peer.kill(stop_signal)
        if stop_signal == signal.SIGTERM:
            # twistd shuts down cleanly, then re-raises the signal for its parent.
            self.assertIn(peer.wait_exit(), (0, -signal.SIGTERM))
            self.assertIn("left the ring", peer.log_text())
        else:
            self.assertEqual(peer.wait_exit(), -signal.SIGKILL)
        self.assertEqual(len(self.committed_bindings()), 1)
        # The peers it knew are kept too (it could rejoin without --bootstrap).
        known = peer_cache.load(self.directory / "peer" / "data")
        self.assertIn(bootstrap.overlay_port, [entry.port for entry in known])
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

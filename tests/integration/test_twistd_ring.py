"""
A ring of real ``twistd`` processes on loopback: one bootstrap and six
peers.  Values put through one peer are fetched through every other; a
SIGKILLed peer's values survive; a SIGTERMed peer leaves gracefully.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.integration.processes import (
    OverlayCA,
    RoleProcess,
    overlay_arguments,
    ring_converged,
    wait_for,
)

PEERS = 6


class TwistdRingTests(TestCase):
    timeout = 240

    def setUp(self) -> None:
        self.directory = Path(self.mktemp()).resolve()
        self.ca = OverlayCA(self.directory / "bootstrap")

    def start(self, role: str, name: str, extra: list[str]) -> RoleProcess:
        security = (
            self.ca.bootstrap_arguments()
            if role == "p2psip-bootstrap"
            else self.ca.peer_arguments()
        )
        process = RoleProcess(role, self.directory / name, overlay_arguments() + security + extra)
        self.addCleanup(process.stop)
        return process

    @inlineCallbacks
    def test_ring_of_processes(self) -> Any:
        """Over TLS links, values survive a SIGKILL; SIGTERM sends Leave and exits cleanly."""
        bootstrap = self.start("p2psip-bootstrap", "bootstrap", [])
        yield wait_for(
            lambda: bootstrap.call("status").addCallback(lambda s: s.get("state") == "alone"),
            30,
            "the bootstrap",
        )
        peers = []
        for index in range(PEERS):
            peers.append(
                self.start("p2psip-peer", f"peer{index}", ["--bootstrap", bootstrap.endpoint])
            )
        for peer in peers:
            yield wait_for(
                lambda p=peer: p.call("status").addCallback(lambda s: s.get("state") == "joined"),
                60,
                "a peer to join",
            )
        everyone = [bootstrap, *peers]

        def ring_complete() -> Any:
            return bootstrap.call("ring").addCallback(
                lambda r: r["complete"] and r["count"] == PEERS + 1
            )

        yield wait_for(ring_complete, 60, "the ring to include every peer")
        yield wait_for(
            lambda: ring_converged(everyone), 60, "every peer to know its true neighbours"
        )

        names = [f"user{i}@integration.test" for i in range(30)]
        for i, name in enumerate(names):
            yield peers[i % PEERS].call("put", name, f"contact-{i}", 600)
        for process in everyone:
            for i, name in enumerate(names):
                got = yield process.call("get", name)
                self.assertEqual(got.get("value"), f"contact-{i}", (process.role, got))
        # Every overlay link is TLS, authenticated with the self-signed node keys.
        status = yield bootstrap.call("status")
        self.assertTrue(status["connections"])
        self.assertEqual({c["transport"] for c in status["connections"]}, {"tls"})

        victim = peers[2]
        victim.kill(signal.SIGKILL)
        victim.wait_exit()
        survivors = [p for p in everyone if p is not victim]
        yield wait_for(
            ring_complete_without(bootstrap, PEERS), 60, "the ring to repair after SIGKILL"
        )
        for i, name in enumerate(names):
            got = yield survivors[i % len(survivors)].call("get", name)
            self.assertEqual(got["value"], f"contact-{i}")

        leaver = peers[4]
        leaver.kill(signal.SIGTERM)
        # twistd shuts down cleanly, then re-raises the signal so its parent
        # sees how it ended: -SIGTERM, not a crash.
        self.assertIn(leaver.wait_exit(), (0, -signal.SIGTERM))
        log = leaver.log_text()
        self.assertIn("left the ring", log)
        self.assertIn("Server Shut Down.", log)
        self.assertNotIn("Traceback", log)
        remaining = [p for p in survivors if p is not leaver]
        yield wait_for(
            ring_complete_without(bootstrap, PEERS - 1), 60, "the ring to close after Leave"
        )
        for i, name in enumerate(names):
            got = yield remaining[i % len(remaining)].call("get", name)
            self.assertEqual(got["value"], f"contact-{i}")


def ring_complete_without(bootstrap: RoleProcess, count: int) -> Any:
    return lambda: bootstrap.call("ring").addCallback(
        lambda r: r["complete"] and r["count"] == count
    )

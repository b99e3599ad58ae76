"""
The ring outlives its bootstrap: real ``twistd`` processes on loopback.

A bootstrap and four peers hold 40 values.  The bootstrap is SIGKILLed; a
new peer joins through one of the remaining peers; then a peer is
SIGKILLed and started again with the same data directory and the same
arguments (its ``--bootstrap`` still names the dead bootstrap).  The ring
must end consistent, with the restarted peer back at its Node-ID and
every value fetchable through every peer.  Last the bootstrap itself
restarts and must rejoin that ring rather than found a new one.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks, succeed
from twisted.trial.unittest import TestCase

from tests.integration.processes import (
    OverlayCA,
    RoleProcess,
    overlay_arguments,
    ring_converged,
    wait_for,
)

PEERS = 4
VALUES = 40


def known_peers(process: RoleProcess) -> list[Any]:
    """The peers a role has written to its data directory (none before the first save)."""
    try:
        document = json.loads((process.directory / "data" / "known-peers.json").read_text())
    except (OSError, ValueError):
        return []
    peers: list[Any] = document["peers"]
    return peers


class RejoinWithoutBootstrapTests(TestCase):
    timeout = 300

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
    def assert_every_value(self, processes: list[RoleProcess], names: dict[str, str]) -> Any:
        missing = []
        for process in processes:
            for name, value in names.items():
                got = yield process.call("get", name)
                if got.get("value") != value:
                    missing.append(
                        (process.directory.name, name, got.get("stored_at"), got.get("found"))
                    )
        self.assertEqual(missing, [])

    @inlineCallbacks
    def test_bootstrap_lost_newcomer_and_restart(self) -> Any:
        """Bootstrap killed, a newcomer joins through a peer, a killed peer restarts: nothing lost."""
        bootstrap = self.start("p2psip-bootstrap", "bootstrap", [])
        yield wait_for(
            lambda: bootstrap.call("status").addCallback(lambda s: s.get("state") == "alone"),
            30,
            "the bootstrap",
        )
        peers = [
            self.start("p2psip-peer", f"peer{i}", ["--bootstrap", bootstrap.endpoint])
            for i in range(PEERS)
        ]
        everyone = [bootstrap, *peers]
        yield wait_for(lambda: ring_converged(everyone), 90, "the first ring to converge")
        names = {f"user{i}@integration.test": f"contact-{i}" for i in range(VALUES)}
        for name, value in names.items():
            yield peers[0].call("put", name, value, 600)

        # It has run long enough to have written down the peers it knows.
        yield wait_for(
            lambda: succeed(len(known_peers(bootstrap)) == PEERS),
            30,
            "the bootstrap's known-peers file",
        )
        bootstrap.kill(signal.SIGKILL)
        bootstrap.wait_exit()
        yield wait_for(lambda: ring_converged(peers), 60, "the ring to close without the bootstrap")
        yield self.assert_every_value(peers, names)

        # The enrolment server went down with the bootstrap: the newcomer was
        # enrolled before (as `p2psip enrol` leaves a data dir).
        self.ca.enrol_offline(self.directory / "newcomer")
        newcomer = self.start("p2psip-peer", "newcomer", ["--bootstrap", peers[1].endpoint])
        members = [*peers, newcomer]
        yield wait_for(lambda: ring_converged(members), 60, "the newcomer to join through a peer")
        yield self.assert_every_value(members, names)

        restarted = peers[2]
        before = yield restarted.call("status")
        self.assertGreater(len(known_peers(restarted)), 0)
        restarted.kill(signal.SIGKILL)
        restarted.wait_exit()
        restarted.restart()
        yield wait_for(
            lambda: ring_converged(members),
            90,
            "the restarted peer to rejoin without its bootstrap",
        )
        after = yield restarted.call("status")
        self.assertEqual(after["node_id"], before["node_id"])
        log = restarted.log_text()
        self.assertIn("joined the ring through peer", log)
        self.assertNotIn("Traceback", log)
        yield self.assert_every_value(members, names)

        # The bootstrap comes back too: it rejoins the ring it knew instead
        # of founding a second one beside it.
        bootstrap.restart()
        everyone = [bootstrap, *members]
        yield wait_for(
            lambda: ring_converged(everyone), 90, "the restarted bootstrap to rejoin its ring"
        )
        self.assertIn("joined the ring through peer", bootstrap.log_text())
        yield self.assert_every_value(everyone, names)

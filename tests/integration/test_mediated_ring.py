"""
A ring whose peers' candidates are unreachable, on loopback: the links
between them come from the mediator.

The mediator, a bootstrap and two peers run as ``twistd`` processes.  The
peers advertise 127.0.0.9, where nothing listens, so every direct connect
to them is refused and the mediator's ``direct`` method (both sides are
"public" on loopback) makes the link.  The NAT-lab version of this test
(tests/natlab/test_overlay_over_nat.py) puts real NATs in between; this
one needs no root.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from p2psip.testing import ring_node_mediator_secret
from tests.integration.processes import (
    OverlayCA,
    RoleProcess,
    overlay_arguments,
    start_mediator,
    wait_for,
)

SECRET = "loopback-secret"


def read_metrics(http_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as response:
        text: str = response.read().decode("utf-8")
        return text


class MediatedRingTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.directory = Path(self.mktemp()).resolve()
        self.ca = OverlayCA(self.directory / "bootstrap")

    def start(self, role: str, name: str, extra: list[str]) -> RoleProcess:
        """
        The role, enrolled beforehand (its Node-ID, which the CA chose, decides
        its mediator secret) and logged in to the mediator with its own secret.
        """
        directory = self.directory / name
        self.ca.enrol_offline(directory)
        secret = ring_node_mediator_secret(SECRET, directory / "data")
        security = self.ca.bootstrap_arguments() if role == "p2psip-bootstrap" else []
        process = RoleProcess(
            role,
            directory,
            overlay_arguments() + security + extra + ["--mediator-secret", secret],
        )
        self.addCleanup(process.stop)
        return process

    @inlineCallbacks
    def test_peers_linked_by_the_mediator(self) -> Any:
        """Two peers with unreachable candidates join, link through the mediator and share values."""
        mediator = start_mediator(self, Path(self.mktemp()).resolve(), SECRET)
        credentials = [
            "--mediator",
            mediator,
            "--direct-connect-timeout",
            "1",
        ]
        bootstrap = self.start("p2psip-bootstrap", "bootstrap", credentials)
        yield wait_for(
            lambda: bootstrap.call("status").addCallback(
                lambda s: s.get("state") == "alone" and s.get("mediator", {}).get("registered")
            ),
            30,
            "the bootstrap to register at the mediator",
        )
        peers = [
            self.start(
                "p2psip-peer",
                name,
                [*credentials, "--bootstrap", bootstrap.endpoint, "--advertise", "127.0.0.9"],
            )
            for name in ("peer-a", "peer-b")
        ]
        statuses = []
        for peer in peers:
            yield wait_for(
                lambda p=peer: p.call("status").addCallback(lambda s: s.get("state") == "joined"),
                30,
                "a peer to join",
            )
            statuses.append((yield peer.call("status")))
        ids = [status["node_id"] for status in statuses]

        def mediated_link(process: RoleProcess, other: str) -> Any:
            return lambda: process.call("status").addCallback(
                lambda s: any(c["peer"] == other and c["mediated"] for c in s["connections"])
            )

        yield wait_for(mediated_link(peers[0], ids[1]), 30, "a mediated link from A to B")
        yield wait_for(mediated_link(peers[1], ids[0]), 30, "a mediated link from B to A")
        status = yield peers[0].call("status")
        paths = {c["path"] for c in status["connections"] if c["peer"] == ids[1]}
        self.assertEqual(paths, {"direct"}, status["connections"])
        self.assertEqual(status["mediator"]["id"], ids[0])
        metrics = yield deferToThread(read_metrics, peers[0].http_port)
        self.assertRegex(metrics, r'p2psip_overlay_links_by_path\{path="direct"\} [1-9]')
        # The ring page's data shows the link by its path too.
        view = yield peers[0].call("ring_view")
        self.assertIn((ids[1], "direct"), {(link["peer"], link["path"]) for link in view["links"]})
        [member] = [m for m in view["members"] if m["node_id"] == ids[1]]
        self.assertEqual(member["paths"], ["direct"])
        yield peers[0].call("put", "alice@integration.test", "from-a", 600)
        got = yield peers[1].call("get", "alice@integration.test")
        self.assertEqual(got["value"], "from-a")

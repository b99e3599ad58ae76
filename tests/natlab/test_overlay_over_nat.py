"""
Overlay peers behind two NATs join one ring and link through the mediator
(the NAT lab; needs root and nftables).

The mediator and a bootstrap peer run in the lab's public host, peer A
behind NAT A and peer B behind NAT B, each under ``twistd -n`` with
``--mediator``.  A and B advertise their private addresses, so the direct
connect between them fails and the mediator makes their overlay link.
The admin API of every role is only reachable inside its namespace, so
the test asks it with ``natlab exec ... p2psip --api ... --json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from p2psip.testing import ring_node_mediator_secret
from tests.integration.processes import OverlayCA
from tests.natlab.harness import CONTROL, SECRET, NatLab, twistd_command

OVERLAY_PORT = 6084
BOOTSTRAP = f"tcp:198.51.100.10:{OVERLAY_PORT}"
HTTP_PORT = 8085
#: Fast overlay timers, so the ring forms within seconds.
RING_ARGUMENTS = (
    "--overlay-name",
    "natlab.test",
    "--update-interval",
    "2",
    "--ping-interval",
    "1",
    "--request-timeout",
    "3",
    "--direct-connect-timeout",
    "1",
)
PRIVATE_ADDRESS = {"a": "10.0.1.2", "b": "10.0.2.2", "pub": "198.51.100.10"}


class OverlayOverNatTests(TestCase):
    timeout = 90

    def start_role(
        self, lab: NatLab, where: str, role: str, *extra: str, loopback_candidate: bool = False
    ) -> None:
        """
        Start ``role`` in ``where``; it listens on its lab address, or with
        ``loopback_candidate`` on every interface advertising 127.0.0.1 (a
        candidate that leads every other node back to itself, as a
        misconfigured ``advertise`` does).
        """
        directory = Path(self.mktemp()).resolve()
        data_dir = str(directory / "data")
        # An enrolled ring: the bootstrap's CA is made before it starts, and the
        # peers behind the NATs are enrolled by it beforehand (`p2psip enrol`).
        # (The bootstrap too: its Node-ID decides its mediator secret below.)
        if role == "p2psip-bootstrap":
            self.ca = OverlayCA(directory, "natlab.test")
        self.ca.enrol_offline(directory)
        # p2psip reads the role's admin token from there (see api below).
        self.data_dirs = {**getattr(self, "data_dirs", {}), where: data_dir}
        overlay = (
            f"tcp:{OVERLAY_PORT}"
            if loopback_candidate
            else f"tcp:{OVERLAY_PORT}:interface={PRIVATE_ADDRESS[where]}"
        )
        if loopback_candidate:
            extra = ("--advertise", "127.0.0.1", *extra)
        lab.start(
            where,
            twistd_command(
                "-n",
                "--pidfile=",
                role,
                *RING_ARGUMENTS,
                "--overlay",
                overlay,
                "--http",
                f"tcp:{HTTP_PORT}:interface=127.0.0.1",
                "--data-dir",
                data_dir,
                "--mediator",
                CONTROL,
                "--mediator-secret",
                ring_node_mediator_secret(SECRET, Path(data_dir)),
                *extra,
            ),
            f"{role}-{where}",
        )

    def api(self, lab: NatLab, where: str, *args: str) -> Deferred[dict[str, Any]]:
        """The JSON answer of ``p2psip ARGS --json`` run inside ``where``; {} when it fails."""
        return lab.role_api(where, HTTP_PORT, self.data_dirs[where], *args)

    def wait_until(self, lab: NatLab, where: str, what: str, condition: Any) -> Any:
        """Poll the status of ``where`` until ``condition(status)`` holds; the last status."""
        return lab.wait_for_status(where, HTTP_PORT, self.data_dirs[where], what, condition)

    @inlineCallbacks
    def ring_over_nats(
        self, nat_a: str, nat_b: str, expected_paths: set[str], loopback_candidate: bool = False
    ) -> Any:
        lab = NatLab.up(self, nat_a, nat_b)
        lab.start_mediator()
        self.start_role(lab, "pub", "p2psip-bootstrap")
        yield self.wait_until(
            lab,
            "pub",
            "the bootstrap to found the ring and register at the mediator",
            lambda s: s.get("state") == "alone" and s.get("mediator", {}).get("registered"),
        )
        for where in ("a", "b"):
            self.start_role(
                lab,
                where,
                "p2psip-peer",
                "--bootstrap",
                BOOTSTRAP,
                loopback_candidate=loopback_candidate,
            )
        joined = {}
        for where in ("a", "b"):
            joined[where] = yield self.wait_until(
                lab, where, "the peer to join", lambda s: s.get("state") == "joined"
            )
        ids = {where: joined[where]["node_id"] for where in ("a", "b")}

        def linked_to(other: str) -> Any:
            def condition(status: dict[str, Any]) -> bool:
                return any(
                    c.get("peer") == ids[other] and c.get("mediated")
                    for c in status.get("connections", [])
                )

            return condition

        for here, other in (("a", "b"), ("b", "a")):
            status = yield self.wait_until(
                lab, here, f"a mediated link to {other}", linked_to(other)
            )
            paths = {
                c["path"]
                for c in status["connections"]
                if c.get("peer") == ids[other] and c.get("mediated")
            }
            self.assertTrue(paths <= expected_paths, (here, status["connections"]))
            self.assertTrue(status["mediator"]["registered"])
            successors = {p["node_id"] for p in status["successors"]}
            self.assertIn(ids[other], successors)
            if loopback_candidate:
                self.assertEqual(status["address"], f"127.0.0.1:{OVERLAY_PORT}")
        for writer, reader in (("a", "b"), ("b", "a")):
            name = f"written-by-{writer}@natlab.test"
            stored = yield self.api(lab, writer, "put", name, f"value from {writer}")
            self.assertTrue(stored, f"put through {writer} failed")
            fetched = yield self.api(lab, reader, "get", name)
            self.assertEqual(fetched.get("value"), f"value from {writer}", fetched)

    def test_eim_eim_simultaneous_open(self) -> Any:
        """Peers behind two EIM NATs join the ring and link by TCP simultaneous open."""
        return self.ring_over_nats("eim", "eim", {"simultaneous-open"})

    def test_eim_random_relayed(self) -> Any:
        """A peer behind an EIM NAT and one behind a random-allocation NAT link through the relay."""
        return self.ring_over_nats("eim", "random", {"relayed"})

    def test_random_random_relayed(self) -> Any:
        """Peers behind two random-allocation NATs join the ring and link through the relay."""
        return self.ring_over_nats("random", "random", {"relayed"})

    def test_loopback_candidates_use_the_mediator(self) -> Any:
        """Peers whose candidate is a loopback address (leading back to oneself) still link through the mediator."""
        return self.ring_over_nats("eim", "eim", {"simultaneous-open"}, loopback_candidate=True)


__all__ = ["OverlayOverNatTests"]

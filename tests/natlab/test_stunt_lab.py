"""
STUNT traversal through real NATs (the NAT lab; needs root and nftables).

One lab per test: the mediator runs under twistd in the lab's public host,
``p2psip nat listen`` behind NAT B and ``p2psip nat connect`` behind NAT A.
Each test checks the method that must work for its NAT pair, and that the
echo went both ways (connect exits 0 only after its ping came back).
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.natlab.harness import NatLab, listener_records


class StuntLabTests(SynchronousTestCase):
    def connect_pair(
        self,
        nat_a: str,
        nat_b: str,
        *connect_args: str,
        tcp_liberal: bool = False,
        mediator_args: tuple[str, ...] = (),
        expect_ok: bool = True,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        lab = NatLab.up(self, nat_a, nat_b, tcp_liberal=tcp_liberal)
        lab.start_mediator(*mediator_args)
        listener = lab.start_listener(count=1 if expect_ok else 0)
        status, records, stderr = lab.connect(*connect_args)
        self.assertEqual(len(records), 1, stderr)
        [record] = records
        self.assertEqual((status == 0, record["ok"]), (expect_ok, expect_ok), record)
        incoming = (
            [r for r in listener_records(listener) if r.get("event") == "incoming"]
            if expect_ok
            else []
        )
        return record, incoming

    def test_none_eim_direct(self) -> None:
        """A public host and an EIM NAT connect directly."""
        record, incoming = self.connect_pair("none", "eim")
        self.assertEqual(record["method"], "direct")
        self.assertEqual([r["method"] for r in incoming], ["direct"])

    def test_eim_eim_simultaneous_open(self) -> None:
        """Two endpoint-independent NATs connect by TCP simultaneous open."""
        record, incoming = self.connect_pair("eim", "eim")
        self.assertEqual(record["method"], "simultaneous-open")
        self.assertEqual([r["method"] for r in incoming], ["simultaneous-open"])

    def test_sequential_sequential_predicted(self) -> None:
        """Two sequential NATs connect by simultaneous open aimed at the predicted ports."""
        record, incoming = self.connect_pair("sequential", "sequential")
        self.assertEqual(record["method"], "simultaneous-open")
        self.assertEqual([r["method"] for r in incoming], ["simultaneous-open"])

    def test_eim_random_relayed(self) -> None:
        """Behind a random-allocation NAT the relay is used and the result says direct is impossible."""
        record, incoming = self.connect_pair("eim", "random")
        self.assertEqual(record["method"], "relayed")
        self.assertIn("B's NAT with random port allocation", record["reason"])
        self.assertIn("direct path is impossible", record["reason"])
        self.assertEqual([r["method"] for r in incoming], ["relayed"])

    def test_random_random_relayed(self) -> None:
        """Two random-allocation NATs are relayed at once, without a futile attempt."""
        record, incoming = self.connect_pair("random", "random")
        self.assertEqual(record["method"], "relayed")
        self.assertIn("direct path is impossible", record["reason"])
        self.assertNotIn("failed at", record["reason"])

    def test_random_random_relay_disabled(self) -> None:
        """With the relay disabled the failure names the NATs and the setting, and connect exits 1."""
        record, _ = self.connect_pair(
            "random", "random", mediator_args=("--relay", "no"), expect_ok=False
        )
        self.assertIn("direct path is impossible", record["reason"])
        self.assertIn("relay disabled in mediator.ini [mediator] relay", record["reason"])

    def test_low_ttl_with_liberal_nats(self) -> None:
        """The low-TTL SYN variant (STUNT #2) works through NATs that do not track TCP windows."""
        record, incoming = self.connect_pair("eim", "eim", "--methods", "low-ttl", tcp_liberal=True)
        self.assertEqual(record["method"], "low-ttl")
        self.assertEqual([r["method"] for r in incoming], ["low-ttl"])

    def test_low_ttl_window_tracking_explained(self) -> None:
        """Against window-tracking NATs low-TTL fails with a reason that names the conntrack setting."""
        record, _ = self.connect_pair("eim", "eim", "--methods", "low-ttl", expect_ok=False)
        self.assertIn("nf_conntrack_tcp_be_liberal", record["reason"])

    def test_udp_eim_eim_punched(self) -> None:
        """UDP hole punching through the broker works between two EIM NATs."""
        record, incoming = self.connect_pair("eim", "eim", "--udp")
        self.assertEqual(record["method"], "udp-punch")
        self.assertEqual([r["method"] for r in incoming], ["udp-punch"])

    def test_udp_sequential_sequential_predicted(self) -> None:
        """UDP hole punching between sequential NATs works with port prediction."""
        record, _ = self.connect_pair("sequential", "sequential", "--udp")
        self.assertEqual(record["method"], "udp-punch")

    def test_udp_eim_random_explained(self) -> None:
        """UDP towards a random-allocation NAT fails at once, saying why and that datagrams are not relayed."""
        record, _ = self.connect_pair("eim", "random", "--udp", expect_ok=False)
        self.assertIn("direct path is impossible", record["reason"])
        self.assertIn("relays TCP streams only", record["reason"])

    def test_probe(self) -> None:
        """nat probe classifies an EIM NAT and a random NAT (TCP allocation, RFC 5780 UDP mapping and filtering)."""
        lab = NatLab.up(self, "eim", "random")
        lab.start_mediator()
        eim, random = lab.probe("a"), lab.probe("b")
        self.assertEqual(
            (eim["tcp_allocation"], eim["udp_mapping"], eim["udp_filtering"]),
            ("preserving", "endpoint-independent", "address-and-port-dependent"),
        )
        self.assertEqual(
            (random["tcp_allocation"], random["udp_mapping"], random["tcp_predictable"]),
            ("random", "address-and-port-dependent", False),
        )

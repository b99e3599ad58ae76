"""RFC 3263 server location against canned DNS records, and RFC 2782's SRV order."""

from __future__ import annotations

import random
from collections import Counter

from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip.locating import (
    MAX_QUERIES,
    MAX_TARGETS,
    AddressRecord,
    NaptrRecord,
    Query,
    Record,
    SrvRecord,
    order_srv,
    run_search,
    search,
)
from p2psip.sip.transaction import Hop
from p2psip.sip.uri import SipURI, parse_uri


def uri(text: str) -> SipURI:
    parsed = parse_uri(text)
    assert isinstance(parsed, SipURI)
    return parsed


def a(*addresses: str) -> list[Record]:
    return [AddressRecord(address) for address in addresses]


#: kam.example: NAPTR prefers TCP over UDP, two UDP servers by SRV weight.
KAM = {
    Query("kam.example", "NAPTR"): [
        NaptrRecord(10, 20, "S", "SIP+D2U", "_sip._udp.kam.example."),
        NaptrRecord(10, 10, "S", "SIP+D2T", "_sip._tcp.kam.example."),
        NaptrRecord(20, 10, "S", "SIPS+D2T", "_sips._tcp.kam.example."),
        NaptrRecord(5, 10, "S", "SIP+D2S", "_sip._sctp.kam.example."),
    ],
    Query("_sip._tcp.kam.example", "SRV"): [SrvRecord(0, 0, 5070, "sip1.kam.example.")],
    Query("_sip._udp.kam.example", "SRV"): [
        SrvRecord(10, 0, 5080, "sip2.kam.example"),
        SrvRecord(0, 0, 5070, "sip1.kam.example"),
    ],
    Query("sip1.kam.example", "A"): a("192.0.2.1"),
    Query("sip1.kam.example", "AAAA"): a("2001:db8::1"),
    Query("sip2.kam.example", "A"): a("192.0.2.2"),
}


class SearchTests(SynchronousTestCase):
    def test_naptr_order_then_srv_then_addresses(self) -> None:
        """NAPTR picks TCP first (then UDP; SCTP and TLS unusable), SRV priorities order each, A before AAAA."""
        self.assertEqual(
            run_search(uri("sip:kuser@kam.example"), KAM),
            [
                Hop("TCP", "192.0.2.1", 5070),
                Hop("TCP", "2001:db8::1", 5070),
                Hop("UDP", "192.0.2.1", 5070),
                Hop("UDP", "2001:db8::1", 5070),
                Hop("UDP", "192.0.2.2", 5080),
            ],
        )

    def test_transport_parameter_skips_naptr(self) -> None:
        """transport=udp asks only the UDP SRV name (s4.1)."""
        asked: list[Query] = []
        steps = search(uri("sip:kam.example;transport=udp"), ("UDP", "TCP"), random.Random(1))
        query = next(steps)
        try:
            while True:
                asked.append(query)
                query = steps.send(KAM.get(query, []))
        except StopIteration as done:
            targets = done.value
        self.assertNotIn(Query("kam.example", "NAPTR"), asked)
        self.assertEqual(targets[0], Hop("UDP", "192.0.2.1", 5070))

    def test_explicit_port_means_addresses_only(self) -> None:
        """A port in the URI: A/AAAA of the host at that port, UDP by default (s4.2)."""
        records = {Query("sip1.kam.example", "A"): a("192.0.2.1")}
        self.assertEqual(
            run_search(uri("sip:x@sip1.kam.example:5999"), records),
            [Hop("UDP", "192.0.2.1", 5999)],
        )

    def test_ip_address_needs_no_dns(self) -> None:
        """A numeric host is the target itself; TCP when asked for, 5060 by default."""
        self.assertEqual(
            run_search(uri("sip:x@192.0.2.9;transport=tcp"), {}), [Hop("TCP", "192.0.2.9", 5060)]
        )
        self.assertEqual(
            run_search(uri("sip:x@[2001:db8::9]:5062"), {}), [Hop("UDP", "2001:db8::9", 5062)]
        )

    def test_no_naptr_tries_srv_of_each_transport(self) -> None:
        """Without NAPTR, _sip._udp then _sip._tcp; only the names that exist count."""
        records = {
            Query("_sip._tcp.plain.example", "SRV"): [SrvRecord(0, 0, 5090, "pbx.plain.example")],
            Query("pbx.plain.example", "A"): a("198.51.100.5"),
        }
        self.assertEqual(
            run_search(uri("sip:x@plain.example"), records), [Hop("TCP", "198.51.100.5", 5090)]
        )

    def test_no_srv_means_the_host_on_the_default_port(self) -> None:
        """No NAPTR, no SRV: A records of the domain, UDP, 5060."""
        records = {Query("bare.example", "A"): a("198.51.100.6", "198.51.100.7")}
        self.assertEqual(
            run_search(uri("sip:x@bare.example"), records),
            [Hop("UDP", "198.51.100.6", 5060), Hop("UDP", "198.51.100.7", 5060)],
        )

    def test_naptr_transport_without_srv_falls_back_on_it(self) -> None:
        """NAPTR chose TCP but its SRV name is empty: the domain's addresses over TCP (s4.2)."""
        records = {
            Query("tcp.example", "NAPTR"): [
                NaptrRecord(1, 1, "s", "SIP+D2T", "_sip._tcp.tcp.example")
            ],
            Query("tcp.example", "A"): a("198.51.100.8"),
        }
        self.assertEqual(
            run_search(uri("sip:x@tcp.example"), records), [Hop("TCP", "198.51.100.8", 5060)]
        )

    def test_sips_needs_tls(self) -> None:
        """A sips URI is never sent over UDP or TCP: without outbound TLS there is no target."""
        self.assertEqual(run_search(uri("sips:x@kam.example"), KAM), [])
        self.assertEqual(
            run_search(uri("sips:x@kam.example"), KAM, transports=("UDP", "TCP", "TLS")), []
        )

    def test_srv_dot_means_no_service(self) -> None:
        """An SRV target of "." says the service is not offered: no fallback to A records."""
        records = {
            Query("_sip._udp.none.example", "SRV"): [SrvRecord(0, 0, 0, ".")],
            Query("none.example", "A"): a("198.51.100.9"),
        }
        self.assertEqual(run_search(uri("sip:x@none.example"), records), [])

    def test_hostile_records_are_bounded(self) -> None:
        """Hundreds of SRV targets yield at most MAX_TARGETS, and cost at most MAX_QUERIES lookups."""
        many = {
            Query("_sip._udp.big.example", "SRV"): [
                SrvRecord(0, 1, 5060, f"h{n}.big.example") for n in range(300)
            ]
        }
        for n in range(300):
            many[Query(f"h{n}.big.example", "A")] = a(f"10.0.{n // 256}.{n % 256}")
        self.assertEqual(len(run_search(uri("sip:x@big.example"), many)), MAX_TARGETS)
        asked: list[Query] = []
        steps = search(uri("sip:x@big.example"), ("UDP", "TCP"), random.Random(0))
        try:
            query = next(steps)
            while True:
                asked.append(query)
                # No target has an address: the search would ask for all 600.
                query = steps.send(many[query] if query.record_type == "SRV" else [])
        except StopIteration as done:
            self.assertEqual(done.value, [])
        self.assertEqual(len(asked), MAX_QUERIES)

    def test_garbage_addresses_are_skipped(self) -> None:
        """An A record that is no address (a hostile or broken server) is ignored."""
        records = {Query("odd.example", "A"): a("not-an-address", "192.0.2.77")}
        self.assertEqual(
            run_search(uri("sip:x@odd.example"), records), [Hop("UDP", "192.0.2.77", 5060)]
        )


class SrvOrderTests(SynchronousTestCase):
    def test_priority_first(self) -> None:
        """Lower priority always comes first, whatever the weights."""
        records = [SrvRecord(20, 100, 1, "b"), SrvRecord(10, 0, 2, "a")]
        for seed in range(20):
            self.assertEqual(
                [r.target for r in order_srv(records, random.Random(seed))], ["a", "b"]
            )

    def test_weights_share_the_first_place(self) -> None:
        """
        Weights 3:1 put the heavy target first four times in five: RFC
        2782 draws from 0 to the sum inclusive, and 0 picks the first.
        """
        records = [SrvRecord(0, 3, 1, "heavy"), SrvRecord(0, 1, 2, "light")]
        rng = random.Random(7)
        firsts = Counter(order_srv(records, rng)[0].target for _ in range(4000))
        self.assertLess(abs(firsts["heavy"] / 4000 - 0.8), 0.03)

    def test_zero_weights_still_all_returned(self) -> None:
        """Weight-0 records are kept, each exactly once."""
        records = [SrvRecord(0, 0, n, f"t{n}") for n in range(5)]
        self.assertEqual(
            sorted(r.port for r in order_srv(records, random.Random(3))), list(range(5))
        )

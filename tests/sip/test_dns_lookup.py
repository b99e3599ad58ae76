"""The twisted.names side of RFC 3263: real DNS messages to a canned server on loopback."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase, TestCase

from p2psip.sip.dns_lookup import (
    ServerLocator,
    make_resolver,
    parse_dns_server,
    resolv_conf_servers,
)
from p2psip.sip.transaction import Hop
from p2psip.sip.uri import SipURI

from .dns_server import serve_zone

ZONE = {
    ("kam.example", dns.NAPTR): [
        dns.Record_NAPTR(10, 10, b"s", b"SIP+D2T", b"", b"_sip._tcp.kam.example"),
        dns.Record_NAPTR(20, 10, b"s", b"SIP+D2U", b"", b"_sip._udp.kam.example"),
    ],
    ("_sip._tcp.kam.example", dns.SRV): [dns.Record_SRV(0, 0, 5070, b"sip1.kam.example")],
    ("_sip._udp.kam.example", dns.SRV): [dns.Record_SRV(0, 0, 5071, b"sip1.kam.example")],
    ("sip1.kam.example", dns.A): [dns.Record_A("127.0.0.9")],
    ("sip1.kam.example", dns.AAAA): [dns.Record_AAAA("::1")],
}


class ServerLocatorTests(TestCase):
    """ServerLocator through a twisted.names client against a loopback DNS server."""

    timeout = 10

    def locator(self) -> ServerLocator:
        port, self.authority = serve_zone(self, reactor, ZONE)
        return ServerLocator(make_resolver([("127.0.0.1", port)], reactor), random.Random(0))

    @inlineCallbacks
    def test_naptr_srv_and_addresses(self) -> Any:
        """NAPTR, SRV, A and AAAA answers become targets in RFC 3263 order."""
        hops = yield self.locator().locate(SipURI(host="kam.example", user="kuser"))
        self.assertEqual(
            hops,
            [
                Hop("TCP", "127.0.0.9", 5070),
                Hop("TCP", "::1", 5070),
                Hop("UDP", "127.0.0.9", 5071),
                Hop("UDP", "::1", 5071),
            ],
        )
        self.assertEqual(self.authority.queries[0], ("kam.example", dns.NAPTR))

    @inlineCallbacks
    def test_unknown_domain_finds_nothing(self) -> Any:
        """NXDOMAIN on every step: no target, and no error either."""
        locator = self.locator()
        hops = yield locator.locate(SipURI(host="nowhere.example"))
        self.assertEqual((hops, locator.failed_lookups), ([], 0))


class ResolverConfigurationTests(SynchronousTestCase):
    def test_parse_dns_server(self) -> None:
        """IPv4 and bracketed IPv6, port 53 by default; names and bad ports refused."""
        self.assertEqual(parse_dns_server("127.0.0.1:5353"), ("127.0.0.1", 5353))
        self.assertEqual(parse_dns_server("192.0.2.53"), ("192.0.2.53", 53))
        self.assertEqual(parse_dns_server("[2001:db8::53]:5300"), ("2001:db8::53", 5300))
        self.assertEqual(parse_dns_server("2001:db8::53"), ("2001:db8::53", 53))
        for bad in ("dns.example:53", "127.0.0.1:0", "127.0.0.1:99999", "[::1]x"):
            self.assertRaises(ValueError, parse_dns_server, bad)

    def test_resolv_conf(self) -> None:
        """nameserver lines are read once; without any, 127.0.0.1."""
        path = Path(self.mktemp())
        path.write_text(
            "search example\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\nnameserver x\n"
        )
        self.assertEqual(resolv_conf_servers(path), [("192.0.2.1", 53), ("fe80::1", 53)])
        path.write_text("# nothing\n")
        self.assertEqual(resolv_conf_servers(path), [("127.0.0.1", 53)])
        self.assertEqual(resolv_conf_servers(Path(self.mktemp())), [("127.0.0.1", 53)])

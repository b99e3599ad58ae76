"""
The gateway in the proxy: requests for other domains are routed by the
rules (peer domains by RFC 3263, static routes) or refused, with failover
between a destination's servers; requests from peer domains are recognised.
"""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip.dns_lookup import ServerLocator
from p2psip.sip.domain_routes import (
    DomainRoutes,
    ForeignCallers,
    RouteKind,
    parse_peer_domain,
    parse_static_route,
)
from p2psip.sip.gateway import Gateway
from p2psip.sip.message import Request, make_response
from p2psip.sip.proxy import NODE_PARAMETER
from p2psip.sip.transaction import Hop
from p2psip.sip.uri import SipURI

from . import test_caller_auth
from .dns_server import CannedAuthority, Zone
from .test_caller_auth import (
    ALICE_PHONE,
    BOB_PHONE,
    OUTSIDER,
    AuthNode,
    proxy_authorization,
    register_text,
    request_text,
)
from .test_proxy import ADDRESS_A, ADDRESS_B, DOMAIN, NODE_A, Node, message_text, ring_of_two

#: kam.example's servers: UDP on 127.0.0.9:5070, then 127.0.0.10:5070.
KAM_ZONE: Zone = {
    ("kam.example", dns.NAPTR): [
        dns.Record_NAPTR(10, 10, b"s", b"SIP+D2U", b"", b"_sip._udp.kam.example"),
    ],
    ("_sip._udp.kam.example", dns.SRV): [
        dns.Record_SRV(0, 0, 5070, b"sip1.kam.example"),
        dns.Record_SRV(1, 0, 5070, b"sip2.kam.example"),
    ],
    ("sip1.kam.example", dns.A): [dns.Record_A("127.0.0.9")],
    ("sip2.kam.example", dns.A): [dns.Record_A("127.0.0.10")],
}
KAM_1 = Hop("UDP", "127.0.0.9", 5070)
KAM_2 = Hop("UDP", "127.0.0.10", 5070)
PSTN = Hop("TCP", "192.0.2.30", 5060)


def rules(foreign_callers: ForeignCallers | None = None) -> DomainRoutes:
    return DomainRoutes.build(
        DOMAIN,
        ["alias.example"],
        [parse_peer_domain("kam.example=198.51.100.77")],
        [parse_static_route("pstn.example=sip:192.0.2.30:5060;transport=tcp")],
        foreign_callers,
    )


def install_gateway(node: Node, clock: Clock, routes: DomainRoutes) -> CannedAuthority:
    authority = CannedAuthority(KAM_ZONE)
    node.proxy.gateway = Gateway(routes, ServerLocator(authority, random.Random(0)), clock)
    return authority


class DomainRoutesTests(SynchronousTestCase):
    def test_destinations(self) -> None:
        """Each host falls in one group: ours (case and trailing dot aside), peer, static, unrouted."""
        routes = rules()
        self.assertEqual(routes.destination("EXAMPLE.org.").kind, RouteKind.LOCAL)
        self.assertEqual(routes.destination("alias.example").kind, RouteKind.LOCAL)
        self.assertEqual(routes.destination("kam.example").kind, RouteKind.PEER)
        static = routes.destination("pstn.example")
        self.assertEqual(
            (static.kind, str(static.next_hop)),
            (RouteKind.STATIC, "sip:192.0.2.30:5060;transport=tcp"),
        )
        self.assertEqual(routes.destination("192.0.2.99").kind, RouteKind.UNROUTED)
        self.assertEqual(routes.foreign_callers, ForeignCallers.PEER_DOMAINS)
        self.assertEqual(DomainRoutes.build(DOMAIN).foreign_callers, ForeignCallers.ANYONE)

    def test_bad_rules_refused(self) -> None:
        """A domain in two roles, a bad address, a route without a URI: ValueError naming it."""
        self.assertRaises(
            ValueError,
            DomainRoutes.build,
            DOMAIN,
            ["kam.example"],
            [parse_peer_domain("kam.example")],
        )
        for bad in ("kam.example=not-an-ip", "=1.2.3.4", "a b"):
            self.assertRaises(ValueError, parse_peer_domain, bad)
        for bad in (
            "pstn.example",
            "pstn.example=",
            "pstn.example=tel:+1555",
            "pstn.example=sip:u@h",
        ):
            self.assertRaises(ValueError, parse_static_route, bad)


class GatewayRoutingTests(SynchronousTestCase):
    """Node A (trusted network: every phone's From is believed) with gateway rules."""

    def setUp(self) -> None:
        self.clock, self.a, _ = ring_of_two(self, Node)
        self.authority = install_gateway(self.a, self.clock, rules())

    def invites(self) -> list[tuple[Request, Hop]]:
        return [(r, hop) for r, hop in self.a.sender.requests if r.method == "INVITE"]

    def last_status(self) -> int:
        return self.a.sender.responses[-1][0].status

    def test_call_to_peer_domain_goes_to_its_first_server(self) -> None:
        """Our user calls kuser@kam.example: forwarded to the first SRV target, record-routed, answered back."""
        self.a.receive(message_text(uri="sip:kuser@kam.example"))
        [(invite, hop)] = self.invites()
        self.assertEqual((hop, str(invite.uri)), (KAM_1, "sip:kuser@kam.example"))
        self.assertEqual(len(invite.record_routes), 1)
        self.assertEqual(self.authority.queries[0], ("kam.example", dns.NAPTR))
        self.a.receive(make_response(invite, 200, to_tag="kam1"), KAM_1)
        self.assertEqual(self.a.sender.statuses()[-1], 200)

    def test_route_header_with_foreign_request_uri(self) -> None:
        """
        An outbound-proxy phone's INVITE (our Route on top) for another
        domain is routed by the rules, not answered 500.
        """
        route = f"Route: <sip:{ADDRESS_A[0]}:{ADDRESS_A[1]};lr>"
        self.a.receive(message_text(uri="sip:kuser@kam.example", extra=route))
        [(invite, hop)] = self.invites()
        self.assertEqual((hop, invite.headers.values("Route")), (KAM_1, []))
        self.a.receive(
            message_text(uri="sip:kuser@nowhere.example", branch="z9hG4bK2", extra=route)
        )
        self.assertEqual(self.last_status(), 404)
        # The overlay's domain as outbound proxy names us too.
        self.a.sender.requests.clear()
        self.a.receive(
            message_text(
                uri="sip:kuser@kam.example", branch="z9hG4bK3", extra="Route: <sip:example.org;lr>"
            )
        )
        [(invite, hop)] = self.invites()
        self.assertEqual((hop, invite.headers.values("Route")), (KAM_1, []))

    def test_failover_on_transport_error_503_and_timeout(self) -> None:
        """The next server is tried when one cannot be reached, says 503, or never answers."""
        self.a.sender.fail_to.add(KAM_1)
        self.a.receive(message_text(uri="sip:kuser@kam.example"))
        self.assertEqual([hop for _, hop in self.invites()], [KAM_1, KAM_2])
        invite = self.invites()[-1][0]
        self.a.receive(make_response(invite, 200, to_tag="k2"), KAM_2)
        self.assertEqual(self.a.sender.statuses()[-1], 200)

        self.a.sender.requests.clear()
        self.a.sender.fail_to.clear()
        self.a.receive(message_text(uri="sip:kuser@kam.example", branch="z9hG4bK503"))
        first = self.invites()[0][0]
        self.a.receive(make_response(first, 503, to_tag="k1"), KAM_1)
        self.assertEqual([hop for _, hop in self.invites()], [KAM_1, KAM_2])

        self.a.sender.requests.clear()
        self.a.receive(message_text(uri="sip:kuser@kam.example", branch="z9hG4bKsilent"))
        self.clock.advance(32.5)  # Timer B: no answer at all from the first
        self.assertEqual([hop for _, hop in self.invites()][-1], KAM_2)

    def test_no_failover_once_a_server_answered(self) -> None:
        """A 486 from the first server is the answer: nothing is sent to the second."""
        self.a.receive(message_text(uri="sip:kuser@kam.example"))
        invite = self.invites()[0][0]
        self.a.receive(make_response(invite, 486, to_tag="k1"), KAM_1)
        self.assertEqual((len(self.invites()), self.last_status()), (1, 486))

    def test_static_route(self) -> None:
        """pstn.example goes to its configured next hop, over TCP, Request-URI unchanged."""
        self.a.receive(message_text(uri="sip:+15551234@pstn.example;user=phone"))
        [(invite, hop)] = self.invites()
        self.assertEqual((hop, invite.uri.host), (PSTN, "pstn.example"))  # type: ignore[union-attr]

    def test_transport_change_is_record_routed_twice(self) -> None:
        """A TCP caller's call leaving over UDP carries our TCP and our UDP entries (RFC 5658)."""
        self.a.proxy.advertised_ports = {"UDP": 5060, "TCP": 5060}
        self.a.receive(
            message_text(uri="sip:kuser@kam.example"), Hop("TCP", "198.51.100.10", 40999)
        )
        [(invite, _)] = self.invites()
        node = f"{NODE_PARAMETER}={NODE_A:032x}"
        self.assertEqual(
            [str(r.uri) for r in invite.record_routes],
            [f"sip:203.0.113.1:5060;lr;{node}", f"sip:203.0.113.1:5060;transport=tcp;lr;{node}"],
        )

    def test_unrouted_domain(self) -> None:
        """Our user gets 404 naming the domain; a stranger 403 relaying denied, warned once."""
        self.a.receive(message_text(uri="sip:x@elsewhere.example"))
        self.assertEqual(self.last_status(), 404)
        self.assertIn("elsewhere.example", self.a.sender.responses[-1][0].reason)
        with capturedLogs() as events:
            for n in range(5):
                self.a.receive(
                    message_text(uri="sip:x@kam.example", branch=f"z9hG4bKs{n}").replace(
                        b"sip:bob@example.org", b"sip:mallory@evil.example"
                    )
                )
        finals = [status for status in self.a.sender.statuses() if status >= 200]
        self.assertEqual(finals[-5:], [403] * 5)
        self.assertEqual(self.a.sender.responses[-1][0].reason, "Forbidden (relaying denied)")
        self.assertEqual(len([e for e in events if e["log_level"] == LogLevel.warn]), 1)
        self.assertEqual(self.invites(), [])

    def test_address_of_a_registered_phone_is_no_target(self) -> None:
        """kuser@ADDRESS:PORT of alice's phone does not ring alice: no accidental connection."""
        self.a.receive(register_text("alice", ALICE_PHONE), ALICE_PHONE)
        self.a.receive(message_text(uri=f"sip:kuser@{ALICE_PHONE.host}:{ALICE_PHONE.port}"))
        self.assertEqual((self.invites(), self.last_status()), ([], 404))

    def test_alias_reaches_the_overlay_user(self) -> None:
        """sip:alice@alias.example is alice of the overlay."""
        self.a.receive(register_text("alice", ALICE_PHONE), ALICE_PHONE)
        self.a.receive(message_text(uri="sip:alice@alias.example"))
        [(_, hop)] = self.invites()
        self.assertEqual(hop, ALICE_PHONE)

    def test_in_dialog_request_through_the_peer_proxy(self) -> None:
        """A BYE whose route set continues at kam.example's proxy goes there; an unknown proxy is refused."""
        ours = f"<sip:{ADDRESS_A[0]}:{ADDRESS_A[1]};lr>"
        self.a.receive(
            message_text(
                "BYE",
                uri="sip:kuser@127.0.0.50:5090",
                branch="z9hG4bKbye",
                to_tag=";tag=k1",
                extra=f"Route: {ours}, <sip:127.0.0.9:5070;lr>",
            )
        )
        [(bye, hop)] = [(r, h) for r, h in self.a.sender.requests if r.method == "BYE"]
        self.assertEqual((hop, str(bye.uri)), (KAM_1, "sip:kuser@127.0.0.50:5090"))
        self.a.receive(
            message_text(
                "BYE",
                uri="sip:kuser@127.0.0.50:5090",
                branch="z9hG4bKbye2",
                to_tag=";tag=k1",
                extra=f"Route: {ours}, <sip:192.0.2.200:5070;lr>",
            )
        )
        self.assertEqual(self.last_status(), 403)

    def test_stranger_cannot_preload_a_route_to_the_peer(self) -> None:
        """A new request from another domain with a Route to kam.example's proxy is refused."""
        self.a.receive(
            message_text(
                uri="sip:kuser@kam.example", extra="Route: <sip:127.0.0.9:5070;lr>"
            ).replace(b"sip:bob@example.org", b"sip:mallory@evil.example")
        )
        self.assertEqual((self.invites(), self.last_status()), ([], 403))

    def test_dns_answers_nothing(self) -> None:
        """A peer domain whose DNS has no SIP servers: 480 naming it, nothing sent."""
        self.a.proxy.gateway = Gateway(
            rules(), ServerLocator(CannedAuthority({}), random.Random(0)), self.clock
        )
        self.a.receive(message_text(uri="sip:kuser@kam.example"))
        self.assertEqual((self.invites(), self.last_status()), ([], 480))
        self.assertIn("kam.example", self.a.sender.responses[-1][0].reason)


class PeerDomainCallerTests(SynchronousTestCase):
    """Digest on, foreign callers limited to peer domains (the default once one is configured)."""

    def setUp(self) -> None:
        self.clock, self.a, _ = ring_of_two(self, AuthNode)
        self.authority = install_gateway(self.a, self.clock, rules())
        test_caller_auth.CallerAuthenticationTests.register(self, self.a, "bob", BOB_PHONE)  # type: ignore[arg-type]

    def call_from(
        self, source: Hop, caller_domain: str = "kam.example", branch: str = "z9hG4bKin"
    ) -> int:
        self.a.receive(
            request_text(caller="kuser", caller_domain=caller_domain, branch=branch), source
        )
        return self.a.last_response().status

    def test_peer_server_is_let_through(self) -> None:
        """From one of kam.example's servers (found by DNS), kuser's call reaches bob without a 407."""
        self.call_from(KAM_1)
        [(_, hop)] = self.a.forwarded()
        self.assertEqual(hop, BOB_PHONE)

    def test_configured_address_is_let_through(self) -> None:
        """The address configured with sip-peer-domain counts too."""
        self.call_from(Hop("TCP", "198.51.100.77", 40000))
        self.assertEqual(len(self.a.forwarded()), 1)

    def test_stranger_gets_407(self) -> None:
        """The same From from an address kam.example does not have is challenged."""
        self.assertEqual(self.call_from(OUTSIDER), 407)
        self.assertEqual(self.call_from(OUTSIDER, "evil.example", "z9hG4bKin2"), 407)
        self.assertEqual(self.a.forwarded(), [])

    def test_addresses_are_cached(self) -> None:
        """Ten calls from kam.example cost one round of DNS lookups, until the cache expires."""
        for n in range(10):
            self.call_from(KAM_1, branch=f"z9hG4bKc{n}")
        naptr = [q for q in self.authority.queries if q == ("kam.example", dns.NAPTR)]
        self.assertEqual(len(naptr), 1)
        self.clock.advance(301)
        self.call_from(KAM_1, branch="z9hG4bKlater")
        naptr = [q for q in self.authority.queries if q == ("kam.example", dns.NAPTR)]
        self.assertEqual(len(naptr), 2)

    def test_a_users_password_does_not_vouch_for_another_domain(self) -> None:
        """A stranger answering the 407 with bob's password, From kam.example, gets 403."""
        self.assertEqual(self.call_from(OUTSIDER), 407)
        authorization = proxy_authorization(self.a.last_response(), "bob", "builder")
        self.a.receive(
            request_text(
                caller="kuser",
                caller_domain="kam.example",
                branch="z9hG4bKin2",
                cseq=2,
                extra=(f"Proxy-Authorization: {authorization}",),
            ),
            OUTSIDER,
        )
        self.assertEqual((self.a.last_response().status, self.a.forwarded()), (403, []))

    def test_forwarded_by_a_ring_member(self) -> None:
        """
        B, also limited to peer domains, takes kuser's call that A admitted
        and forwarded: A's Record-Route proves a ring member sent it.
        """
        clock, a, b = ring_of_two(self, AuthNode)
        for node in (a, b):
            install_gateway(node, clock, rules())
        test_caller_auth.CallerAuthenticationTests.register(self, b, "bob", BOB_PHONE)  # type: ignore[arg-type]
        a.receive(request_text(caller="kuser", caller_domain="kam.example"), KAM_1)
        [(invite, hop)] = a.forwarded()
        self.assertEqual(hop, Hop("UDP", *ADDRESS_B))
        b.receive(invite, Hop("UDP", *ADDRESS_A))
        [(_, delivered)] = b.forwarded()
        self.assertEqual(delivered, BOB_PHONE)

    def test_anyone_policy(self) -> None:
        """With foreign-callers anyone, callers from every domain pass unchallenged (a public domain)."""
        install_gateway(self.a, self.clock, rules(ForeignCallers.ANYONE))
        self.call_from(OUTSIDER, "evil.example")
        self.assertEqual(len(self.a.forwarded()), 1)


class GatewayTests(SynchronousTestCase):
    def test_domain_of_source_without_foreign_domains(self) -> None:
        """With no peer domain configured nobody is a peer, and no DNS is asked."""
        gateway = Gateway(DomainRoutes.build(DOMAIN), None, Clock())
        self.assertIsNone(self.successResultOf(gateway.domain_of_source("127.0.0.9")))

    def test_concurrent_lookups_share_one(self) -> None:
        """Requests arriving while kam.example's servers are being looked up wait for that one lookup."""
        clock = Clock()
        authority = CannedAuthority(KAM_ZONE)
        gateway = Gateway(rules(), ServerLocator(authority, random.Random(0)), clock)
        results = [gateway.known_addresses("kam.example") for _ in range(3)]
        self.assertEqual(
            [self.successResultOf(r) for r in results],
            [frozenset({"127.0.0.9", "127.0.0.10", "198.51.100.77"})] * 3,
        )
        self.assertEqual(len([q for q in authority.queries if q[1] == dns.NAPTR]), 1)

    def test_static_route_target_host_accepted_in_route(self) -> None:
        """A Route naming the static route's next hop is followed there."""
        gateway = Gateway(rules(), ServerLocator(CannedAuthority({}), random.Random(0)), Clock())
        hops = self.successResultOf(
            gateway.route_hops(SipURI(host="192.0.2.30", port=5060, parameters={"lr": None}))
        )
        self.assertEqual(hops, [Hop("UDP", "192.0.2.30", 5060)])

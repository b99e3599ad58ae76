"""Tests for the per-source SIP request limit: the buckets, and the proxy's 503s."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip.request_limit import RequestRateLimit
from p2psip.sip.transaction import Hop

from .test_proxy import ADDRESS_A, NODE_A, NOW, Node, message_text

FLOODER = Hop("UDP", "198.51.100.66", 5060)
NEIGHBOUR = Hop("UDP", "198.51.100.67", 5060)


class RequestRateLimitTests(SynchronousTestCase):
    def test_burst_then_retry_after(self) -> None:
        """A source gets its burst, then a Retry-After of whole seconds (at least 1)."""
        clock = Clock()
        limit = RequestRateLimit(clock, requests_per_second=0.25, burst=2)
        self.assertEqual([limit.admit("a"), limit.admit("a")], [None, None])
        self.assertEqual(limit.admit("a"), 4)
        clock.advance(3.5)
        self.assertEqual(limit.admit("a"), 1)
        clock.advance(0.5)
        self.assertIsNone(limit.admit("a"))
        self.assertEqual(limit.refused, 2)

    def test_ring_members_are_exempt_for_a_while(self) -> None:
        """An address trusted as a super-node is not limited, until the trust runs out."""
        clock = Clock()
        limit = RequestRateLimit(clock, requests_per_second=1, burst=1)
        limit.trust("a")
        self.assertEqual([limit.admit("a") for _ in range(5)], [None] * 5)
        clock.advance(601)
        self.assertEqual([limit.admit("a"), limit.admit("a")], [None, 1])

    def test_sources_are_separate(self) -> None:
        """One address's empty bucket does not touch another's."""
        limit = RequestRateLimit(Clock(), requests_per_second=1, burst=1)
        limit.admit("a")
        self.assertIsNotNone(limit.admit("a"))
        self.assertIsNone(limit.admit("b"))


class ProxyRateLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.node = Node(NODE_A, ADDRESS_A, self.clock, {}, {})
        self.addCleanup(self.node.registrar.stop)
        self.limit = RequestRateLimit(self.clock, requests_per_second=10, burst=20)
        self.node.proxy.rate_limit = self.limit

    def options(self, source: Hop, number: int) -> None:
        self.node.receive(
            message_text("OPTIONS", uri="sip:example.org", branch=f"z9hG4bKflood{number}"),
            source,
        )

    def test_flood_gets_503_while_another_source_is_served(self) -> None:
        """Past its burst a flooding address gets 503 with Retry-After; a neighbour still gets 200."""
        with capturedLogs() as events:
            for number in range(50):
                self.options(FLOODER, number)
        statuses = self.node.sender.statuses()
        self.assertEqual(statuses, [200] * 20 + [503] * 30)
        refused = self.node.sender.responses[-1][0]
        self.assertEqual(refused.headers.get("Retry-After"), "1")
        self.options(NEIGHBOUR, 99)
        response, hop = self.node.sender.responses[-1]
        self.assertEqual((response.status, hop), (200, NEIGHBOUR))
        warnings = [e for e in events if e["log_level"] is LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("SIP rate limit", warnings[0]["log_format"])
        self.assertEqual(self.limit.refused, 30)

    def test_source_served_again_after_refill(self) -> None:
        """Once its bucket refills the address is served again."""
        for number in range(21):
            self.options(FLOODER, number)
        self.clock.advance(0.15)
        self.options(FLOODER, 100)
        self.assertEqual(self.node.sender.statuses()[-2:], [503, 200])

    def test_retransmissions_cost_nothing(self) -> None:
        """A retransmitted request is absorbed by its transaction and takes no token."""
        for _ in range(50):
            self.options(FLOODER, 1)
        self.assertEqual(self.limit.refused, 0)
        self.assertEqual(set(self.node.sender.statuses()), {200})

    def test_ack_is_never_refused(self) -> None:
        """An ACK from an address over its limit is not answered with a 503."""
        for number in range(25):
            self.options(FLOODER, number)
        before = len(self.node.sender.responses)
        self.node.receive(
            message_text("ACK", branch="z9hG4bKack1", to_tag=";tag=x"),
            FLOODER,
        )
        self.assertEqual(len(self.node.sender.responses), before)

    def test_no_limit(self) -> None:
        """Without a limit (--sip-rate-limit 0) nothing is refused."""
        self.node.proxy.rate_limit = None
        for number in range(200):
            self.options(FLOODER, number)
        self.assertEqual(set(self.node.sender.statuses()), {200})

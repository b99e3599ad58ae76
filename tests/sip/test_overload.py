"""Tests for the overload guard: when it refuses, what it never refuses, and the proxy's 503s."""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip.overload import (
    OVERLOADED_REASON,
    OverloadGuard,
    OverloadThresholds,
    StatelessRefusals,
)
from p2psip.sip.message import make_response
from p2psip.sip.transaction import ServerTransaction, TransactionLayer

from .test_proxy import (
    ADDRESS_A,
    CALLER,
    NODE_A,
    NOW,
    Node,
    RecordingSender,
    message_text,
    parse_request,
)


class Load:
    """What the guard reads: a pending count and a lag a test sets."""

    def __init__(self) -> None:
        self.pending = 0
        self.lag = 0.0

    def guard(self, max_pending: int = 10, max_lag: float = 0.25) -> OverloadGuard:
        return OverloadGuard(
            OverloadThresholds(max_pending, max_lag, retry_after_seconds=5),
            lambda: self.pending,
            lambda: self.lag,
            random.Random(1),
        )


class OverloadGuardTests(SynchronousTestCase):
    def test_quiet_node_admits(self) -> None:
        """Under both thresholds a new INVITE and a new REGISTER are served."""
        guard = Load().guard()
        for method in ("INVITE", "REGISTER"):
            self.assertIsNone(guard.admit(parse_request(message_text(method))))

    def test_pending_past_threshold_refuses(self) -> None:
        """Past the pending threshold a new INVITE gets a Retry-After of 5 to 10 seconds."""
        load = Load()
        guard = load.guard()
        load.pending = 11
        retry_after = guard.admit(parse_request(message_text("INVITE")))
        assert retry_after is not None
        self.assertTrue(5 <= retry_after <= 10)
        self.assertEqual(dict(guard.refused), {("INVITE", "pending"): 1})

    def test_lag_past_threshold_refuses(self) -> None:
        """Past the lag threshold a new REGISTER is refused, counted under "lag"."""
        load = Load()
        guard = load.guard()
        load.lag = 0.3
        self.assertIsNotNone(guard.admit(parse_request(message_text("REGISTER"))))
        self.assertEqual(dict(guard.refused), {("REGISTER", "lag"): 1})
        self.assertTrue(guard.status()["overloaded"])

    def test_in_dialog_and_other_methods_pass(self) -> None:
        """A BYE, a re-INVITE (To tag), an OPTIONS and an ACK are never refused."""
        load = Load()
        guard = load.guard()
        load.pending, load.lag = 1000, 5.0
        for text in (
            message_text("BYE", to_tag=";tag=a1"),
            message_text("INVITE", to_tag=";tag=a1"),
            message_text("OPTIONS"),
            message_text("ACK", to_tag=";tag=a1"),
            message_text("CANCEL"),
        ):
            self.assertIsNone(guard.admit(parse_request(text)))
        self.assertEqual(guard.refused, {})

    def test_zero_turns_a_check_off(self) -> None:
        """A threshold of 0 is not checked."""
        load = Load()
        guard = load.guard(max_pending=0, max_lag=0)
        load.pending, load.lag = 10**6, 60.0
        self.assertIsNone(guard.admit(parse_request(message_text("INVITE"))))
        self.assertFalse(OverloadThresholds(0, 0).enabled)


class ProxyOverloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.node = Node(NODE_A, ADDRESS_A, self.clock, {}, {})
        self.addCleanup(self.node.registrar.stop)
        self.addCleanup(self.node.proxy.transactions.terminate_all)
        self.load = Load()
        self.node.proxy.overload = self.load.guard()

    def test_overloaded_invite_gets_503_with_retry_after(self) -> None:
        """A new INVITE while overloaded gets a 503 with Retry-After (no 100), and one warning."""
        self.load.lag = 1.0
        with capturedLogs() as events:
            self.node.receive(message_text("INVITE", branch="z9hG4bKover1"))
            self.node.receive(message_text("INVITE", branch="z9hG4bKover2"))
        self.assertEqual(self.node.sender.statuses(), [503, 503])
        refused = self.node.sender.responses[0][0]
        self.assertEqual(refused.reason, OVERLOADED_REASON)
        self.assertIn(refused.headers.get("Retry-After"), [str(n) for n in range(5, 11)])
        self.assertEqual(self.node.proxy.metrics()["final_responses"], {"INVITE": {"503": 2}})
        warnings = [e for e in events if e["log_level"] is LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("sip-overload-lag", warnings[0]["log_format"])

    def test_refusal_is_stateless(self) -> None:
        """A refused INVITE leaves no server transaction, no context and no timer behind."""
        self.load.pending = 100
        timers = len(self.clock.getDelayedCalls())
        self.node.receive(message_text("INVITE", branch="z9hG4bKover3"))
        metrics = self.node.proxy.transactions.metrics()
        self.assertEqual((metrics["server_transactions"], self.node.proxy.pending_requests), (0, 0))
        self.assertEqual(len(self.clock.getDelayedCalls()), timers)

    def test_retransmission_gets_the_same_refusal(self) -> None:
        """A retransmitted refused REGISTER gets a 503 again, with the same To tag."""
        self.load.pending = 100
        for _ in range(3):
            self.node.receive(message_text("REGISTER", uri="sip:example.org"))
        self.assertEqual(self.node.sender.statuses(), [503, 503, 503])
        tags = {response.to.tag for response, _ in self.node.sender.responses}
        self.assertEqual(len(tags), 1)

    def test_ack_of_refused_invite_is_absorbed(self) -> None:
        """The ACK of a refused INVITE goes no further (the proxy never sees it)."""
        self.load.lag = 1.0
        self.node.receive(message_text("INVITE", branch="z9hG4bKover4"))
        [(refused, _)] = self.node.sender.responses
        seen: list[object] = []
        self.patch(self.node.proxy, "ack_received", lambda request, source: seen.append(request))
        ack = message_text("ACK", branch="z9hG4bKover4", to_tag=f";tag={refused.to.tag}")
        self.node.receive(ack)
        self.node.receive(message_text("ACK", branch="z9hG4bKover4", to_tag=";tag=other"))
        self.assertEqual(len(seen), 1)
        refusals = self.node.proxy.transactions.refusals
        assert isinstance(refusals, StatelessRefusals)
        self.assertEqual(refusals.acks_absorbed, 1)

    def test_request_being_served_keeps_being_served(self) -> None:
        """A REGISTER admitted before the overload is not refused when it is retransmitted during it."""
        register = message_text("REGISTER", uri="sip:example.org", extra="Expires: 600").replace(
            b"sip:bob@198.51.100.10:5070", b"sip:alice@198.51.100.10:5070"
        )
        self.node.receive(register)
        self.load.lag = 1.0
        self.node.receive(register)
        self.assertNotIn(503, self.node.sender.statuses())

    def test_bye_passes_while_overloaded(self) -> None:
        """An in-dialog BYE is handled (no 503) however loaded the node is."""
        self.load.pending, self.load.lag = 10**6, 10.0
        self.node.receive(message_text("BYE", uri="sip:alice@example.org", to_tag=";tag=a1"))
        self.assertNotIn(503, self.node.sender.statuses())

    def test_unanswered_counts_requests_being_worked_on(self) -> None:
        """The unanswered count rises with a new request and falls at its final response, not at 100."""
        held: list[ServerTransaction] = []
        layer = TransactionLayer(RecordingSender(), HoldingUser(held), self.clock)
        layer.message_received(parse_request(message_text("INVITE")), CALLER)
        self.assertEqual((layer.unanswered, self.node.sender.statuses()), (1, []))
        held[0].respond(make_response(held[0].request, 486))
        self.assertEqual(layer.unanswered, 0)
        layer.message_received(parse_request(message_text("OPTIONS")), CALLER)
        layer.terminate_all()
        self.assertEqual(layer.unanswered, 0)


class HoldingUser:
    """A transaction user that keeps every new request unanswered."""

    def __init__(self, held: list[ServerTransaction]) -> None:
        self.held = held

    def request_received(self, transaction: ServerTransaction) -> None:
        self.held.append(transaction)

    def ack_received(self, request: object, source: object) -> None:
        pass

    def stray_response_received(self, response: object, source: object) -> None:
        pass

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
from p2psip.sip.message import make_response, parse_message
from p2psip.sip.quick_read import read_refusable
from p2psip.sip.transaction import ServerTransaction, TransactionLayer
from p2psip.sip.transport import SipDatagramProtocol, SipTransport, stamp_received
from p2psip.testing import MemoryUDPReactor

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
from .test_transport import FakeDatagramTransport


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
        self.assertTrue(OverloadThresholds(0, 0).enabled)  # the backlog check is still on


class GuardedNode(SynchronousTestCase):
    """A super-node's SIP parts with an overload guard whose load each test sets."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.node = Node(NODE_A, ADDRESS_A, self.clock, {}, {})
        self.addCleanup(self.node.registrar.stop)
        self.addCleanup(self.node.proxy.transactions.terminate_all)
        self.load = Load()
        self.node.proxy.overload = self.load.guard()


class ProxyOverloadTests(GuardedNode):
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


class EarlyRefusalTests(GuardedNode):
    """
    The 503 an overloaded node sends from a partial read of the datagram
    (p2psip.sip.quick_read), before the full parse: the same answer as the
    transaction layer's, for far less.
    """

    def setUp(self) -> None:
        super().setUp()
        self.transport = SipTransport(MemoryUDPReactor(), self.node.proxy.transactions)
        self.datagrams = SipDatagramProtocol(self.transport)
        self.written = FakeDatagramTransport()
        self.datagrams.transport = self.written  # type: ignore[assignment]
        self.source = (CALLER.host, CALLER.port)

    def arrive(self, data: bytes) -> None:
        self.datagrams.datagramReceived(data, self.source)

    def answers(self) -> list[bytes]:
        return [data for data, _ in self.written.written]

    def test_same_answer_as_the_full_path(self) -> None:
        """The bytes equal the transaction layer's 503 to the same request (Retry-After aside)."""
        invite = message_text(
            "INVITE", branch="z9hG4bKearly1", extra="Via: SIP/2.0/UDP p:5060;branch=z9hG4bKx"
        )
        self.load.lag = 1.0
        self.arrive(invite)
        [early] = self.answers()
        self.assertEqual(self.transport.early_refusals, 1)
        through_the_layer = parse_request(invite)
        stamp_received(through_the_layer, *self.source)
        self.node.receive(through_the_layer)
        [(full, _)] = self.node.sender.responses
        self.assertEqual(parse_message(early).headers.get_all("Via"), full.headers.values("Via"))
        without_retry = [
            line for line in early.split(b"\r\n") if not line.startswith(b"Retry-After")
        ]
        self.assertEqual(
            without_retry,
            [
                line
                for line in full.to_bytes().split(b"\r\n")
                if not line.startswith(b"Retry-After")
            ],
        )
        self.assertEqual(self.node.proxy.metrics()["final_responses"], {"INVITE": {"503": 2}})

    def test_goes_back_as_the_via_says(self) -> None:
        """rport filled and received added (s18.2.1, RFC 3581): the 503 goes to the real source."""
        self.load.pending = 100
        self.source = ("192.0.2.99", 40999)
        self.arrive(
            message_text("REGISTER", uri="sip:example.org").replace(b":5070;", b":5070;rport;")
        )
        [(data, address)] = self.written.written
        self.assertEqual(address, ("192.0.2.99", 40999))
        via = parse_message(data).via
        self.assertEqual((via.received, via.rport), ("192.0.2.99", 40999))

    def test_ack_of_an_early_refusal_is_absorbed(self) -> None:
        """Its To tag is the transaction layer's: the ACK is recognised and dropped."""
        self.load.lag = 1.0
        self.arrive(message_text("INVITE", branch="z9hG4bKearly2"))
        tag = parse_message(self.answers()[0]).to.tag
        seen: list[object] = []
        self.patch(self.node.proxy, "ack_received", lambda request, source: seen.append(request))
        self.arrive(message_text("ACK", branch="z9hG4bKearly2", to_tag=f";tag={tag}"))
        self.assertEqual(seen, [])

    def test_what_the_partial_read_leaves_to_the_full_parse(self) -> None:
        """
        In-dialog, a retransmission of a request being served, a folded
        line, a CSeq naming another method and a quiet node: none is
        answered from the partial read.
        """
        register = message_text("REGISTER", uri="sip:example.org", extra="Expires: 600").replace(
            b"sip:bob@198.51.100.10:5070", b"sip:alice@198.51.100.10:5070"
        )
        self.arrive(register)  # quiet: served
        self.load.lag = 1.0
        self.arrive(register)  # its retransmission: still served
        self.arrive(message_text("INVITE", branch="z9hG4bKe3", to_tag=";tag=a1"))
        self.arrive(message_text("INVITE", branch="z9hG4bKe4").replace(b"To: ", b"To:\r\n "))
        self.arrive(message_text("INVITE", branch="z9hG4bKe5", cseq_method="REGISTER"))
        self.assertEqual(self.transport.early_refusals, 0)
        statuses = [parse_message(data).status for data in self.answers()]  # type: ignore[union-attr]
        self.assertIn(400, statuses)

    def test_malformed_copied_fields_go_the_full_way(self) -> None:
        """
        Found with ``fuzz/sip.py``: a From the full parser refuses was copied
        as it came into the early 503, which did not parse.  Every copied
        field is checked now, and such a request gets the full path's 400.
        """
        self.load.lag = 1.0
        register = message_text("REGISTER", uri="sip:example.org")
        for broken in (
            register.replace(
                b"From: <sip:bob@example.org>", b"From: sip:bob@exampleMax-Forwards: 70"
            ),
            register.replace(b"Call-ID: ", b"Call-ID: two words "),
            register.replace(
                b"Via: ", b"Via: SIP/2.0/UDP p:5060;branch=z9hG4bKx\r\nVia: garbage\r\nX: "
            ),
            # A comma in a bare URI's user part: the full parse reads two
            # From values (found by fuzz/sip.py when it ran 1,000,000 inputs).
            register.replace(b"From: <sip:bob@example.org>", b"From: sip:bo,b@example.org"),
            register.replace(b"To: <sip:alice@example.org>", b"To: sip:ali,ce@example.org"),
            # A bare URI holding ">": its copy in <> would not parse.
            register.replace(b"To: <sip:alice@example.org>", b"To: spi:user@exa>mple.com"),
        ):
            self.assertNotEqual(broken, register)
            self.written.written.clear()
            self.arrive(broken)
            [answer] = self.answers()
            self.assertTrue(answer.startswith(b"SIP/2.0 400 "), answer[:60])
        self.assertEqual(self.transport.early_refusals, 0)

    def test_quick_read_refuses_to_guess(self) -> None:
        """Anything not plain goes the full way: other methods, no end of head, repeats, bad UTF-8."""
        invite = message_text("INVITE")
        for data in (
            message_text("OPTIONS"),
            invite.replace(b"\r\n\r\n", b"\r\n"),
            invite.replace(b"Call-ID:", b"Call-ID: again\r\nCall-ID:"),
            invite.replace(b"From: ", b"From: \xff"),
            invite.replace(b"CSeq", b"XSeq"),
            # A bare LF or CR would let the sender write a header line into our 503.
            invite.replace(b"From: ", b"From: \nEvil: header "),
            invite.replace(b"Call-ID: ", b"Call-ID: \rx"),
            invite.replace(b"To: ", b"To: \x00"),
        ):
            self.assertIsNone(read_refusable(data, 8192), data)
        read = read_refusable(invite.replace(b"Via:", b"v:"), 8192)
        assert read is not None
        self.assertEqual((read.method, len(read.vias)), ("INVITE", 1))

    def test_untouched_via_is_copied_as_it_came(self) -> None:
        """
        Found with ``fuzz/sip.py``: a top Via the stamping leaves alone is
        copied as written, as the full path does (``Via.parse`` lower-cases
        parameter names, so writing it out again changed ``transpo2.Drt``).
        """
        self.load.lag = 1.0
        self.source = ("192.0.2.1", 5060)
        via = "SIP/2.0/UDP 192.0.2.1;transpo2.Drt=tcp5;branch=z9hG4bKkdjuw"
        self.arrive(
            message_text("INVITE", branch="x").replace(
                b"Via: SIP/2.0/UDP 198.51.100.10:5070;branch=x;rport", f"Via: {via}".encode()
            )
        )
        [answer] = self.answers()
        self.assertEqual(answer.split(b"\r\n")[1], f"Via: {via}".encode())


class BacklogTests(SynchronousTestCase):
    def test_backlog_past_threshold_refuses(self) -> None:
        """A UDP receive queue fuller than sip-overload-backlog refuses new work, counted under "backlog"."""
        fill = [0.1]
        guard = OverloadGuard(
            OverloadThresholds(max_backlog=0.25), lambda: 0, lambda: 0.0, backlog=lambda: fill[0]
        )
        self.assertIsNone(guard.admit(parse_request(message_text("REGISTER"))))
        fill[0] = 0.3
        self.assertIsNotNone(guard.admit(parse_request(message_text("REGISTER"))))
        self.assertEqual(dict(guard.refused), {("REGISTER", "backlog"): 1})
        self.assertEqual((guard.status()["backlog"], guard.status()["max_backlog"]), (0.3, 0.25))

    def test_zero_turns_the_backlog_check_off(self) -> None:
        guard = OverloadGuard(
            OverloadThresholds(0, 0, max_backlog=0), lambda: 0, lambda: 0.0, backlog=lambda: 1.0
        )
        self.assertIsNone(guard.reason_to_refuse())
        self.assertFalse(OverloadThresholds(0, 0, max_backlog=0).enabled)

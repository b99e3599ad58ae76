"""Tests for p2psip.sip.transaction: the RFC 3261 section 17 state machines on a fake clock."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip.message import Request, Response, make_response, parse_message
from p2psip.sip.transaction import (
    ClientTransaction,
    Hop,
    ServerTransaction,
    State,
    TimerSettings,
    TransactionLayer,
    make_cancel,
    new_branch,
)

UDP_PEER = Hop("UDP", "192.0.2.1", 5060)
TCP_PEER = Hop("TCP", "192.0.2.1", 5060)


def request(
    method: str = "OPTIONS", branch: str | None = None, via_host: str = "192.0.2.9"
) -> Request:
    branch_param = "" if branch == "" else f";branch={branch or new_branch()}"
    text = (
        f"{method} sip:bob@example.org SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {via_host}:5060{branch_param}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.org>;tag=a1\r\n"
        "To: <sip:bob@example.org>\r\n"
        "Call-ID: call-1@192.0.2.9\r\n"
        f"CSeq: 1 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    message = parse_message(text.encode())
    assert isinstance(message, Request)
    return message


class RecordingSender:
    """A transport that records what the transactions send."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, str, object]] = []
        self.fail_requests = False
        self.error_callbacks: list[Callable[[str], None]] = []

    def send_request(self, request: Request, target: Hop, on_error: Callable[[str], None]) -> None:
        self.sent.append((self.clock.seconds(), request.method, target))
        self.error_callbacks.append(on_error)
        if self.fail_requests:
            on_error("connection refused")

    def send_response(self, response: Response, source: Hop) -> None:
        self.sent.append((self.clock.seconds(), str(response.status), source))

    def times(self, what: str) -> list[float]:
        return [t for t, w, _ in self.sent if w == what]


class RecordingUser:
    """A transaction user that records every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.transactions: list[ServerTransaction] = []

    def request_received(self, transaction: ServerTransaction) -> None:
        self.events.append(("request", transaction.request.method))
        self.transactions.append(transaction)

    def ack_received(self, request: Request, source: Hop) -> None:
        self.events.append(("ack", request.method))

    def stray_response_received(self, response: Response, source: Hop) -> None:
        self.events.append(("stray", response.status))


class LayerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sender = RecordingSender(self.clock)
        self.user = RecordingUser()
        self.layer = TransactionLayer(self.sender, self.user, self.clock)
        self.responses: list[int] = []

    def send(self, message: Request, target: Hop = UDP_PEER) -> ClientTransaction:
        return self.layer.send_request(message, target, lambda r: self.responses.append(r.status))

    def assertIdle(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual((self.layer.client_transactions, self.layer.server_transactions), ({}, {}))


class NonInviteClientTests(LayerTestCase):
    """RFC 3261 s17.1.2."""

    def test_lost_response_retransmits_with_doubling_capped_at_t2(self) -> None:
        """Without a response the request goes out at 0, .5, 1.5, 3.5, 7.5, 11.5... until Timer F."""
        self.send(request())
        self.clock.pump([0.25] * 200)
        times = self.sender.times("OPTIONS")
        self.assertEqual(times[:7], [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5])
        self.assertEqual(len(times), 11)
        self.assertEqual(self.responses, [408])
        self.assertIdle()

    def test_timer_f_gives_408(self) -> None:
        """Timer F (64*T1) ends the transaction with a synthesized 408."""
        self.send(request())
        self.clock.advance(31.9)
        self.assertEqual(self.responses, [])
        self.clock.advance(0.1)
        self.assertEqual(self.responses, [408])
        self.assertIdle()

    def test_proceeding_retransmits_every_t2(self) -> None:
        """After a provisional response, Timer E is reset to T2 each time it fires."""
        message = request()
        self.send(message)
        self.layer.message_received(make_response(message, 180), UDP_PEER)
        self.clock.pump([0.25] * 40)
        self.assertEqual(self.sender.times("OPTIONS"), [0, 0.5, 4.5, 8.5])

    def test_final_response_then_timer_k(self) -> None:
        """A final response reaches the TU once; retransmissions are absorbed until Timer K."""
        message = request()
        transaction = self.send(message)
        ok = make_response(message, 200, to_tag="b")
        self.layer.message_received(ok, UDP_PEER)
        self.layer.message_received(ok, UDP_PEER)
        self.assertEqual((self.responses, transaction.state), ([200], State.COMPLETED))
        self.clock.advance(5)
        self.assertEqual(transaction.state, State.TERMINATED)
        self.layer.message_received(ok, UDP_PEER)
        self.assertEqual(self.user.events, [("stray", 200)])
        self.assertIdle()

    def test_reliable_transport_no_retransmission(self) -> None:
        """Over TCP the request is sent once and Timer K is zero."""
        message = request()
        self.send(message, TCP_PEER)
        self.clock.advance(10)
        self.assertEqual(self.sender.times("OPTIONS"), [0])
        self.layer.message_received(make_response(message, 200), TCP_PEER)
        self.assertIdle()
        self.assertEqual(self.responses, [200])

    def test_transport_error_gives_503(self) -> None:
        """A transport error ends the transaction with a synthesized 503."""
        self.sender.fail_requests = True
        self.send(request())
        self.assertEqual(self.responses, [503])
        self.assertIdle()

    def test_late_transport_error_gives_503(self) -> None:
        """An asynchronous transport error (TCP connect failed) also gives 503, only once."""
        self.send(request(), TCP_PEER)
        self.sender.error_callbacks[0]("connection refused")
        self.sender.error_callbacks[0]("connection refused")
        self.assertEqual(self.responses, [503])
        self.assertIdle()

    def test_custom_timers(self) -> None:
        """T1 and T2 are configurable."""
        self.layer = TransactionLayer(
            self.sender, self.user, self.clock, TimerSettings(t1_seconds=1, t2_seconds=2)
        )
        self.send(request())
        self.clock.pump([0.5] * 20)
        self.assertEqual(self.sender.times("OPTIONS")[:5], [0, 1, 3, 5, 7])


class InviteClientTests(LayerTestCase):
    """RFC 3261 s17.1.1."""

    def test_timer_a_doubles_until_timer_b(self) -> None:
        """INVITE retransmits at 0, .5, 1.5, 3.5, 7.5, 15.5, 31.5 and Timer B gives 408 at 32."""
        self.send(request("INVITE"))
        self.clock.pump([0.25] * 200)
        self.assertEqual(self.sender.times("INVITE"), [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
        self.assertEqual(self.responses, [408])
        self.assertIdle()

    def test_non_2xx_is_acked_and_absorbed(self) -> None:
        """A 486 is ACKed by the transaction; its retransmission is ACKed again, not passed up."""
        message = request("INVITE")
        self.send(message)
        self.layer.message_received(make_response(message, 100), UDP_PEER)
        busy = make_response(message, 486, to_tag="x")
        self.layer.message_received(busy, UDP_PEER)
        self.layer.message_received(busy, UDP_PEER)
        self.assertEqual(self.responses, [100, 486])
        self.assertEqual([w for _, w, _ in self.sender.sent], ["INVITE", "ACK", "ACK"])
        self.clock.advance(32)
        self.assertIdle()

    def test_2xx_ends_transaction_and_retransmissions_are_stray(self) -> None:
        """A 200 ends the INVITE transaction; retransmitted 200s go to the TU as stray responses."""
        message = request("INVITE")
        self.send(message)
        ok = make_response(message, 200, to_tag="x")
        self.layer.message_received(ok, UDP_PEER)
        self.layer.message_received(ok, UDP_PEER)
        self.assertEqual(self.responses, [200])
        self.assertEqual(self.user.events, [("stray", 200)])
        self.assertEqual([w for _, w, _ in self.sender.sent], ["INVITE"])
        self.assertIdle()

    def test_terminated_transaction_drops_its_callback(self) -> None:
        """
        Once ended (2xx, Timer D after a 486, Timer B), a client transaction no
        longer holds the TU's callback, which would keep a cycle through it.
        """
        ended: list[ClientTransaction] = []
        for answer in (200, 486, None):
            message = request("INVITE")
            transaction = self.send(message)
            if answer is not None:
                self.layer.message_received(make_response(message, answer, to_tag="x"), UDP_PEER)
            self.clock.advance(64)
            ended.append(transaction)
        self.assertEqual(self.responses, [200, 486, 408])
        for transaction in ended:
            self.assertEqual(transaction.state, State.TERMINATED)
            transaction.on_response(make_response(transaction.request, 200))
        self.assertEqual(self.responses, [200, 486, 408])
        self.assertIdle()

    def test_provisional_stops_retransmission(self) -> None:
        """After a 180 the INVITE is not retransmitted and Timer B no longer applies."""
        message = request("INVITE")
        self.send(message)
        self.layer.message_received(make_response(message, 180), UDP_PEER)
        self.clock.advance(100)
        self.assertEqual(self.sender.times("INVITE"), [0])
        self.assertEqual(self.responses, [180])

    def test_cancel_matches_separately(self) -> None:
        """The 200 to a CANCEL matches the CANCEL transaction, not the INVITE one."""
        message = request("INVITE")
        self.send(message)
        cancel = make_cancel(message)
        cancel_responses: list[int] = []
        self.layer.send_request(cancel, UDP_PEER, lambda r: cancel_responses.append(r.status))
        self.layer.message_received(make_response(cancel, 200), UDP_PEER)
        self.layer.message_received(make_response(message, 487, to_tag="t"), UDP_PEER)
        self.assertEqual((cancel_responses, self.responses), ([200], [487]))


class NonInviteServerTests(LayerTestCase):
    """RFC 3261 s17.2.2."""

    def test_retransmissions_absorbed_then_answered(self) -> None:
        """Before a response a retransmission is absorbed; afterwards it gets the last response again."""
        message = request()
        self.layer.message_received(message, UDP_PEER)
        self.layer.message_received(message, UDP_PEER)
        self.assertEqual(self.user.events, [("request", "OPTIONS")])
        self.assertEqual(self.sender.sent, [])
        self.user.transactions[0].respond(make_response(message, 200, to_tag="s"))
        self.layer.message_received(message, UDP_PEER)
        self.assertEqual([w for _, w, _ in self.sender.sent], ["200", "200"])
        self.clock.advance(32)
        self.assertIdle()

    def test_reliable_terminates_at_once(self) -> None:
        """Over TCP Timer J is zero."""
        message = request()
        self.layer.message_received(message, TCP_PEER)
        self.user.transactions[0].respond(make_response(message, 404))
        self.assertIdle()

    def test_responses_after_final_are_dropped(self) -> None:
        """Only one final response leaves a transaction."""
        message = request()
        self.layer.message_received(message, UDP_PEER)
        transaction = self.user.transactions[0]
        transaction.respond(make_response(message, 200))
        transaction.respond(make_response(message, 500))
        self.assertEqual([w for _, w, _ in self.sender.sent], ["200"])

    def test_rfc2543_matching(self) -> None:
        """Requests without a magic-cookie branch (or with the bare cookie) match by RFC 2543 rules."""
        for branch in ("", "z9hG4bK"):
            message = request(branch=branch)
            self.layer.message_received(message, UDP_PEER)
            self.layer.message_received(request(branch=branch), UDP_PEER)
        self.assertEqual(self.user.events, [("request", "OPTIONS"), ("request", "OPTIONS")])


class InviteServerTests(LayerTestCase):
    """RFC 3261 s17.2.1 and RFC 6026."""

    def test_trying_sent_and_resent(self) -> None:
        """A 100 Trying goes out at once and again for each INVITE retransmission."""
        message = request("INVITE")
        self.layer.message_received(message, UDP_PEER)
        self.layer.message_received(message, UDP_PEER)
        self.assertEqual([w for _, w, _ in self.sender.sent], ["100", "100"])
        self.assertEqual(self.user.events, [("request", "INVITE")])

    def test_final_retransmitted_until_ack(self) -> None:
        """A 486 is resent on Timer G (T1 doubling, capped at T2) until the ACK arrives; then Timer I."""
        message = request("INVITE")
        self.layer.message_received(message, UDP_PEER)
        transaction = self.user.transactions[0]
        busy = make_response(message, 486, to_tag="s")
        transaction.respond(busy)
        self.clock.pump([0.25] * 40)
        self.assertEqual(self.sender.times("486"), [0, 0.5, 1.5, 3.5, 7.5])
        ack = message.copy()
        ack.method = "ACK"
        ack.headers.set("CSeq", "1 ACK")
        ack.headers.set("To", busy.headers.get("To") or "")
        self.layer.message_received(ack, UDP_PEER)
        self.assertEqual(transaction.state, State.CONFIRMED)
        self.layer.message_received(ack, UDP_PEER)
        self.clock.advance(20)
        self.assertEqual(self.sender.times("486"), [0, 0.5, 1.5, 3.5, 7.5])
        self.clock.advance(5)
        self.assertEqual(transaction.state, State.TERMINATED)
        self.assertEqual(self.user.events, [("request", "INVITE")])
        self.assertIdle()

    def test_timer_h(self) -> None:
        """Without an ACK, Timer H (64*T1) ends the transaction and marks it timed out."""
        message = request("INVITE")
        self.layer.message_received(message, UDP_PEER)
        transaction = self.user.transactions[0]
        ended: list[bool] = []
        transaction.add_terminated_callback(lambda: ended.append(transaction.timed_out))
        transaction.respond(make_response(message, 603, to_tag="s"))
        self.clock.pump([0.5] * 70)
        self.assertEqual(ended, [True])
        self.assertEqual(len(self.sender.times("603")), 11)
        self.assertIdle()

    def test_2xx_accepted_state(self) -> None:
        """After a 2xx, INVITE retransmissions are absorbed and the 2xx ACK goes to the TU."""
        message = request("INVITE")
        self.layer.message_received(message, UDP_PEER)
        transaction = self.user.transactions[0]
        ok = make_response(message, 200, to_tag="s")
        transaction.respond(ok)
        transaction.respond(ok)
        self.layer.message_received(message, UDP_PEER)
        ack = request("ACK")
        self.layer.message_received(ack, UDP_PEER)
        self.assertEqual([w for _, w, _ in self.sender.sent], ["100", "200", "200"])
        self.assertEqual(self.user.events, [("request", "INVITE"), ("ack", "ACK")])
        self.clock.advance(32)
        self.assertIdle()

    def test_find_cancelled(self) -> None:
        """A CANCEL finds the INVITE transaction with the same branch."""
        message = request("INVITE")
        self.layer.message_received(message, UDP_PEER)
        cancel = make_cancel(message)
        self.layer.message_received(cancel, UDP_PEER)
        self.assertIs(self.layer.find_cancelled(cancel), self.user.transactions[0])
        self.assertEqual(self.user.transactions[1].request.method, "CANCEL")


class MetricsTests(LayerTestCase):
    """Counters for /status and /metrics."""

    def test_layer_counters(self) -> None:
        """Retransmissions, timeouts, transport errors and stray responses are counted."""
        message = request()
        self.send(message)
        self.clock.pump([0.5] * 64)
        self.sender.fail_requests = True
        self.send(request())
        self.layer.message_received(make_response(message, 200), UDP_PEER)
        self.assertEqual(
            self.layer.metrics(),
            {
                "client_transactions": 0,
                "server_transactions": 0,
                "retransmissions": 10,
                "timeouts": 1,
                "transport_errors": 1,
                "stray_responses": 1,
            },
        )

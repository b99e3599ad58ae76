"""Tests for the response context: branches, best response, CANCEL and Timer C, on a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip.message import Request, Response, make_response, parse_message
from p2psip.sip.response_context import (
    CANCEL_GRACE_SECONDS,
    TIMER_C_SECONDS,
    ResponseContext,
    best_response,
)
from p2psip.sip.transaction import Hop, State

CALLEE_1 = Hop("UDP", "192.0.2.1", 5060)
CALLEE_2 = Hop("UDP", "192.0.2.2", 5060)


def request(method: str = "INVITE") -> Request:
    text = (
        f"{method} sip:alice@example.org SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bKproxy1\r\n"
        "Via: SIP/2.0/UDP 198.51.100.10:5070;branch=z9hG4bKcaller1\r\n"
        "From: <sip:bob@example.org>;tag=b1\r\nTo: <sip:alice@example.org>\r\n"
        f"Call-ID: c1\r\nCSeq: 1 {method}\r\nMax-Forwards: 69\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    parsed = parse_message(text)
    assert isinstance(parsed, Request)
    return parsed


@define
class FakeClient:
    """What the context reads of a client transaction."""

    request: Request
    hop: Hop
    listener: Callable[[Response], None]
    state: State = State.PROCEEDING


@define
class FakeServer:
    request: Request


class RecordingBranches:
    """A BranchSender that keeps every client transaction it was asked to start."""

    def __init__(self) -> None:
        self.sent: list[FakeClient] = []

    def send_request(self, request: Request, target: Hop, on_response: Any) -> Any:
        client = FakeClient(request, target, on_response)
        self.sent.append(client)
        return client

    def methods(self) -> list[str]:
        return [client.request.method for client in self.sent]


class ResponseContextTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.branches = RecordingBranches()
        self.upstream: list[Response] = []
        self.finished = 0

    def context(
        self, method: str = "INVITE", hops: tuple[Hop, ...] = (CALLEE_1, CALLEE_2)
    ) -> ResponseContext:
        incoming = request(method)

        def finished() -> None:
            self.finished += 1

        context = ResponseContext(
            FakeServer(incoming),  # type: ignore[arg-type]
            self.clock,
            self.branches,
            lambda server, response: self.upstream.append(response),
            finished=finished,
        )
        context.fork([(incoming.copy(), hop) for hop in hops])
        return context

    def answer(self, index: int, status: int) -> None:
        client = self.branches.sent[index]
        client.listener(make_response(client.request, status, "Reason"))

    def test_first_2xx_goes_up_and_the_others_are_cancelled(self) -> None:
        """A 200 on one branch goes upstream without our Via; the ringing branch gets a CANCEL."""
        self.context()
        self.answer(1, 180)
        self.answer(0, 200)
        self.assertEqual([r.status for r in self.upstream], [180, 200])
        self.assertEqual(len(self.upstream[1].headers.values("Via")), 1)
        self.assertEqual(self.branches.methods(), ["INVITE", "INVITE", "CANCEL"])
        self.assertEqual(self.branches.sent[2].hop, CALLEE_2)

    def test_finished_once_the_answer_is_up_and_every_branch_has_a_final(self) -> None:
        """
        Not at the first 2xx while a forked branch may still answer (its 2xx
        must go up too), but at that branch's final; once, and with no timer left.
        """
        self.context()
        self.answer(1, 180)
        self.answer(0, 200)
        self.assertEqual(self.finished, 0)
        self.answer(1, 200)
        self.assertEqual([r.status for r in self.upstream], [180, 200, 200])
        self.assertEqual(self.finished, 1)
        self.answer(1, 200)  # a late retransmission reaching the context changes nothing
        self.assertEqual(self.finished, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_finished_after_the_best_final_of_failed_branches(self) -> None:
        """Every branch failed: finished when the best final has gone up, not before."""
        self.context()
        self.answer(0, 486)
        self.assertEqual(self.finished, 0)
        self.answer(1, 404)
        self.assertEqual(([r.status for r in self.upstream], self.finished), ([404], 1))

    def test_not_finished_while_a_cancelled_branch_owes_its_487(self) -> None:
        """A CANCEL leaves the context waiting for each branch's 487; then it is done."""
        context = self.context()
        self.answer(0, 180)
        self.answer(1, 180)
        context.cancel()
        self.answer(0, 487)
        self.assertEqual(self.finished, 0)
        self.answer(1, 487)
        self.assertEqual(([r.status for r in self.upstream], self.finished), ([180, 180, 487], 1))

    def test_cancel_waits_for_a_provisional(self) -> None:
        """RFC 3261 s9.1: a branch that has not answered at all is cancelled once it rings."""
        context = self.context()
        context.cancel()
        self.assertEqual(self.branches.methods(), ["INVITE", "INVITE"])
        self.answer(0, 183)
        self.assertEqual(self.branches.methods(), ["INVITE", "INVITE", "CANCEL"])

    def test_best_final_after_every_branch_failed(self) -> None:
        """No final goes up before the last branch; then the best one does (486 over 500)."""
        self.context()
        self.answer(0, 500)
        self.assertEqual(self.upstream, [])
        self.answer(1, 486)
        self.assertEqual([r.status for r in self.upstream], [486])

    def test_6xx_cancels_the_rest(self) -> None:
        """A 6xx ends the search: pending branches are cancelled and the 6xx is sent."""
        self.context()
        self.answer(1, 180)
        self.answer(0, 603)
        self.assertIn("CANCEL", self.branches.methods())
        self.answer(1, 487)
        self.assertEqual([r.status for r in self.upstream], [180, 603])

    def test_timer_c(self) -> None:
        """A silent branch ends as 408 at Timer C; a ringing one is cancelled, then given a grace."""
        self.context()
        self.answer(1, 180)
        self.clock.advance(TIMER_C_SECONDS - 1)
        self.answer(1, 180)  # a provisional resets Timer C
        self.clock.advance(TIMER_C_SECONDS - 1)
        self.assertEqual(self.branches.methods(), ["INVITE", "INVITE"])
        self.clock.advance(1)
        self.assertEqual(self.branches.methods(), ["INVITE", "INVITE", "CANCEL"])
        self.assertEqual([r.status for r in self.upstream], [180, 180])
        self.clock.advance(CANCEL_GRACE_SECONDS)
        self.assertEqual([r.status for r in self.upstream], [180, 180, 408])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_timer_c_for_other_methods(self) -> None:
        """Only INVITE runs Timer C; a MESSAGE's branches end by their own transactions."""
        self.context("MESSAGE", hops=(CALLEE_1,))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.answer(0, 200)
        self.assertEqual([r.status for r in self.upstream], [200])

    def test_stop_cancels_the_timer(self) -> None:
        """When the server transaction ends, no timer stays behind."""
        context = self.context()
        context.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class BestResponseTests(SynchronousTestCase):
    """RFC 3261 s16.7 item 6."""

    def responses(self, *statuses: int) -> list[Response]:
        incoming = request()
        return [make_response(incoming, status, "Reason") for status in statuses]

    def test_lowest_class_wins(self) -> None:
        self.assertEqual(best_response(self.responses(500, 404, 486)).status, 404)

    def test_6xx_wins(self) -> None:
        self.assertEqual(best_response(self.responses(404, 600)).status, 600)

    def test_503_becomes_500(self) -> None:
        """A 503 is not passed on as such (s16.7): the caller must not think the proxy is down."""
        best = best_response(self.responses(503))
        self.assertEqual((best.status, best.reason), (500, "Server Internal Error"))

    def test_408_and_503_lose_within_their_class(self) -> None:
        self.assertEqual(best_response(self.responses(408, 480)).status, 480)
        self.assertEqual(best_response(self.responses(503, 502)).status, 502)

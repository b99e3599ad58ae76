"""
Soak regression: a proxy that has carried many calls holds no more state
than before them, and the calls' objects are freed by reference counting.

``bench/soak.py`` showed the two super-nodes carrying calls growing by about
40 KB per call, then stalling for seconds in full garbage collections: each
client transaction and its proxy branch referred to each other, so every
call's messages and transactions waited for a full collection, which the
server's collector thresholds (:mod:`p2psip.util.gc_tuning`) make rare.
These tests count structures and unreachable objects on a fake clock; they
measure neither time nor RSS.
"""

from __future__ import annotations

import gc
from collections import Counter

from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip.message import Request, make_response
from p2psip.sip.response_context import TIMER_C_SECONDS

from .test_proxy import ALICE_FLOW, Node, message_text, parse_request, register_request, ring_of_two

CALLS = 200
#: Past Timers B, D, H, J, K and L (64*T1 = 32 s) and Timer C, a second at a time.
QUIET_SECONDS = int(TIMER_C_SECONDS) + 64
#: The classes of one call's state; none of them may be left to the cycle collector.
CALL_TYPES = frozenset(
    {"Request", "Response", "ServerTransaction", "ClientTransaction", "ResponseContext", "Branch"}
)


def in_call(method: str, number: int, cseq: int, extra: str = "", to_tag: str = "") -> Request:
    """A request of call ``number``: its own Call-ID, From tag and branch."""
    text = message_text(
        method,
        branch=f"z9hG4bK{method.lower()}{number}",
        extra=extra,
        to_tag=to_tag,
        uri="sip:alice@example.org" if method == "INVITE" else "sip:alice@10.0.0.5:5062",
    )
    text = text.replace(b"call-xyz", f"call-{number}".encode())
    text = text.replace(b"tag=bob1", f"tag=caller{number}".encode())
    return parse_request(
        text.replace(f"CSeq: 1 {method}".encode(), f"CSeq: {cseq} {method}".encode())
    )


class CallStateReleasedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock, self.a, _ = ring_of_two(self, Node)
        self.a.receive(register_request("<sip:alice@10.0.0.5:5062>"), ALICE_FLOW)
        was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()  # only reference counting frees what the calls leave
        self.addCleanup(lambda: gc.enable() if was_enabled else None)

    def call(self, node: Node, number: int) -> None:
        """INVITE, 180, 200, ACK, BYE and its 200, as a phone and its callee would."""
        node.sender.requests.clear()
        node.sender.responses.clear()
        node.receive(in_call("INVITE", number, 1))
        invite, hop = next((r, h) for r, h in node.sender.requests if r.method == "INVITE")
        tag = f";tag=callee{number}"
        for status in (180, 200):
            response = make_response(invite, status)
            response.headers.set("To", str(invite.to) + tag)
            node.receive(response.to_bytes(), hop)
        [record_route] = invite.headers.get_all("Record-Route")
        for method, cseq in (("ACK", 1), ("BYE", 2)):
            node.receive(in_call(method, number, cseq, f"Route: {record_route}", tag))
        bye, bye_hop = next((r, h) for r, h in node.sender.requests if r.method == "BYE")
        node.receive(make_response(bye, 200).to_bytes(), bye_hop)
        self.assertEqual(node.sender.statuses()[-1], 200)
        self.clock.advance(0.05)

    def unreachable_call_objects(self) -> Counter[str]:
        """Call objects only the cycle collector could free (collected here, then counted)."""
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            found = Counter(type(o).__qualname__ for o in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        return Counter({name: count for name, count in found.items() if name in CALL_TYPES})

    def proxy_state(self) -> dict[str, int]:
        proxy = self.a.proxy
        return {
            **proxy.transactions.metrics(),
            "contexts": proxy.pending_requests,
            "calls_in_progress": proxy.calls()["in_progress"],
            "timers": len(self.clock.getDelayedCalls()),
        }

    def test_many_calls_leave_no_state(self) -> None:
        """After many calls and their timers, the proxy holds what it held after the first."""
        self.call(self.a, 0)
        self.clock.pump([1.0] * QUIET_SECONDS)
        baseline = self.proxy_state()
        for number in range(1, CALLS + 1):
            self.call(self.a, number)
        self.clock.pump([1.0] * QUIET_SECONDS)
        self.assertEqual(self.proxy_state(), baseline)
        self.assertEqual(self.a.proxy.call_outcomes["answered"], CALLS + 1)

    def test_calls_freed_without_the_cycle_collector(self) -> None:
        """Ended calls leave no reference cycle: their messages and transactions go at once."""
        self.call(self.a, 0)
        self.clock.pump([1.0] * QUIET_SECONDS)
        self.unreachable_call_objects()
        for number in range(1, CALLS + 1):
            self.call(self.a, number)
        self.clock.pump([1.0] * QUIET_SECONDS)
        self.assertEqual(self.unreachable_call_objects(), Counter())

    def test_timed_out_calls_freed_without_the_cycle_collector(self) -> None:
        """A branch that never answers (Timer B's 408) leaves no cycle either."""
        self.unreachable_call_objects()
        for number in range(CALLS):
            self.a.receive(in_call("INVITE", number, 1))
            self.clock.advance(0.05)
        self.clock.pump([1.0] * QUIET_SECONDS)
        self.assertEqual(self.a.proxy.call_outcomes["failed"], CALLS)
        self.assertEqual(self.unreachable_call_objects(), Counter())

    def test_answered_calls_keep_only_their_transactions_meanwhile(self) -> None:
        """
        While an answered call's server transactions wait out Timers J and L
        (32 s), the proxy keeps no response context or branch for it, and
        the two messages each transaction keeps hold nothing parsed: at 160
        calls a second these waiting calls were most of a super-node's heap,
        and every full collection walked them.
        """
        for number in range(CALLS):
            self.call(self.a, number)
        kept = list(self.a.proxy.transactions.server_transactions.values())
        self.assertGreaterEqual(len(kept), 2 * CALLS)  # each INVITE and BYE, until their timers
        self.assertEqual(self.a.proxy.pending_requests, 0)
        live = Counter(type(o).__qualname__ for o in gc.get_objects())
        self.assertEqual((live["ResponseContext"], live["Branch"]), (0, 0))
        parsed = [
            message
            for transaction in kept
            for message in (transaction.request, transaction.last_response)
            if message is not None and message.headers._parsed
        ]
        self.assertEqual(parsed, [])

    def test_retransmitted_bye_answered_the_same_after_the_parses_are_dropped(self) -> None:
        """The kept final response is sent again as it was, when the caller missed it (s17.2.2)."""
        self.call(self.a, 1)
        first = self.a.sender.responses[-1][0].to_bytes()
        record_route = "<sip:203.0.113.1:5060;lr>"  # any Route: it is matched by branch alone
        self.a.receive(in_call("BYE", 1, 2, f"Route: {record_route}", ";tag=callee1"))
        self.assertEqual(self.a.sender.responses[-1][0].to_bytes(), first)

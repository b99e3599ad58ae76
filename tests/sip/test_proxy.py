"""Tests for the overlay proxy: two super-nodes on a fake overlay, fake transports, fake clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip.errors import SipParseError
from p2psip.sip.location import OverlayLocationService
from p2psip.sip.location_cache import LocationCache
from p2psip.sip.message import Request, Response, make_response, parse_message
from p2psip.sip.proxy import NODE_PARAMETER, SipProxy
from p2psip.sip.response_context import TIMER_C_SECONDS
from p2psip.sip.registrar import Registrar
from p2psip.sip.transaction import Hop

from .memory_storage import MemoryOverlayStorage

DOMAIN = "example.org"
NOW = 1_764_000_000.0
NODE_A = 0xAAAA0000000000000000000000000001
NODE_B = 0xBBBB0000000000000000000000000002
ADDRESS_A = ("203.0.113.1", 5060)
ADDRESS_B = ("203.0.113.2", 5060)
CALLER = Hop("UDP", "198.51.100.10", 5070)
ALICE_FLOW = Hop("UDP", "192.0.2.7", 40001)
ALICE_FLOW_2 = Hop("TCP", "192.0.2.8", 40002)


class RecordingSender:
    """A transport that records what the transaction layer sends."""

    def __init__(self) -> None:
        self.requests: list[tuple[Request, Hop]] = []
        self.responses: list[tuple[Response, Hop]] = []
        self.fail_to: set[Hop] = set()

    def send_request(self, request: Request, target: Hop, on_error: Callable[[str], None]) -> None:
        self.requests.append((request, target))
        if target in self.fail_to:
            on_error("unreachable")

    def send_response(self, response: Response, source: Hop) -> None:
        self.responses.append((response, source))

    def statuses(self) -> list[int]:
        return [response.status for response, _ in self.responses]


class RecordingCallSetup:
    """A CallSetupObserver that records ("first" | "final", status, seconds)."""

    def __init__(self, events: list[tuple[str, int, float]]) -> None:
        self.events = events

    def first_response_sent(self, status: int, seconds: float) -> None:
        self.events.append(("first", status, seconds))

    def final_response_sent(self, status: int, seconds: float) -> None:
        self.events.append(("final", status, seconds))


def message_text(
    method: str = "INVITE",
    uri: str = "sip:alice@example.org",
    branch: str = "z9hG4bKcaller1",
    via_host: str = "198.51.100.10:5070",
    extra: str = "",
    cseq_method: str | None = None,
    to_tag: str = "",
    max_forwards: int | None = 70,
) -> bytes:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {via_host};branch={branch};rport",
        "From: <sip:bob@example.org>;tag=bob1",
        f"To: <sip:alice@example.org>{to_tag}",
        "Call-ID: call-xyz@198.51.100.10",
        f"CSeq: 1 {cseq_method or method}",
        "Contact: <sip:bob@198.51.100.10:5070>",
    ]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_request(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def register_request(
    contact: str,
    expires: int = 600,
    cseq: int = 1,
    call_id: str = "reg-1",
    sent_by: str | None = None,
) -> Request:
    """A REGISTER; by default sent by the contact's own address (a UA behind NAT registering itself)."""
    if sent_by is None:
        host_port = contact.split("@", 1)[1].split(">", 1)[0].split(";", 1)[0]
        sent_by = host_port if ":" in host_port else host_port + ":5060"
    return parse_request(
        (
            "REGISTER sip:example.org SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {sent_by};branch=z9hG4bKreg" + call_id + str(cseq) + ";rport\r\n"
            "From: <sip:alice@example.org>;tag=r1\r\nTo: <sip:alice@example.org>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nMax-Forwards: 70\r\n"
            f"Contact: {contact}\r\nExpires: {expires}\r\n\r\n"
        ).encode()
    )


class Node:
    """One super-node: storage view, location service, registrar, proxy and sender."""

    def __init__(
        self,
        node_id: int,
        address: tuple[str, int],
        clock: Clock,
        shared: dict[tuple[str, int], dict[bytes, tuple[bytes, float]]],
        applications: dict[tuple[int, int], tuple[str, int]],
    ) -> None:
        self.storage = MemoryOverlayStorage(node_id, clock, shared, applications)
        self.location = OverlayLocationService(self.storage, clock)
        self.registrar = self.make_registrar(node_id, clock)
        self.sender = RecordingSender()
        self.proxy = SipProxy(
            DOMAIN,
            address,
            self.storage,
            self.location,
            self.registrar,
            self.sender,
            clock,
            credentials=self.registrar.credentials,
        )
        applications[(node_id, 5060)] = address

    def make_registrar(self, node_id: int, clock: Clock) -> Registrar:
        """A registrar that trusts every phone; subclasses put Digest in front."""
        return Registrar(DOMAIN, self.location, clock, trusted_network=True)

    def receive(self, data: bytes | Request | Response, source: Hop = CALLER) -> None:
        message = parse_message(data) if isinstance(data, bytes) else data
        self.proxy.transactions.message_received(message, source)


NodeT = TypeVar("NodeT", bound=Node)


def ring_of_two(test: SynchronousTestCase, node_class: type[NodeT]) -> tuple[Clock, NodeT, NodeT]:
    """Super-nodes A and B on one fake overlay and one fake clock, stopped at cleanup."""
    clock = Clock()
    clock.advance(NOW)
    shared: dict[tuple[str, int], dict[bytes, tuple[bytes, float]]] = {}
    applications: dict[tuple[int, int], tuple[str, int]] = {}
    a = node_class(NODE_A, ADDRESS_A, clock, shared, applications)
    b = node_class(NODE_B, ADDRESS_B, clock, shared, applications)
    for node in (a, b):
        test.addCleanup(node.registrar.stop)
        test.addCleanup(node.proxy.transactions.terminate_all)
    return clock, a, b


#: URIs made of the pieces the proxy routes on: our domain and addresses,
#: other hosts, the node parameter (ours, another node's, garbage), lr and
#: maddr, and schemes it cannot route.
odd_sip_uris = st.builds(
    lambda scheme, user, host, port, parameters: (
        f"{scheme}:{user}{host}{port}{''.join(';' + p for p in parameters)}"
    ),
    st.sampled_from(["sip", "sips", "SIP"]),
    st.sampled_from(["", "alice@", "carol@", "mallory@", "ALICE@", "%61lice@", "bob@"]),
    st.sampled_from(
        ["example.org", "EXAMPLE.org", "203.0.113.1", "203.0.113.2", "192.0.2.99", "[2001:db8::1]"]
    ),
    st.sampled_from(["", ":5060", ":5061", ":1"]),
    st.lists(
        st.sampled_from(
            [
                "lr",
                "transport=tcp",
                "transport=sctp",
                "maddr=203.0.113.2",
                "user=phone",
                f"{NODE_PARAMETER}={NODE_A:032x}",
                f"{NODE_PARAMETER}={NODE_B:032x}",
                f"{NODE_PARAMETER}={2**128 + 5:x}",
                f"{NODE_PARAMETER}=zz",
                f"{NODE_PARAMETER}",
            ]
        ),
        max_size=3,
    ),
)
odd_uris = odd_sip_uris | st.sampled_from(["tel:+15551234", "mailto:alice@example.org", "x"])


class ProxyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock, self.a, self.b = ring_of_two(self, Node)

    def register_at(self, node: Node, contact: str, flow: Hop, **kwargs: object) -> None:
        node.receive(register_request(contact, **kwargs), flow)  # type: ignore[arg-type]
        self.assertEqual(node.sender.responses[-1][0].status, 200)

    def forwarded(self, node: Node, method: str = "INVITE") -> list[tuple[Request, Hop]]:
        return [(r, hop) for r, hop in node.sender.requests if r.method == method]

    def respond_to(
        self, node: Node, request: Request, status: int, source: Hop, to_tag: str = ";tag=uas1"
    ) -> None:
        response = make_response(request, status)
        if to_tag and status > 100:
            response.headers.set("To", str(request.to) + to_tag)
        node.receive(response.to_bytes(), source)

    # -- server itself ------------------------------------------------------

    def test_options_to_server(self) -> None:
        """OPTIONS to the domain itself is answered 200 with Allow (health checks)."""
        self.a.receive(message_text("OPTIONS", uri="sip:example.org"))
        [(response, hop)] = self.a.sender.responses
        self.assertEqual((response.status, hop), (200, CALLER))
        self.assertIn("INVITE", response.headers.get("Allow") or "")

    def test_options_to_own_address_with_zero_max_forwards(self) -> None:
        """OPTIONS to the node's own address is answered even with Max-Forwards 0."""
        self.a.receive(message_text("OPTIONS", uri="sip:203.0.113.1", max_forwards=0))
        self.assertEqual(self.a.sender.statuses(), [200])

    def test_register_goes_to_registrar(self) -> None:
        """REGISTER to the domain reaches the registrar and binds the contact with its flow."""
        self.register_at(self.a, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        [binding] = self.a.registrar.local_bindings("sip:alice@example.org")
        self.assertEqual(binding.flow, ALICE_FLOW)

    def test_other_methods_to_server_405(self) -> None:
        """An INVITE to the domain itself (no user) gets 405 with Allow."""
        self.a.receive(message_text(uri="sip:example.org"))
        response = self.a.sender.responses[-1][0]
        self.assertEqual(
            (response.status, response.headers.get("Allow")), (405, "OPTIONS, REGISTER")
        )

    # -- refusals ---------------------------------------------------------------

    def test_unknown_user_answered_like_an_offline_one(self) -> None:
        """An INVITE for a user nobody knows gets 480, as for a user who is offline."""
        self.a.receive(message_text(uri="sip:mallory@example.org"))
        self.assertEqual(self.a.sender.statuses(), [100, 480])

    def test_known_user_without_binding_480(self) -> None:
        """An INVITE for a known user with no live binding gets 480."""
        self.a.receive(message_text(uri="sip:carol@example.org"))
        self.assertEqual(self.a.sender.statuses(), [100, 480])

    def test_expired_binding_480(self) -> None:
        """Once the only binding has expired the user is temporarily unavailable."""
        self.register_at(self.a, "<sip:alice@10.0.0.5>", ALICE_FLOW, expires=60)
        self.clock.advance(61)
        self.a.receive(message_text())
        self.assertEqual(self.a.sender.statuses()[-1], 480)

    def test_max_forwards_zero_483(self) -> None:
        """A request with Max-Forwards 0 for someone else gets 483."""
        self.a.receive(message_text(max_forwards=0))
        self.assertEqual(self.a.sender.statuses(), [100, 483])

    def test_proxy_require_420(self) -> None:
        """A Proxy-Require we do not support gets 420 naming it."""
        self.a.receive(message_text(extra="Proxy-Require: foo"))
        response = self.a.sender.responses[-1][0]
        self.assertEqual((response.status, response.headers.get("Unsupported")), (420, "foo"))

    def test_registrar_bug_answered_500(self) -> None:
        """If the registrar fails unexpectedly the REGISTER still gets a 500, and the bug is logged."""
        from twisted.internet.defer import fail

        self.patch(
            self.a.registrar, "register_received", lambda request, flow: fail(RuntimeError("bug"))
        )
        self.a.receive(register_request("<sip:alice@10.0.0.5>"), ALICE_FLOW)
        self.assertEqual(self.a.sender.statuses(), [500])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_other_domain_refused_not_dropped(self) -> None:
        """A request for another domain is answered 404 naming the missing gateway."""
        self.a.receive(message_text(uri="sip:dave@elsewhere.net"))
        response = self.a.sender.responses[-1][0]
        self.assertEqual(response.status, 404)
        self.assertIn("gateway", response.reason)

    def test_overlay_lookup_failure_480(self) -> None:
        """If the overlay cannot be asked, the caller gets 480 rather than silence."""
        self.a.storage.available = False
        self.a.receive(message_text())
        self.assertEqual(self.a.sender.statuses(), [100, 480])

    def test_bad_node_parameter_400(self) -> None:
        """A garbage super-node parameter is a 400."""
        self.a.receive(message_text(uri=f"sip:alice@example.org;{NODE_PARAMETER}=zz"))
        self.assertEqual(self.a.sender.statuses()[-1], 400)

    def test_non_sip_route_416(self) -> None:
        """A Route that is not a SIP URI gets 416."""
        self.a.receive(message_text(extra="Route: <tel:+15551234>"))
        self.assertEqual(self.a.sender.statuses()[-1], 416)

    # -- outcome counters ------------------------------------------------------

    def test_outcomes_counted_once(self) -> None:
        """Each final response to a received request is counted once, by method and status."""
        self.register_at(self.a, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        self.a.receive(message_text(uri="sip:mallory@example.org"))
        self.a.receive(message_text(uri="sip:mallory@example.org"))  # a retransmission
        self.a.receive(message_text("OPTIONS", uri="sip:example.org", branch="z9hG4bKopt"))
        self.assertEqual(
            dict(self.a.proxy.outcomes),
            {("REGISTER", 200): 1, ("INVITE", 480): 1, ("OPTIONS", 200): 1},
        )
        self.assertEqual(self.a.proxy.metrics()["final_responses"]["INVITE"], {"480": 1})

    def test_invite_outcome_logged(self) -> None:
        """A proxied INVITE's final response is logged at debug level with the elapsed time."""
        from twisted.logger import LogLevel, globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.register_at(self.a, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        self.a.receive(message_text())
        [(invite, hop)] = self.forwarded(self.a)
        self.clock.advance(0.25)
        self.respond_to(self.a, invite, 200, hop)
        [event] = [e for e in events if "INVITE {aor}" in e.get("log_format", "")]
        self.assertEqual((event["log_level"], event["status"]), (LogLevel.debug, 200))
        self.assertAlmostEqual(event["elapsed_ms"], 250.0)
        self.assertEqual(self.a.proxy.outcomes[("INVITE", 200)], 1)

    def test_summary_once_a_minute(self) -> None:
        """At info level the final responses are summarised once a minute, not one line each."""
        with capturedLogs() as events:
            self.register_at(self.a, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
            self.a.receive(message_text(uri="sip:mallory@example.org"))
            self.clock.advance(61)
            self.a.receive(message_text(uri="sip:mallory@example.org", branch="z9hG4bKx2"))
            self.a.receive(message_text(uri="sip:mallory@example.org", branch="z9hG4bKx3"))
        info = [e for e in events if e["log_level"] == LogLevel.info]
        [summary] = info
        self.assertEqual(summary["summary"], "INVITE 480 x2; REGISTER 200 x1")
        self.a.proxy.summary.flush()
        self.assertEqual(self.a.proxy.summary.describe(), "")

    # -- call set-up observers ---------------------------------------------------

    def observe_calls(self, node: Node) -> list[tuple[str, int, float]]:
        events: list[tuple[str, int, float]] = []
        node.proxy.call_setup_observers.append(RecordingCallSetup(events))
        return events

    def test_call_setup_ringing_then_answer(self) -> None:
        """Ringing after 0.25 s and an answer after 2.25 s are reported once each, not the 100."""
        events = self.observe_calls(self.a)
        self.register_at(self.a, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        self.a.receive(message_text())
        [(invite, hop)] = self.forwarded(self.a)
        self.clock.advance(0.25)
        self.respond_to(self.a, invite, 180, hop)
        self.clock.advance(1.0)
        self.respond_to(self.a, invite, 183, hop)
        self.clock.advance(1.0)
        self.respond_to(self.a, invite, 200, hop)
        self.respond_to(self.a, invite, 200, hop)  # the UA retransmitting its 2xx
        self.assertEqual(events, [("first", 180, 0.25), ("final", 200, 2.25)])

    def test_call_setup_failure_without_ringing(self) -> None:
        """A call refused at once ends both measures at that final response."""
        events = self.observe_calls(self.a)
        self.a.receive(message_text(uri="sip:mallory@example.org"))
        self.assertEqual(events, [("first", 480, 0.0), ("final", 480, 0.0)])

    def test_call_setup_timeout(self) -> None:
        """A phone that never answers ends the set-up with the proxy's 408 at Timer B."""
        events = self.observe_calls(self.a)
        self.register_at(self.a, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        self.a.receive(message_text())
        self.clock.advance(33)
        [(kind, status, seconds), final] = events
        self.assertEqual((kind, status, final[:2]), ("first", 408, ("final", 408)))
        self.assertGreater(seconds, 31.0)

    def test_calls_counted_for_status(self) -> None:
        """In progress until the final response; then answered or failed; re-INVITEs are no calls."""
        self.register_at(self.a, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        self.a.receive(message_text())
        [(invite, hop)] = self.forwarded(self.a)
        self.assertEqual(
            self.a.proxy.calls(), {"in_progress": 1, "answered": 0, "challenged": 0, "failed": 0}
        )
        self.respond_to(self.a, invite, 200, hop)
        self.a.receive(message_text(uri="sip:mallory@example.org", branch="z9hG4bKm"))
        self.a.receive(
            message_text(uri="sip:mallory@example.org", to_tag=";tag=x", branch="z9hG4bKre")
        )
        self.assertEqual(
            self.a.proxy.calls(), {"in_progress": 0, "answered": 1, "challenged": 0, "failed": 1}
        )

    def test_reinvite_is_not_a_call_setup(self) -> None:
        """An INVITE inside a dialog (with a To tag) is proxied but not timed as a call set-up."""
        events = self.observe_calls(self.a)
        self.a.receive(message_text(uri="sip:mallory@example.org", to_tag=";tag=callee1"))
        self.assertEqual(self.a.sender.statuses()[-1], 480)
        self.assertEqual(events, [])

    def test_other_methods_not_timed(self) -> None:
        """REGISTER and OPTIONS are not calls."""
        events = self.observe_calls(self.a)
        self.register_at(self.a, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        self.a.receive(message_text("OPTIONS", uri="sip:example.org", branch="z9hG4bKopt"))
        self.assertEqual(events, [])

    def test_forked_call_reported_once(self) -> None:
        """With two branches, the first ringing and the winning 2xx are the only reports."""
        events = self.observe_calls(self.a)
        self.register_two()
        self.a.receive(message_text())
        first, second = self.forwarded(self.a)
        self.clock.advance(0.5)
        self.respond_to(self.a, second[0], 180, second[1])
        self.respond_to(self.a, first[0], 180, first[1])
        self.clock.advance(3.0)
        self.respond_to(self.a, first[0], 200, first[1])
        self.respond_to(self.a, second[0], 487, second[1])
        self.assertEqual(events, [("first", 180, 0.5), ("final", 200, 3.5)])

    # -- local delivery -----------------------------------------------------------

    def test_local_delivery_over_flow(self) -> None:
        """An INVITE for a user registered here goes to the contact over the REGISTER's flow."""
        self.register_at(self.a, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        self.a.receive(message_text())
        [(invite, hop)] = self.forwarded(self.a)
        self.assertEqual(hop, ALICE_FLOW)
        self.assertEqual(str(invite.uri), "sip:alice@10.0.0.5:5062")
        self.assertEqual(invite.max_forwards, 69)
        top = invite.via
        self.assertEqual((top.host, top.port), ADDRESS_A)
        self.assertTrue((top.branch or "").startswith("z9hG4bKp2p"))
        self.assertEqual(len(invite.vias), 2)
        self.assertEqual(
            str(invite.record_routes[0].uri),
            f"sip:203.0.113.1:5060;lr;{NODE_PARAMETER}={NODE_A:032x}",
        )

    def test_responses_relayed_upstream(self) -> None:
        """Ringing and OK from the UA reach the caller with our Via removed."""
        self.register_at(self.a, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        self.a.receive(message_text())
        [(invite, _)] = self.forwarded(self.a)
        self.respond_to(self.a, invite, 180, ALICE_FLOW)
        self.respond_to(self.a, invite, 200, ALICE_FLOW)
        upstream = [
            (r.status, hop, len(r.vias))
            for r, hop in self.a.sender.responses
            if r.status in (180, 200)
        ]
        self.assertEqual(upstream[-2:], [(180, CALLER, 1), (200, CALLER, 1)])
        self.assertEqual(self.a.sender.responses[-1][0].via.branch, "z9hG4bKcaller1")

    def test_third_party_contact_sent_directly(self) -> None:
        """A contact registered from another address is reached at its own address, not the flow."""
        self.register_at(
            self.a, "<sip:alice@198.51.100.50:5090>", ALICE_FLOW, sent_by="192.0.2.7:5080"
        )
        self.a.receive(message_text())
        [(invite, hop)] = self.forwarded(self.a)
        self.assertEqual(hop, Hop("UDP", "198.51.100.50", 5090))

    def test_request_timeout_408(self) -> None:
        """A UA that never answers yields a 408 to the caller when Timer B fires."""
        self.register_at(self.a, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        self.a.receive(message_text())
        self.clock.advance(33)
        self.assertEqual(self.a.sender.statuses()[-1], 408)

    def test_timer_c_cancels_ringing_branch(self) -> None:
        """A branch that rings for over three minutes is cancelled; its 487 reaches the caller."""
        self.register_at(self.a, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        self.a.receive(message_text())
        [(invite, hop)] = self.forwarded(self.a)
        self.respond_to(self.a, invite, 180, hop)
        self.clock.advance(120)
        self.respond_to(self.a, invite, 180, hop)  # a new provisional resets Timer C
        self.clock.advance(120)
        self.assertEqual(self.forwarded(self.a, "CANCEL"), [])
        self.clock.advance(62)
        self.assertEqual(len(self.forwarded(self.a, "CANCEL")), 1)
        self.respond_to(self.a, invite, 487, hop)
        self.assertEqual(self.a.sender.statuses()[-1], 487)

    def test_timer_c_gives_up_on_silent_branch(self) -> None:
        """If a cancelled branch never answers, the caller gets 408 after a grace period, and no timer is left."""
        self.register_at(self.a, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        self.a.receive(message_text())
        [(invite, hop)] = self.forwarded(self.a)
        self.respond_to(self.a, invite, 180, hop)
        self.clock.advance(181)
        self.clock.advance(33)
        self.assertEqual(self.a.sender.statuses()[-1], 408)
        self.clock.advance(3600)
        self.assertEqual(self.a.proxy.pending_requests, 0)

    def test_transport_error_becomes_final(self) -> None:
        """A branch whose transport fails at once still ends the request with a final response."""
        self.register_at(self.a, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        self.a.sender.fail_to.add(ALICE_FLOW)
        self.a.receive(message_text())
        self.assertEqual(self.a.sender.statuses()[-1], 500)

    # -- forking -------------------------------------------------------------------

    def register_two(self) -> None:
        self.register_at(self.a, "<sip:alice@10.0.0.5>;q=0.5", ALICE_FLOW)
        self.register_at(
            self.a, "<sip:alice@10.0.0.6;transport=tcp>", ALICE_FLOW_2, call_id="reg-2"
        )

    def test_parallel_fork(self) -> None:
        """An INVITE is sent to every registered contact at once."""
        self.register_two()
        self.a.receive(message_text())
        hops = sorted((str(r.uri), hop.transport) for r, hop in self.forwarded(self.a))
        self.assertEqual(
            hops, [("sip:alice@10.0.0.5", "UDP"), ("sip:alice@10.0.0.6;transport=tcp", "TCP")]
        )
        branches = {r.via.branch for r, _ in self.forwarded(self.a)}
        self.assertEqual(len(branches), 2)

    def test_best_response_after_all_fail(self) -> None:
        """With 486 and 503 from two branches the caller gets the 486."""
        self.register_two()
        self.a.receive(message_text())
        first, second = self.forwarded(self.a)
        self.respond_to(self.a, first[0], 503, first[1])
        self.assertNotIn(503, self.a.sender.statuses())
        self.respond_to(self.a, second[0], 486, second[1])
        self.assertEqual(self.a.sender.statuses()[-1], 486)

    def test_only_503_becomes_500(self) -> None:
        """A lone 503 is passed upstream as 500 (s16.7)."""
        self.register_at(self.a, "<sip:alice@10.0.0.5>", ALICE_FLOW)
        self.a.receive(message_text())
        [(invite, hop)] = self.forwarded(self.a)
        self.respond_to(self.a, invite, 503, hop)
        self.assertEqual(self.a.sender.statuses()[-1], 500)

    def test_2xx_cancels_other_branches(self) -> None:
        """When one branch answers 200 the ringing others are cancelled."""
        self.register_two()
        self.a.receive(message_text())
        first, second = self.forwarded(self.a)
        self.respond_to(self.a, second[0], 180, second[1])
        self.respond_to(self.a, first[0], 200, first[1])
        self.assertEqual(self.a.sender.statuses()[-1], 200)
        [(cancel, hop)] = self.forwarded(self.a, "CANCEL")
        self.assertEqual((cancel.via.branch, hop), (second[0].via.branch, second[1]))

    def test_6xx_wins(self) -> None:
        """A 603 ends the fork: pending branches are cancelled and the 603 goes upstream."""
        self.register_two()
        self.a.receive(message_text())
        first, second = self.forwarded(self.a)
        self.respond_to(self.a, second[0], 180, second[1])
        self.respond_to(self.a, first[0], 603, first[1])
        self.assertEqual(len(self.forwarded(self.a, "CANCEL")), 1)
        self.respond_to(self.a, second[0], 487, second[1])
        self.assertEqual(self.a.sender.statuses()[-1], 603)

    # -- CANCEL ----------------------------------------------------------------------

    def test_cancel_propagates(self) -> None:
        """A CANCEL is answered 200 and passed to the ringing branch; its 487 reaches the caller."""
        self.register_at(self.a, "<sip:alice@10.0.0.5>", ALICE_FLOW)
        self.a.receive(message_text())
        [(invite, hop)] = self.forwarded(self.a)
        self.respond_to(self.a, invite, 180, hop)
        self.a.receive(message_text("CANCEL"))
        cancel_answers = [r.status for r, _ in self.a.sender.responses if r.cseq.method == "CANCEL"]
        self.assertEqual(cancel_answers, [200])
        [(cancel, cancel_hop)] = self.forwarded(self.a, "CANCEL")
        self.assertEqual((cancel.via.branch, cancel_hop), (invite.via.branch, hop))
        self.respond_to(self.a, invite, 487, hop)
        self.assertEqual(self.a.sender.statuses()[-1], 487)

    def test_cancel_before_provisional_waits(self) -> None:
        """A branch that has not rung yet gets its CANCEL once it sends a provisional response."""
        self.register_at(self.a, "<sip:alice@10.0.0.5>", ALICE_FLOW)
        self.a.receive(message_text())
        [(invite, hop)] = self.forwarded(self.a)
        self.a.receive(message_text("CANCEL"))
        self.assertEqual(self.forwarded(self.a, "CANCEL"), [])
        self.respond_to(self.a, invite, 180, hop)
        self.assertEqual(len(self.forwarded(self.a, "CANCEL")), 1)

    def test_cancel_unknown_481(self) -> None:
        """A CANCEL matching no INVITE gets 481."""
        self.a.receive(message_text("CANCEL", branch="z9hG4bKnothing"))
        self.assertEqual(self.a.sender.statuses(), [481])

    # -- across super-nodes ---------------------------------------------------------------

    def test_forward_to_serving_super_node(self) -> None:
        """A user registered at B is reached through B, which delivers over the user's flow."""
        self.register_at(self.b, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        self.a.receive(message_text())
        [(to_b, hop)] = self.forwarded(self.a)
        self.assertEqual(hop, Hop("UDP", *ADDRESS_B))
        self.assertEqual(to_b.uri.parameters.get(NODE_PARAMETER), f"{NODE_B:032x}")
        self.b.receive(to_b.to_bytes(), Hop("UDP", *ADDRESS_A))
        [(to_alice, alice_hop)] = self.forwarded(self.b)
        self.assertEqual((str(to_alice.uri), alice_hop), ("sip:alice@10.0.0.5:5062", ALICE_FLOW))
        self.assertEqual(len(to_alice.vias), 3)
        self.assertEqual(len(to_alice.record_routes), 2)
        # The 200 travels back through B and A to the caller.
        self.respond_to(self.b, to_alice, 200, ALICE_FLOW)
        [(at_a, _)] = [
            (r, h)
            for r, h in self.b.sender.responses
            if r.status == 200 and r.cseq.method == "INVITE"
        ]
        self.a.receive(at_a.to_bytes(), Hop("UDP", *ADDRESS_B))
        self.assertEqual(self.a.sender.responses[-1][0].status, 200)
        self.assertEqual(self.a.sender.responses[-1][1], CALLER)

    def test_fork_across_nodes(self) -> None:
        """Contacts at two super-nodes are tried in parallel: one local branch, one to B."""
        self.register_at(self.a, "<sip:alice@10.0.0.9>", ALICE_FLOW_2)
        self.register_at(self.b, "<sip:alice@10.0.0.5>", ALICE_FLOW)
        self.a.receive(message_text())
        hops = sorted(hop.host for _, hop in self.forwarded(self.a))
        self.assertEqual(hops, sorted([ALICE_FLOW_2.host, ADDRESS_B[0]]))

    def test_unreachable_super_node_480(self) -> None:
        """If the serving super-node cannot be resolved the caller gets 480."""
        self.register_at(self.b, "<sip:alice@10.0.0.5>", ALICE_FLOW)
        del self.a.storage.applications[(NODE_B, 5060)]
        self.a.receive(message_text())
        self.assertEqual(self.a.sender.statuses()[-1], 480)

    def test_loop_detected(self) -> None:
        """A request that comes back to a proxy unchanged is refused with 482."""
        self.register_at(self.b, "<sip:alice@10.0.0.5>", ALICE_FLOW)
        self.a.receive(message_text())
        [(to_b, _)] = self.forwarded(self.a)
        # B (misbehaving) sends the same request back to A with the same URI.
        looped = to_b.copy()
        looped.headers.prepend("Via", "SIP/2.0/UDP 203.0.113.2:5060;branch=z9hG4bKevil")
        looped.uri = parse_request(message_text(uri=str(to_b.uri))).uri
        self.b.storage.applications[(NODE_B, 5060)] = ADDRESS_A  # make A think B lives at A
        self.a.receive(looped.to_bytes(), Hop("UDP", *ADDRESS_B))
        # A forwards once more (it is a spiral from its point of view: new URI) ...
        forwarded_again = self.forwarded(self.a)
        self.assertEqual(len(forwarded_again), 2)
        # ... and the second time round the same request is a loop.
        again = forwarded_again[-1][0].copy()
        again.headers.prepend("Via", "SIP/2.0/UDP 203.0.113.2:5060;branch=z9hG4bKevil2")
        self.a.receive(again.to_bytes(), Hop("UDP", *ADDRESS_B))
        self.assertEqual(self.a.sender.statuses()[-1], 482)

    # -- SIP over TLS (RFC 3261 s26, RFC 5658 double record-routing) ---------------

    def test_call_from_tls_phone_is_record_routed_twice(self) -> None:
        """An INVITE arriving over TLS and leaving over UDP gets our TLS entry and our UDP entry."""
        self.a.proxy.advertised_ports = {"UDP": 5060, "TLS": 5061}
        self.register_at(self.a, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        caller = Hop("TLS", "198.51.100.10", 50123)
        self.a.receive(message_text(), caller)
        [(invite, hop)] = self.forwarded(self.a)
        self.assertEqual(hop, ALICE_FLOW)
        node = f"{NODE_PARAMETER}={NODE_A:032x}"
        # The callee's route set starts with the UDP entry, the caller's (reversed) with TLS.
        self.assertEqual(
            [str(r.uri) for r in invite.record_routes],
            [f"sip:203.0.113.1:5060;lr;{node}", f"sip:203.0.113.1:5061;transport=tls;lr;{node}"],
        )
        self.assertEqual((invite.via.transport, invite.via.port), ("UDP", 5060))
        self.respond_to(self.a, invite, 200, ALICE_FLOW)
        self.assertEqual(self.a.sender.responses[-1][1], caller)

    def test_request_to_a_tls_phone_names_the_tls_port(self) -> None:
        """A phone registered over TLS is reached over its connection, with Via and Record-Route for TLS."""
        self.a.proxy.advertised_ports = {"UDP": 5060, "TLS": 5061}
        alice_tls = Hop("TLS", "192.0.2.7", 40443)
        self.register_at(self.a, "<sip:alice@10.0.0.5:5062;transport=tls>", alice_tls)
        self.a.receive(message_text(), Hop("UDP", "198.51.100.10", 5070))
        [(invite, hop)] = self.forwarded(self.a)
        self.assertEqual(hop, alice_tls)
        self.assertEqual((invite.via.transport, invite.via.port), ("TLS", 5061))
        self.assertEqual(
            [(r.uri.port, r.uri.parameters.get("transport")) for r in invite.record_routes],  # type: ignore[union-attr]
            [(5061, "tls"), (5060, None)],
        )

    def test_both_of_our_route_entries_are_removed(self) -> None:
        """A BYE following a doubly record-routed dialog loses both our entries and goes on."""
        self.a.proxy.advertised_ports = {"UDP": 5060, "TLS": 5061}
        self.register_at(self.a, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        node = f"{NODE_PARAMETER}={NODE_A:032x}"
        self.a.receive(
            message_text(
                "BYE",
                uri="sip:alice@10.0.0.5:5062",
                branch="z9hG4bKbyetls",
                to_tag=";tag=uas1",
                extra=(
                    f"Route: <sip:203.0.113.1:5061;transport=tls;lr;{node}>, "
                    f"<sip:203.0.113.1:5060;lr;{node}>"
                ),
            ),
            Hop("TLS", "198.51.100.10", 50123),
        )
        [(bye, hop)] = self.forwarded(self.a, "BYE")
        self.assertEqual((hop, bye.headers.values("Route")), (ALICE_FLOW, []))

    # -- in-dialog requests ---------------------------------------------------------------

    def test_in_dialog_requests_follow_route(self) -> None:
        """ACK and BYE with our Route entry reach the UA over its flow."""
        self.register_at(self.a, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        route = "Route: <sip:203.0.113.1:5060;lr>"
        self.a.receive(
            message_text(
                "ACK",
                uri="sip:alice@10.0.0.5:5062",
                branch="z9hG4bKack1",
                extra=route,
                to_tag=";tag=uas1",
            )
        )
        [(ack, ack_hop)] = self.forwarded(self.a, "ACK")
        self.assertEqual(
            (str(ack.uri), ack_hop, ack.headers.values("Route")),
            ("sip:alice@10.0.0.5:5062", ALICE_FLOW, []),
        )
        self.a.receive(
            message_text(
                "BYE",
                uri="sip:alice@10.0.0.5:5062",
                branch="z9hG4bKbye1",
                extra=route,
                to_tag=";tag=uas1",
            )
        )
        [(bye, bye_hop)] = self.forwarded(self.a, "BYE")
        self.assertEqual(bye_hop, ALICE_FLOW)
        self.assertEqual(bye.record_routes, [])

    def test_route_to_next_proxy(self) -> None:
        """With a further Route entry naming a ring super-node, the request goes there."""
        route_b = f"<sip:203.0.113.2:5060;lr;{NODE_PARAMETER}={NODE_B:032x}>"
        self.a.receive(
            message_text(
                "BYE",
                uri="sip:bob@198.51.100.10:5070",
                branch="z9hG4bKbye2",
                to_tag=";tag=x",
                extra=f"Route: <sip:203.0.113.1:5060;lr>, {route_b}",
            )
        )
        [(bye, hop)] = self.forwarded(self.a, "BYE")
        self.assertEqual(
            (hop, str(bye.uri)), (Hop("UDP", *ADDRESS_B), "sip:bob@198.51.100.10:5070")
        )
        self.assertEqual([str(r.uri) for r in bye.routes], [route_b[1:-1]])

    def relay_attempt(self, method: str, uri: str, route: str) -> list[int]:
        """Send ``method`` with ``route`` (a new transaction each time); the statuses answered."""
        self.attempts = getattr(self, "attempts", 0) + 1
        branch = f"z9hG4bK{method}r{self.attempts}"
        with capturedLogs() as events:
            self.a.receive(
                message_text(method, uri=uri, branch=branch, to_tag=";tag=x", extra=route)
            )
        self.assertEqual(self.a.sender.requests, [])
        self.warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        return self.a.sender.statuses()

    def test_no_relay_to_foreign_routes(self) -> None:
        """
        A Route to a host that is not a ring super-node (no Node-ID, or a
        Node-ID with another address) is refused with 403, sending nothing.
        """
        for route in (
            "Route: <sip:203.0.113.1:5060;lr>, <sip:192.0.2.99:5060;lr>",
            f"Route: <sip:192.0.2.99:5060;lr;{NODE_PARAMETER}={NODE_B:032x}>",
            f"Route: <sip:192.0.2.99:5060;lr;{NODE_PARAMETER}=zz>",
        ):
            with self.subTest(route=route):
                self.a.sender.responses.clear()
                statuses = self.relay_attempt("INVITE", "sip:x@192.0.2.99", route)
                self.assertEqual(statuses[-1], 403)
        self.assertEqual(self.a.proxy.relay_refusals, 3)

    def test_oversized_node_parameter(self) -> None:
        """A Node-ID parameter longer than 128 bits is refused before any overlay call."""
        resolved: list[int] = []
        original = self.a.storage.resolve_application

        def spy(node_id: int, application: int) -> object:
            resolved.append(node_id)
            return original(node_id, application)

        self.a.storage.resolve_application = spy  # type: ignore[method-assign]
        huge = "f" * 40
        statuses = self.relay_attempt(
            "BYE", "sip:v@192.0.2.99", f"Route: <sip:192.0.2.99;lr;{NODE_PARAMETER}={huge}>"
        )
        self.assertEqual(statuses[-1], 403)
        self.a.receive(message_text(uri=f"sip:alice@example.org;{NODE_PARAMETER}={huge}"))
        self.assertEqual(self.a.sender.statuses()[-1], 400)
        self.assertEqual(resolved, [])

    def test_no_relay_to_the_request_uri(self) -> None:
        """
        A Route naming only us, with an IP address as Request-URI, is not
        relayed there: that address is no phone registered here.
        """
        statuses = self.relay_attempt(
            "INVITE", "sip:victim@192.0.2.99:5060", "Route: <sip:203.0.113.1:5060;lr>"
        )
        self.assertEqual(statuses[-1], 403)
        self.assertEqual(len(self.warnings), 1)
        self.assertIn("outside the ring", self.warnings[0]["log_format"])
        self.relay_attempt("MESSAGE", "sip:victim@192.0.2.99:5060", "Route: <sip:203.0.113.1;lr>")
        self.assertEqual(self.warnings, [])  # at most one warning a minute

    def test_no_relay_of_acks(self) -> None:
        """An ACK with a foreign Route or target is dropped, not forwarded."""
        self.relay_attempt("ACK", "sip:victim@192.0.2.99", "Route: <sip:192.0.2.99;lr>")
        self.relay_attempt("ACK", "sip:victim@192.0.2.99", "Route: <sip:203.0.113.1;lr>")
        self.assertEqual(self.a.sender.responses, [])

    def test_in_dialog_request_to_a_served_phone(self) -> None:
        """A dialog contact that differs from the registered one only in user part still reaches the phone's flow."""
        self.register_at(self.a, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        self.a.receive(
            message_text(
                "BYE",
                uri="sip:dialog-7@10.0.0.5:5062;transport=udp",
                branch="z9hG4bKbye3",
                to_tag=";tag=x",
                extra="Route: <sip:203.0.113.1:5060;lr>",
            )
        )
        [(_, hop)] = self.forwarded(self.a, "BYE")
        self.assertEqual(hop, ALICE_FLOW)

    def test_contact_maddr_is_not_followed(self) -> None:
        """A registered contact's maddr does not send our INVITEs to a third host."""
        self.register_at(self.a, "<sip:alice@192.0.2.7:40001;maddr=198.51.100.99>", ALICE_FLOW)
        self.a.receive(message_text())
        [(_, hop)] = self.forwarded(self.a)
        self.assertNotEqual(hop.host, "198.51.100.99")

    def test_ack_with_nowhere_to_go_dropped(self) -> None:
        """An ACK for a URI we know nothing about is dropped silently."""
        self.a.receive(message_text("ACK", uri="sip:x@192.0.2.99", branch="z9hG4bKack9"))
        self.assertEqual((self.a.sender.requests, self.a.sender.responses), ([], []))

    def test_stray_2xx_relayed(self) -> None:
        """A retransmitted 200 outside any transaction is passed to the next Via."""
        self.register_at(self.a, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        self.a.receive(message_text())
        [(invite, hop)] = self.forwarded(self.a)
        self.respond_to(self.a, invite, 200, hop)
        count = len(self.a.sender.responses)
        self.respond_to(self.a, invite, 200, hop)
        self.assertEqual(len(self.a.sender.responses), count + 1)
        response, to = self.a.sender.responses[-1]
        self.assertEqual((response.status, to), (200, CALLER))

    # -- hostile input ---------------------------------------------------------------------

    @settings(max_examples=150, deadline=None)
    @given(
        st.sampled_from(["INVITE", "MESSAGE", "OPTIONS", "BYE", "CANCEL", "ACK", "REGISTER"]),
        odd_uris,
        st.lists(odd_uris | st.sampled_from(["", "<>", "sip:", "<sip:203.0.113.1"]), max_size=3),
        st.sampled_from([None, 0, 1, 70]),
        st.sampled_from(["", ";tag=uas1"]),
        st.booleans(),
    )
    def test_hostile_requests_never_crash(
        self,
        method: str,
        uri: str,
        routes: list[str],
        max_forwards: int | None,
        to_tag: str,
        alice_at_b: bool,
    ) -> None:
        """
        Odd Request-URIs and Route sets end in exactly one final response, never a
        500, to the sender (ACKs in none), log no failure, and leave nothing pending.

        The URIs are built from the pieces the proxy routes on (our domain and
        addresses, the node parameter, lr, other schemes), so most requests
        parse and reach the routing code.  Each example gets fresh nodes:
        ProxyTests' nodes would outlive the examples, and a second example
        with the same branch would be a retransmission.
        """
        try:
            request = parse_request(
                message_text(
                    method,
                    uri=uri,
                    branch="z9hG4bKfuzz",
                    extra=f"Route: {', '.join(routes)}" if routes else "",
                    max_forwards=max_forwards,
                    to_tag=to_tag,
                )
            )
        except SipParseError:
            return
        clock = Clock()
        clock.advance(NOW)
        shared: dict[tuple[str, int], dict[bytes, tuple[bytes, float]]] = {}
        applications: dict[tuple[int, int], tuple[str, int]] = {}
        a = Node(NODE_A, ADDRESS_A, clock, shared, applications)
        b = Node(NODE_B, ADDRESS_B, clock, shared, applications)
        for node in (a, b):
            self.addCleanup(node.registrar.stop)
        if alice_at_b:
            self.register_at(b, "<sip:alice@10.0.0.5:5062>", ALICE_FLOW)
        with capturedLogs() as events:
            a.receive(request)
            # Past Timer C, a second at a time so that timers set by timers run:
            # by then a request forwarded into silence has had its 408.
            clock.pump([1.0] * int(TIMER_C_SECONDS + 64))
        failures = [e for e in events if "log_failure" in e or e["log_level"] >= LogLevel.error]
        self.assertEqual(failures, [])
        outcomes = dict(a.proxy.outcomes)
        if method == "ACK":
            self.assertEqual((outcomes, a.sender.responses), ({}, []))
        else:
            [((_, status), count)] = outcomes.items()
            self.assertEqual(count, 1)
            self.assertNotEqual(status, 500)
            finals = {
                response.status for response, _ in a.sender.responses if response.status >= 200
            }
            self.assertEqual(finals, {status})
            self.assertEqual({hop for _, hop in a.sender.responses}, {CALLER})
        self.assertEqual(a.proxy.pending_requests, 0)


class CachingNode(Node):
    """A super-node whose proxy caches lookups and node addresses."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.proxy.location_cache = LocationCache(self.location, self.storage, self.proxy.clock)


class LocationCacheProxyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock, self.a, self.b = ring_of_two(self, CachingNode)
        self.b.receive(register_request("<sip:alice@10.0.0.5:5062>"), ALICE_FLOW)

    def overlay_calls(self) -> list[str]:
        return [str(call[0]) for call in self.a.storage.calls]

    def call(self, branch: str) -> Request:
        self.a.receive(message_text(branch=branch))
        return [r for r, _ in self.a.sender.requests if r.method == "INVITE"][-1]

    def test_second_call_needs_no_overlay_message(self) -> None:
        """The second call to an AOR is routed from the cache: no Fetch, no AppAttach."""
        self.call("z9hG4bKc1")
        self.assertEqual(self.overlay_calls(), ["get", "resolve"])
        second = self.call("z9hG4bKc2")
        self.assertEqual(self.overlay_calls(), ["get", "resolve"])
        self.assertEqual(second.uri.parameters.get(NODE_PARAMETER), f"{NODE_B:032x}")
        self.assertEqual(self.a.proxy.location_cache.stats()["hits"], 1)

    def test_holder_says_gone(self) -> None:
        """A 480 from the serving super-node makes the next call look the AOR up again."""
        forwarded = self.call("z9hG4bKc1")
        response = make_response(forwarded, 480)
        response.headers.set("To", str(forwarded.to) + ";tag=b1")
        self.a.receive(response.to_bytes(), Hop("UDP", *ADDRESS_B))
        self.assertEqual(self.a.proxy.location_cache.stats()["invalidations"], 1)
        self.call("z9hG4bKc2")
        self.assertEqual(self.overlay_calls().count("get"), 2)

    def test_busy_keeps_the_entry(self) -> None:
        """A busy callee is a real answer: the cache keeps the AOR."""
        forwarded = self.call("z9hG4bKc1")
        response = make_response(forwarded, 486)
        response.headers.set("To", str(forwarded.to) + ";tag=b1")
        self.a.receive(response.to_bytes(), Hop("UDP", *ADDRESS_B))
        self.call("z9hG4bKc2")
        self.assertEqual(self.overlay_calls().count("get"), 1)

    def test_unreachable_node_forgotten(self) -> None:
        """A transport failure towards the serving node clears the AOR and the node's address."""
        self.a.sender.fail_to.add(Hop("UDP", *ADDRESS_B))
        self.call("z9hG4bKc1")
        # The branch's 503 (transport error) goes upstream as 500 (s16.7).
        self.assertEqual(self.a.sender.statuses()[-1], 500)
        stats = self.a.proxy.location_cache.stats()
        self.assertEqual((stats["entries"], stats["node_addresses"]), (0, 0))

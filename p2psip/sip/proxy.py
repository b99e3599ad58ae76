"""
The super-node's SIP core: a stateful proxy (RFC 3261 section 16) whose
location service is the overlay, with the registrar and OPTIONS pings.

It is the transaction user of :class:`p2psip.sip.transaction.TransactionLayer`.
A request for an AOR of the overlay domain is routed like this::

    caller --> super-node A --(lookup AOR in the DHT: SIP-REGISTRATION)
               |  binding served by A itself: deliver to the contact over
               |  the flow its REGISTER came in on (NAT-friendly)
               '  binding served by B: forward with the Request-URI
                  ``sip:alice@example.org;p2psip-node=<B's Node-ID hex>`` to
                  B's SIP address (RELOAD AppAttach, application 5060,
                  RFC 7904 section 5); B sees its own Node-ID and delivers to
                  its local contacts only, so super-nodes never bounce a
                  request between each other.

Per RFC 3261 section 16 the proxy checks Max-Forwards (483) and
Proxy-Require (420), detects loops with a hash of the request in its own
Via branch (``z9hG4bKp2p<loop hash>.<unique>``; 482, s16.3 item 4 and s16.6
item 8), removes its own Route entry (loose routing, s16.4) and adds
Record-Route (``<sip:host:port;lr>``) to dialog-creating requests so that
ACK, BYE and re-INVITE pass through the same super-nodes, forks in
parallel to every contact and returns the best final response (s16.7: 2xx
at once, 6xx ends the fork, else the lowest class, 503 turned into 500),
propagates CANCEL to the branches (s16.10) and cancels branches that ring
for more than three minutes (Timer C, s16.8).  ACKs for 2xx and stray 2xx
retransmissions are forwarded statelessly.  Unknown users get 404, users
without a live binding 480, an ``OPTIONS`` addressed to the server itself
200 (health checks), other methods addressed to it 405.

Before any of that, a new request whose source address is over its rate
(:mod:`p2psip.sip.request_limit`) gets 503 with ``Retry-After``.  A new
INVITE or REGISTER that arrives while the node is overloaded never gets
this far: the transaction layer answers it 503 statelessly
(:mod:`p2psip.sip.overload`, installed by setting :attr:`SipProxy.overload`).

With authentication on, an out-of-dialog request (not ACK or CANCEL,
s22.1) whose From names a user of our domain is forwarded only when that
user is known to be the caller (RFC 3261 s22.3): it came over the flow a
phone registered that AOR on, or from another super-node of the ring (a
Record-Route with that node's Node-ID, at the address the overlay gives
for it, and the request's source address; every super-node puts one on
the requests it forwards to another), or it carries Proxy-Authorization
for exactly that user.  Otherwise the answer is 407 with a Proxy-Authenticate
challenge per algorithm, 403 for wrong credentials (counted in the login
throttle, shared with the registrar) or another user's, so nobody can call
as one of our users from outside.  The Proxy-Authorization we used is
removed before forwarding.

A contact is reached over the flow its REGISTER came in on when it names
the registering UA itself (``LocalBinding.reached_over_flow``), otherwise
at its own address.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from typing import Protocol

from attrs import define, frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from p2psip.interfaces import IOverlayStorage
from p2psip.sip.authorization import CredentialCheck, Outcome
from p2psip.sip.domain_routes import DomainRoutes, ForeignCallers, RouteKind
from p2psip.sip.direct_contacts import TARGET_PARAMETER, DialogTargets
from p2psip.sip.errors import SipParseError
from p2psip.sip.gateway import Gateway, RelayRefused, first_hop
from p2psip.sip.location import Binding, OverlayLocationService
from p2psip.sip.location_cache import LocationCache
from p2psip.sip.media_hook import MediaHook
from p2psip.sip.message import MAGIC_COOKIE, NameAddress, Request, Response, make_response
from p2psip.sip.outbound import group_by_instance
from p2psip.sip.overload import OverloadGuard, StatelessRefusals
from p2psip.sip.registrar import LocalBinding, Registrar, blur_aor, blur_flow
from p2psip.sip.request_limit import RequestRateLimit
from p2psip.sip.request_log import RequestSummary
from p2psip.sip.response_context import ResponseContext
from p2psip.sip.transaction import (
    Hop,
    MessageSender,
    ServerTransaction,
    State,
    TimerSettings,
    TransactionLayer,
    new_branch,
)
from p2psip.sip.uri import URI, SipURI, parse_uri
from p2psip.util.log_throttle import LogThrottle
from p2psip.util.logs import Logger

#: The Request-URI parameter that names the super-node to deliver at.
NODE_PARAMETER = "p2psip-node"
#: Max-Forwards for requests that arrive without one (RFC 3261 s16.6 item 3).
DEFAULT_MAX_FORWARDS = 70
#: Methods whose requests may create a dialog, so we Record-Route them.
DIALOG_CREATING_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER"})
ALLOWED_METHODS = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK"
#: At most this many branches for one request, over all super-nodes
#: serving the AOR (a flood guard: a call must not become a packet storm).
MAX_BRANCHES = 8
#: Our Via branches: cookie, this marker, the loop hash, a unique part.
_BRANCH_MARKER = "p2p"
#: Methods counted by name in :attr:`SipProxy.outcomes`; others count as "other"
#: (metric labels must come from a bounded set).
COUNTED_METHODS = frozenset(
    {"INVITE", "REGISTER", "BYE", "CANCEL", "OPTIONS", "MESSAGE", "SUBSCRIBE", "NOTIFY"}
)
#: Final responses to a request routed by a cached lookup that make the
#: cache forget the AOR: the serving super-node says the user is gone
#: (404, 410, 480) or the branch failed (408, 5xx).  A busy or declining
#: callee (486, 603) is a real answer and keeps the entry.
STALE_LOCATION_STATUSES = frozenset({404, 408, 410, 480, 500, 502, 503, 504})


def hop_for_uri(uri: SipURI) -> Hop:
    """
    Where to send a request whose next hop is ``uri`` (RFC 3263 without DNS).

    ``maddr`` is not followed: contacts and routes come from other parties,
    and a ``maddr`` would let them send our requests to a third host.
    """
    transport = (uri.transport or ("tls" if uri.scheme == "sips" else "udp")).upper()
    host = uri.host
    port = uri.port or (5061 if transport == "TLS" else 5060)
    return Hop(transport, host.strip("[]"), port)


def parse_node_parameter(text: str | None) -> int | None:
    """
    The Node-ID a ``p2psip-node`` URI parameter names: 1 to 32 hex digits
    (a 128-bit id); None for anything else, which no overlay call may see.
    """
    if not text or len(text) > 32 or not all(c in "0123456789abcdefABCDEF" for c in text):
        return None
    return int(text, 16)


def _is_initial(request: Request) -> bool:
    """An out-of-dialog request (no To tag); a To header we cannot read counts as in-dialog."""
    try:
        return request.to_tag is None
    except SipParseError:
        return False


def _names_super_node(uri: URI) -> bool:
    """Whether ``uri`` targets a super-node of the ring (carries a ``p2psip-node``)."""
    return isinstance(uri, SipURI) and NODE_PARAMETER in uri.parameters


def _new_tag() -> str:
    return new_branch()[len(MAGIC_COOKIE) :]


#: How a call's initial INVITE ended, as ``SipProxy.calls`` counts them.
CALL_OUTCOMES = ("answered", "challenged", "failed")


def _call_outcome(status: int) -> str:
    if 200 <= status < 300:
        return "answered"
    return "challenged" if status in (401, 407) else "failed"


@frozen
class _Target:
    """
    Where one copy of a request goes: the Request-URI and first hop, with
    the phone instance it reaches (SIP Outbound) and its place among that
    instance's flows (local ones first, then by reg-id).
    """

    uri: URI
    hop: Hop
    instance: str | None = None
    order: tuple[int, int] = (0, 0)


@frozen
class _OwnRoute:
    """Our own Route entry, removed from a request that follows a route set through us."""

    #: The ``p2psip-target`` proof it carried (:class:`DialogTargets`), if any.
    target_token: str | None = None

    @classmethod
    def of(cls, uri: URI) -> _OwnRoute:
        token = uri.parameters.get(TARGET_PARAMETER) if isinstance(uri, SipURI) else None
        return cls(token or None)


@define(eq=False)
class _InviteTiming:
    """When an INVITE arrived, and which call set-up milestones it has passed."""

    started: float
    #: No To tag: the INVITE sets up a call (a re-INVITE is not a call set-up).
    initial: bool
    first_response_sent: bool = False


class CallSetupObserver(Protocol):
    """
    Told how long each call took to set up at this proxy (see ``SipProxy.call_setup_observers``).

    ``seconds`` run on the proxy's clock from the arrival of an initial
    INVITE (one without a To tag) to the moment a response to it went back
    upstream; ``status`` is that response's.  100 Trying does not count: the
    transaction layer sends it at once, it says nothing about the callee.
    """

    def first_response_sent(self, status: int, seconds: float) -> None:
        """
        The first response other than 100 Trying went upstream.

        This is the post-dial delay the caller hears, RFC 6076's Session
        Request Delay: to the ringing (180, 183) or, when the callee answers
        or fails without ringing, to that final response.
        """

    def final_response_sent(self, status: int, seconds: float) -> None:
        """The first final response went upstream: answered (2xx) or failed, ring time included."""


class SipProxy:
    """
    The super-node's transaction user: REGISTER, OPTIONS and the proxy.

    ``advertised`` is the host and port other elements reach this node's
    SIP service at; it appears in our Via and Record-Route entries.
    :attr:`advertised_ports` names the port of each transport we listen on
    when they differ (SIP over TLS on 5061 beside UDP on 5060), so that a
    Via or Record-Route for TLS names the TLS port.
    Transports hand messages to :attr:`transactions`.
    """

    log = Logger()

    def __init__(
        self,
        domain: str,
        advertised: tuple[str, int],
        storage: IOverlayStorage,
        location: OverlayLocationService,
        registrar: Registrar,
        sender: MessageSender,
        clock: IReactorTime,
        *,
        peer_transport: str = "UDP",
        timers: TimerSettings = TimerSettings(),
        rate_limit: RequestRateLimit | None = None,
        credentials: CredentialCheck | None = None,
        gateway: Gateway | None = None,
        media: MediaHook | None = None,
        location_cache: LocationCache | None = None,
        overload: OverloadGuard | None = None,
        dialog_targets: DialogTargets | None = None,
    ) -> None:
        self.domain = domain.lower()
        #: Proofs in our Record-Route of where a direct call's requests may go.
        self.dialog_targets = dialog_targets or DialogTargets(os.urandom(32))
        self.advertised = (advertised[0].lower(), advertised[1])
        #: Transport name ("UDP", "TCP", "TLS") -> our port for it; others use ``advertised``.
        self.advertised_ports: dict[str, int] = {}
        #: Ports this worker shares with the host's other workers (``--workers``):
        #: ours too, but a response sent there may reach another worker, so
        #: the requests we send ask for responses at ``advertised`` (no rport).
        self.shared_ports: frozenset[int] = frozenset()
        self.storage = storage
        self.location = location
        self.registrar = registrar
        self.clock = clock
        self.peer_transport = peer_transport.upper()
        self.transactions = TransactionLayer(sender, self, clock, timers)
        self._contexts: dict[ServerTransaction, ResponseContext] = {}
        #: Final responses this node sent to requests it received, by
        #: (method, status): REGISTER outcomes and proxied call outcomes.
        self.outcomes: Counter[tuple[str, int]] = Counter()
        #: Told of each call's set-up milestones (the call set-up metrics).
        self.call_setup_observers: list[CallSetupObserver] = []
        self._invite_started: dict[ServerTransaction, _InviteTiming] = {}
        #: Initial INVITEs (calls, not re-INVITEs) by how they ended:
        #: "answered" (2xx), "challenged" (401/407, the caller retries with
        #: credentials) and "failed" (any other final response).
        self.call_outcomes: Counter[str] = Counter()
        #: Requests refused because they asked us to relay (since start).
        self.relay_refusals = 0
        #: The node a source is a stream with, as whoever made the stream
        #: proved it (a thin client's streams through the mediator, whose
        #: far end is not the address the node announces); None: no such streams.
        self.node_of_source: Callable[[Hop], int | None] | None = None
        self._relay_log = LogThrottle(clock)
        #: New requests per source address; None: no limit (--sip-rate-limit 0).
        self.rate_limit = rate_limit
        self._rate_log = LogThrottle(clock)
        #: Checks callers that claim our domain (407); None: authentication off.
        self.credentials = credentials
        #: The domain rules and the way to other SIP domains (none routed by default).
        self.gateway = gateway or Gateway(DomainRoutes.build(self.domain), None, clock)
        #: The media relay's view of the calls we forward; None: bodies pass untouched.
        self.media = media
        #: Lookups and super-node addresses, remembered (off unless given one).
        self.location_cache = location_cache or LocationCache(
            location, storage, clock, max_entries=0
        )
        #: The once-a-minute info line about the final responses sent.
        self.summary = RequestSummary(clock)
        #: Requests routed to an AOR through the overlay: the AOR and the
        #: super-nodes tried, so a failure can clear them from the cache.
        self._routed: dict[ServerTransaction, tuple[str, list[int]]] = {}
        self._overload: OverloadGuard | None = None
        self.overload = overload

    @property
    def overload(self) -> OverloadGuard | None:
        """Refuses new calls and registrations while the node is overloaded; None: never."""
        return self._overload

    @overload.setter
    def overload(self, guard: OverloadGuard | None) -> None:
        """Put ``guard`` at the transaction layer's door: its 503s are stateless and cheap."""
        self._overload = guard
        self.transactions.refusals = (
            None if guard is None else StatelessRefusals(guard, self.clock, self._refused)
        )

    def _refused(self, method: str) -> None:
        """Count a stateless overload refusal with the other final responses."""
        self.outcomes[(method, 503)] += 1
        self.summary.note(method, 503)

    @property
    def pending_requests(self) -> int:
        """Requests being proxied right now (for status pages and leak checks)."""
        return len(self._contexts)

    @property
    def local_node_id(self) -> int:
        node_id: int = self.storage.local_node_id
        return node_id

    # -- TransactionUser ---------------------------------------------------

    def request_received(self, transaction: ServerTransaction) -> None:
        """A new request: answer it here or proxy it (or refuse it, over the source's rate)."""
        if self._over_rate_limit(transaction):
            return
        if transaction.request.method == "INVITE":
            self._forget_when_ended(transaction)
            self._invite_started[transaction] = _InviteTiming(
                self.clock.seconds(), _is_initial(transaction.request)
            )
        try:
            self._dispatch(transaction)
        except SipParseError as e:
            self.log.debug(
                "refusing {method}: {why}", method=transaction.request.method, why=e.reason
            )
            self._answer(transaction, e.status, e.reason)
        except Exception:
            self.log.failure("while handling {method}", method=transaction.request.method)
            self._answer(transaction, 500, "Server Internal Error")

    def _over_rate_limit(self, transaction: ServerTransaction) -> bool:
        """
        Answer 503 with Retry-After when the request's source address has
        sent more new requests than the rate limit allows; warn at most once
        a minute per source, with how many were refused.
        """
        limit = self.rate_limit
        if limit is None:
            return False
        retry_after = limit.admit(transaction.source.host)
        if retry_after is None:
            return False
        self._answer(
            transaction,
            503,
            "Service Unavailable (too many requests from your address)",
            (("Retry-After", str(retry_after)),),
        )
        blurred = blur_flow(transaction.source)
        held_back = self._rate_log.admit(blurred)
        if held_back is not None:
            self.log.warn(
                "refused {count} request(s) from {source} over the SIP rate limit "
                "({rate:g} a second, burst {burst}; raise --sip-rate-limit, or 0 for none)",
                count=held_back + 1,
                source=blurred,
                rate=limit.requests_per_second,
                burst=limit.burst,
            )
        return True

    def ack_received(self, request: Request, source: Hop) -> None:
        """An ACK for a 2xx: forward it statelessly along the route set."""
        try:
            ack = request.copy()
            if ack.max_forwards == 0:
                return
            own_route = self._preprocess_routes(ack)
            if ack.headers.values("Route"):
                top = ack.routes[0].uri
                if not isinstance(top, SipURI):
                    return
                self._route_hops(top).addCallback(first_hop).addCallbacks(
                    lambda hop: self._send_ack(ack, hop, request),
                    lambda failure: self._note_relay_refused(source, failure),
                )
                return
            target = self._in_dialog_target(ack, own_route)
            if target is None:
                self._note_relay_refused(source, None)
                return
            self._send_ack(ack, target, request)
        except SipParseError as e:
            self.log.debug("dropped an unroutable ACK: {why}", why=e.reason)

    def _send_ack(self, ack: Request, target: Hop, request: Request) -> None:
        if self.media is not None:
            self.media.ack_forwarding(ack)
        self._prepare(ack, ack.uri, target, request, stateless_key=request.via.branch or "")
        self.transactions.send_request(ack, target, lambda response: None)

    def stray_response_received(self, response: Response, source: Hop) -> None:
        """A response outside any transaction (2xx retransmission): pass it upstream."""
        try:
            if not self._is_own_via(response):
                self.log.debug(
                    "dropped a stray {status} not sent through us", status=response.status
                )
                return
            forwarded = response.copy()
            forwarded.headers.pop_first_value("Via")
            if not forwarded.headers.values("Via"):
                return
            if self.media is not None:
                self.media.response_forwarding(forwarded)
            via = forwarded.via
            host = via.received or via.host
            port = via.rport or via.port or 5060
            self.transactions.sender.send_response(forwarded, Hop(via.transport, host, port))
        except SipParseError as e:
            self.log.debug("dropped a malformed stray response: {why}", why=e.reason)

    # -- dispatch ------------------------------------------------------------

    def _dispatch(self, transaction: ServerTransaction) -> None:
        request = transaction.request
        if request.method == "CANCEL":
            self._cancel_received(transaction)
            return
        if self._addressed_to_server(request):
            if request.method == "REGISTER":
                answered = self.registrar.register_received(request, transaction.source)
                answered.addCallback(lambda response: self._respond(transaction, response))
                answered.addErrback(self._registrar_failed, transaction)
                return
            if request.method == "OPTIONS":
                response = make_response(request, 200, to_tag=_new_tag())
                response.headers.add("Allow", ALLOWED_METHODS)
                response.headers.add("Accept", "application/sdp")
                self._respond(transaction, response)
                return
            if request.method != "ACK" and not request.headers.values("Route"):
                self._answer(
                    transaction, 405, "Method Not Allowed", (("Allow", "OPTIONS, REGISTER"),)
                )
                return
        if request.method == "REGISTER":
            self._answer(transaction, 404, "Not Found (not the registrar for that domain)")
            return
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            self._answer(transaction, 483, "Too Many Hops")
            return
        proxy_require = request.headers.values("Proxy-Require")
        if proxy_require:
            # s16.3 item 5: we implement no proxy extensions.
            self._answer(
                transaction, 420, "Bad Extension", (("Unsupported", ", ".join(proxy_require)),)
            )
            return
        working = request.copy()
        removed_own_route = self._preprocess_routes(working)
        if self._is_loop(working):
            self._answer(transaction, 482, "Loop Detected")
            return
        if self._caller_must_authenticate(working):
            trusted = self._caller_trusted(transaction, working)
            trusted.addCallback(self._caller_checked, transaction, working, removed_own_route)
            trusted.addErrback(self._caller_check_failed, transaction)
            return
        self._route(transaction, working, removed_own_route)

    def _route(
        self, transaction: ServerTransaction, working: Request, removed_own_route: _OwnRoute | None
    ) -> None:
        """Forward a checked request: along its Route, to an AOR, or to a phone served here."""
        if working.headers.values("Route"):
            top = working.routes[0].uri
            if not isinstance(top, SipURI):
                self._answer(transaction, 416, "Unsupported URI Scheme in Route")
                return
            if (
                not _names_super_node(top)
                and _is_initial(working)
                and not self._caller_is_ours(working)
            ):
                # A stranger preloading a Route to a peer domain's proxy
                # would reach it as us, with our standing there.
                self._refuse_relay(transaction, None)
                return
            self._route_hops(top).addCallbacks(
                lambda hops: self._fork(
                    transaction, working, [(working.uri, hop) for hop in hops], failover=True
                ),
                lambda failure: self._refuse_relay(transaction, failure),
            )
            return
        uri = working.uri
        if not isinstance(uri, SipURI):
            self._answer(transaction, 416, "Unsupported URI Scheme")
            return
        if uri.user is not None and self._serves(uri):
            self._route_to_aor(transaction, working, self._in_overlay_domain(uri))
            return
        target = self._in_dialog_target(working, removed_own_route)
        if target is not None:
            self._fork(transaction, working, [(working.uri, target)])
            return
        if removed_own_route and not _is_initial(working):
            # In a route set we are part of, yet the target is no phone we
            # serve: following the Request-URI would relay for anyone.
            self._refuse_relay(transaction, None)
            return
        self._route_to_domain(transaction, working, uri)

    def _route_to_domain(
        self, transaction: ServerTransaction, working: Request, uri: SipURI
    ) -> None:
        """
        A request for another domain: through the gateway when the rules
        route that domain and the caller is one of our users; 404 to our
        user for a domain not routed; 403 (relaying denied) to anyone else.
        """
        destination = self.gateway.destination(uri.host)
        ours = self._caller_is_ours(working)
        if not ours:
            self._refuse_relay(transaction, None)
            return
        if destination.kind is RouteKind.LOCAL:
            self._answer(transaction, 404, "Not Found")  # our domain, but no user to look up
            return
        if destination.kind is RouteKind.UNROUTED:
            self._answer(transaction, 404, f"Not Found (no gateway route to {destination.domain})")
            return

        def located(hops: list[Hop]) -> None:
            if not hops:
                self._answer(
                    transaction,
                    480,
                    f"Temporarily Unavailable (no SIP server found for {destination.domain})",
                )
                return
            self._fork(transaction, working, [(working.uri, hop) for hop in hops], failover=True)

        def failed(failure: Failure) -> None:
            self.log.warn(
                "cannot locate the SIP servers of {domain}: {why}",
                domain=destination.domain,
                why=failure.getErrorMessage(),
            )
            self._answer(transaction, 480, "Temporarily Unavailable (DNS lookup failed)")

        self.gateway.next_hops(uri, destination).addCallbacks(located, failed)

    def _caller_is_ours(self, request: Request) -> bool:
        """
        An out-of-dialog request From a user of our domains (checked by
        :meth:`_caller_must_authenticate` before routing): the only kind the
        gateway takes out of the overlay.
        """
        if not _is_initial(request):
            return False
        caller = request.from_.uri
        return isinstance(caller, SipURI) and self.gateway.routes.is_local(caller.host)

    def _caller_aor(self, caller: SipURI) -> str:
        """The AOR a From names: in the overlay's own domain when it names an alias of it."""
        if self.gateway.routes.is_local(caller.host):
            return self._in_overlay_domain(caller).address_of_record()
        return caller.address_of_record()

    def _serves(self, uri: SipURI) -> bool:
        """Whether ``uri`` is in one of our domains (or names this super-node's address)."""
        return self.gateway.routes.is_local(uri.host) or self._is_own_uri(uri)

    def _in_overlay_domain(self, uri: SipURI) -> SipURI:
        """``uri`` with the overlay's own domain as host (for an alias or our address)."""
        if uri.host.lower() == self.domain:
            return uri
        canonical = uri.copy()
        canonical.host = self.domain
        canonical.port = None
        return canonical

    # -- callers claiming our domain (RFC 3261 s22.3) --------------------------

    def _caller_must_authenticate(self, request: Request) -> bool:
        """
        Whether ``request`` must prove its From user: an out-of-dialog
        request (not ACK or CANCEL, which are never challenged, s22.1)
        whose From names a user of our domain, while authentication is on.
        """
        if self.credentials is None or request.method in ("ACK", "CANCEL"):
            return False
        if not _is_initial(request):
            return False
        caller = request.from_.uri
        if not isinstance(caller, SipURI):
            return False
        routes = self.gateway.routes
        return routes.is_local(caller.host) or routes.foreign_callers is ForeignCallers.PEER_DOMAINS

    def _caller_trusted(self, transaction: ServerTransaction, request: Request) -> Deferred[bool]:
        """
        Whether the request's From needs no credentials here: it came over
        the flow a phone registered that AOR on, or from another super-node
        of the ring (which authenticated the caller itself).
        """
        caller = request.from_.uri
        assert isinstance(caller, SipURI)
        source = transaction.source
        if not self.gateway.routes.is_local(caller.host):
            return self._from_peer_domain(request, source)
        for binding in self.registrar.local_bindings(self._caller_aor(caller)):
            if binding.flow == source:
                return succeed(True)
        return self._from_ring_member(request, source)

    def _from_peer_domain(self, request: Request, source: Hop) -> Deferred[bool]:
        """
        A caller from another domain, with only peer domains admitted: the
        request comes from one of their servers, or from a super-node of the
        ring that admitted it.
        """

        def recognised(domain: str | None) -> Deferred[bool] | bool:
            if domain is not None:
                return True
            return self._from_ring_member(request, source)

        return self.gateway.domain_of_source(source.host).addCallback(recognised)

    def _from_ring_member(self, request: Request, source: Hop) -> Deferred[bool]:
        """
        Whether ``request`` was forwarded by another super-node of the ring.

        A super-node forwarding to another puts a Record-Route naming itself
        with its Node-ID on top (:meth:`_prepare`).  Anyone can write such an
        entry, so it counts only when the overlay says that node serves SIP
        at the address the entry names and the request came from that
        address, or came over a stream proven to be with that node
        (``node_of_source``).  (Over UDP a source address can be forged;
        over TCP and TLS it cannot.)
        """
        try:
            record_routes = request.record_routes
        except SipParseError:
            return succeed(False)
        if not record_routes or not isinstance(record_routes[0].uri, SipURI):
            return succeed(False)
        top = record_routes[0].uri
        node_id = parse_node_parameter(top.parameters.get(NODE_PARAMETER))
        if node_id is None or node_id == self.local_node_id:
            return succeed(False)
        if self.node_of_source is not None and self.node_of_source(source) == node_id:
            return succeed(True)
        resolving = self.location_cache.resolve(node_id)

        def check(address: tuple[str, int]) -> bool:
            hop = hop_for_uri(top)
            serving = (address[0].lower().strip("[]"), address[1])
            member = (hop.host.lower(), hop.port) == serving and source.host.lower().strip(
                "[]"
            ) == serving[0]
            if member and self.rate_limit is not None:
                # It forwards for all its phones: its rate is theirs together.
                self.rate_limit.trust(source.host)
            return member

        def unknown(failure: Failure) -> bool:
            self.log.debug(
                "cannot check a Record-Route naming super-node {node}: {why}",
                node=f"{node_id:032x}"[:8],
                why=failure.getErrorMessage(),
            )
            return False

        return resolving.addCallbacks(check, unknown)

    def _caller_checked(
        self,
        trusted: bool,
        transaction: ServerTransaction,
        working: Request,
        removed_own_route: _OwnRoute | None,
    ) -> None:
        if trusted:
            self._route(transaction, working, removed_own_route)
        else:
            self._authorize_caller(transaction, working, removed_own_route)

    def _caller_check_failed(self, failure: Failure, transaction: ServerTransaction) -> None:
        if failure.check(SipParseError):
            error = failure.value
            assert isinstance(error, SipParseError)
            self._answer(transaction, error.status, error.reason)
            return
        self.log.failure(
            "while checking the caller of {method}", failure, method=transaction.request.method
        )
        self._answer(transaction, 500, "Server Internal Error")

    def _authorize_caller(
        self, transaction: ServerTransaction, working: Request, removed_own_route: _OwnRoute | None
    ) -> None:
        """
        Forward only with Proxy-Authorization for the From user (s22.3):
        challenge with 407 otherwise, 403 for wrong credentials (counted in
        the login throttle) or a user who is not the From user.
        """
        credentials = self.credentials
        assert credentials is not None
        caller = working.from_.uri
        assert isinstance(caller, SipURI)
        request = transaction.request
        judgement = credentials.judge(
            working.headers.get_all("Proxy-Authorization"),
            request.method,
            request.uri,
            self._caller_aor(caller),
            transaction.source.host,
            request.method,
        )
        outcome = judgement.outcome
        if outcome is Outcome.AUTHORIZED:
            assert judgement.accepted is not None
            # Ours, consumed: the next hop has no use for it (s22.3); others' stay.
            working.headers.remove_line("Proxy-Authorization", judgement.accepted)
            self._route(transaction, working, removed_own_route)
            return
        if outcome in (Outcome.CHALLENGE, Outcome.STALE):
            challenges = credentials.challenges(
                stale=outcome is Outcome.STALE,
                aor=self._caller_aor(caller),
                user_agent=request.headers.get("User-Agent"),
            )
            self._answer(
                transaction,
                407,
                "Proxy Authentication Required",
                [("Proxy-Authenticate", value) for value in challenges],
            )
            return
        if outcome is Outcome.MALFORMED:
            self._answer(transaction, 400, f"Bad Request ({judgement.reason})")
            return
        self._answer(transaction, 403, "Forbidden")

    def _registrar_failed(self, failure: Failure, transaction: ServerTransaction) -> None:
        self.log.failure("while registering", failure)
        self._answer(transaction, 500, "Server Internal Error")

    def _addressed_to_server(self, request: Request) -> bool:
        uri = request.uri
        if not isinstance(uri, SipURI) or uri.user is not None:
            return False
        return self.gateway.routes.is_local(uri.host) or self._is_own_uri(uri)

    def _is_own_uri(self, uri: URI) -> bool:
        if not isinstance(uri, SipURI):
            return False
        secure = uri.scheme == "sips" or (uri.transport or "").lower() == "tls"
        port = uri.port or (5061 if secure else 5060)
        return self._is_own_address(uri.host, port)

    def _route_names_us(self, uri: URI) -> bool:
        """
        A Route entry for this proxy: one of our addresses, or one of our
        domains without a user part (phones that take the domain as their
        outbound proxy, RFC 3261 s16.4).
        """
        if self._is_own_uri(uri):
            return True
        return (
            isinstance(uri, SipURI)
            and uri.user is None
            and uri.port is None
            and self.gateway.routes.is_local(uri.host)
        )

    def _is_own_address(self, host: str, port: int) -> bool:
        """Whether ``host:port`` is one of our listeners as we advertise them."""
        own_host, own_port = self.advertised
        return host.lower().strip("[]") == own_host and (
            port == own_port or port in self.advertised_ports.values() or port in self.shared_ports
        )

    def _port_for(self, transport: str) -> int:
        return self.advertised_ports.get(transport.upper(), self.advertised[1])

    def _is_own_via(self, message: Request | Response) -> bool:
        via = message.via
        return self._is_own_address(via.host, via.port or 5060) and (via.branch or "").startswith(
            MAGIC_COOKIE + _BRANCH_MARKER
        )

    def _preprocess_routes(self, request: Request) -> _OwnRoute | None:
        """
        RFC 3261 s16.4: undo a strict router's rewrite and drop our own Route.

        :returns: what our removed Route entry said, or None when there was
            none (a request that follows a route set we are part of has one).
        """
        removed: _OwnRoute | None = None
        routes = request.headers.values("Route")
        if routes and self._is_own_uri(request.uri):
            last = NameAddress.parse(routes[-1], "Route")
            removed = _OwnRoute.of(request.uri)
            request.uri = last.uri
            request.headers.remove("Route")
            if routes[:-1]:
                request.headers.add("Route", ", ".join(routes[:-1]))
        # Our Record-Route may have been two entries (RFC 5658: one per
        # transport when the request changed transport here): drop both.
        for _ in range(2):
            routes = request.headers.values("Route")
            if not routes:
                break
            uri = NameAddress.parse(routes[0], "Route").uri
            if not self._route_names_us(uri):
                break
            request.headers.pop_first_value("Route")
            seen = _OwnRoute.of(uri)
            if removed is None or removed.target_token is None:
                removed = seen
        return removed

    def _in_dialog_target(self, request: Request, own_route: _OwnRoute | None = None) -> Hop | None:
        """
        Next hop for a request to a contact URI rather than an AOR: only a
        phone registered here (by its contact, or the host and port of one),
        reached over the flow it registered on; or, inside a dialog whose
        INVITE this node sent straight to a phone served elsewhere, that
        phone's address, as our Route entry's ``p2psip-target`` proves.
        """
        uri = request.uri
        if not isinstance(uri, SipURI):
            return None
        for binding in self.registrar.bindings_for_contact(uri):
            return self._flow_hop(binding)
        if _is_initial(request):
            # A new request names a phone by its exact contact only: matching
            # host and port alone would ring whoever registered there for a
            # URI meant for someone else (``kuser@ADDRESS:PORT``).
            return None
        for binding in self.registrar.bindings_at(uri):
            return self._flow_hop(binding)
        for binding in self.registrar.bindings_on_connection(uri):
            if isinstance(binding.flow, Hop):
                return binding.flow
        if own_route is not None and own_route.target_token is not None:
            hop = hop_for_uri(uri)
            if self.dialog_targets.allows(
                own_route.target_token, request.call_id, hop.host, hop.port
            ):
                return hop
        return None

    def _route_hops(self, top: SipURI) -> Deferred[list[Hop]]:
        """
        Where a request goes whose top Route is ``top`` (not ours).

        Along a route set of the ring: the Route must carry the Node-ID
        that our Record-Route entries carry, and name the address at which
        the overlay says that super-node serves SIP.  A Route without one
        may name a proxy of a domain the gateway routes to (the peer
        domain's Record-Route on a dialog; :meth:`Gateway.route_hops`).
        Anything else is a stranger asking us to relay, and fails with
        :class:`RelayRefused`.
        """
        if not _names_super_node(top):
            return self.gateway.route_hops(top)
        node_id = parse_node_parameter(top.parameters.get(NODE_PARAMETER))
        if node_id is None or node_id == self.local_node_id:
            return fail(RelayRefused("the Route names no super-node of the ring"))
        resolving = self.location_cache.resolve(node_id)

        def check(address: tuple[str, int]) -> list[Hop]:
            hop = hop_for_uri(top)
            if (hop.host.lower(), hop.port) != (address[0].lower().strip("[]"), address[1]):
                raise RelayRefused("the Route's address is not where that super-node serves SIP")
            return [hop]

        return resolving.addCallback(check)

    def _refuse_relay(self, transaction: ServerTransaction, failure: Failure | None) -> None:
        self._note_relay_refused(transaction.source, failure)
        self._answer(transaction, 403, "Forbidden (relaying denied)")

    def _note_relay_refused(self, source: object, failure: Failure | None) -> None:
        """Count a refused relay; warn at most once a minute per source, with how many there were."""
        if failure is not None and not failure.check(RelayRefused):
            self.log.info(
                "cannot follow a Route to a super-node: {why}", why=failure.getErrorMessage()
            )
        self.relay_refusals += 1
        blurred = blur_flow(source)
        held_back = self._relay_log.admit(blurred)
        if held_back is None:
            return
        self.log.warn(
            "refused {count} request(s) from {source} that asked this proxy to relay "
            "outside the ring and the domains it routes to (sip-peer-domain, sip-static-route)",
            count=held_back + 1,
            source=blurred,
        )

    @staticmethod
    def _flow_hop(binding: LocalBinding) -> Hop:
        flow = binding.flow
        if isinstance(flow, Hop) and binding.reached_over_flow:
            return flow
        uri = binding.contact.uri
        if isinstance(uri, SipURI):
            return hop_for_uri(uri)
        raise SipParseError("binding without a reachable contact", 480)

    # -- loops ---------------------------------------------------------------

    def _loop_hash(self, request: Request) -> str:
        """
        RFC 3261 s16.6 item 8: what must differ for a spiral to be no loop.

        The Route set left after our own entries were removed counts too: a
        request that passes us twice on a dialog's route set (out to
        another super-node's media relay and back to a phone served here)
        has the same Request-URI both times but not the same route ahead.
        """
        parts = [
            str(request.uri),
            ",".join(request.headers.values("Route")),
            request.from_tag or "",
            request.to_tag or "",
            request.call_id,
            str(request.cseq.number),
            ",".join(request.headers.values("Proxy-Require")),
        ]
        return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:16]

    def _is_loop(self, request: Request) -> bool:
        prefix = MAGIC_COOKIE + _BRANCH_MARKER + self._loop_hash(request) + "."
        for via in request.vias:
            if self._is_own_address(via.host, via.port or 5060) and (via.branch or "").startswith(
                prefix
            ):
                return True
        return False

    # -- routing to an AOR -----------------------------------------------------

    def _route_to_aor(self, transaction: ServerTransaction, request: Request, uri: SipURI) -> None:
        aor = uri.address_of_record()
        node_parameter = uri.parameters.get(NODE_PARAMETER)
        if node_parameter is not None:
            if node_parameter.lower() == f"{self.local_node_id:032x}":
                self._deliver_locally(transaction, request, aor)
                return
            node_id = parse_node_parameter(node_parameter)
            if node_id is None:
                self._answer(transaction, 400, f"Bad Request (bad {NODE_PARAMETER})")
                return
            self._forward_to_nodes(transaction, request, aor, [], [(node_id, None, 0)])
            return
        looked_up = self.location_cache.lookup(aor)
        looked_up.addCallbacks(
            lambda bindings: self._bindings_found(transaction, request, aor, bindings),
            lambda failure: self._lookup_failed(transaction, aor, failure),
        )

    def _lookup_failed(self, transaction: ServerTransaction, aor: str, failure: Failure) -> None:
        self.log.warn(
            "overlay lookup of {aor} failed: {why}; is this peer joined to the ring?",
            aor=blur_aor(aor),
            why=failure.getErrorMessage(),
        )
        self._answer(transaction, 480, "Temporarily Unavailable (overlay lookup failed)")

    def _bindings_found(
        self, transaction: ServerTransaction, request: Request, aor: str, bindings: list[Binding]
    ) -> None:
        local_id = self.local_node_id
        #: Remote super-node -> the (instance, reg-id) of each binding it serves.
        served_by: dict[int, set[tuple[str | None, int | None]]] = {}
        #: Remote super-node -> its bindings' contacts, while all may be called from here.
        reachable: dict[int, list[SipURI] | None] = {}
        direct: list[SipURI] = []
        has_local = False
        policy = self.registrar.direct_contacts
        for binding in bindings:
            if binding.node_id == local_id:
                has_local = True
            elif binding.node_id is None:
                try:
                    contact = parse_uri(binding.contact)
                except SipParseError:
                    continue
                if isinstance(contact, SipURI):
                    direct.append(contact)
            else:
                served_by.setdefault(binding.node_id, set()).add((binding.instance, binding.reg_id))
                uris = reachable.setdefault(binding.node_id, [])
                uri = policy.may_call_directly(binding.contact) if binding.direct else None
                reachable[binding.node_id] = None if uris is None or uri is None else [*uris, uri]
        # A node whose every binding of the AOR is a phone we may call
        # ourselves is skipped (one proxy hop instead of two); one binding it
        # must serve keeps the whole AOR there, so no phone rings twice.
        for node_id, uris in reachable.items():
            if uris is not None:
                del served_by[node_id]
                direct.extend(uris)
        # Values in the overlay come from other nodes: bound the fan-out.
        remote_nodes = list(served_by)[:MAX_BRANCHES]
        direct = direct[:MAX_BRANCHES]
        self._note_routed(transaction, aor, remote_nodes)
        local = self.registrar.local_bindings(aor) if has_local else []
        if not local and not remote_nodes and not direct:
            self._answer_no_binding(transaction, aor)
            return
        targets = self._local_targets(local)
        direct_targets = [_Target(contact, hop_for_uri(contact)) for contact in direct]
        targets.extend(direct_targets)
        nodes: list[tuple[int, str | None, int]] = []
        for node_id in remote_nodes:
            instances = {instance for instance, _ in served_by[node_id]}
            # A node is one branch: it joins an instance's flows only when
            # that instance is all it serves for the AOR (else it forks itself).
            instance = next(iter(instances)) if len(instances) == 1 else None
            reg_ids = [reg_id or 0 for _, reg_id in served_by[node_id]]
            nodes.append((node_id, instance, min(reg_ids)))
        self._forward_to_nodes(
            transaction,
            request,
            aor,
            targets,
            nodes,
            frozenset(target.hop for target in direct_targets),
        )

    def _local_targets(self, local: list[LocalBinding]) -> list[_Target]:
        return [
            _Target(
                b.contact.uri.copy(),
                self._flow_hop(b),
                b.instance if b.outbound else None,
                (0, b.reg_id or 0),
            )
            for b in local
        ]

    def _note_routed(self, transaction: ServerTransaction, aor: str, node_ids: list[int]) -> None:
        """Remember how ``transaction`` was routed until its final response."""
        if transaction in self._routed:
            return
        self._forget_when_ended(transaction)
        self._routed[transaction] = (aor, node_ids)

    def _forget_when_ended(self, transaction: ServerTransaction) -> None:
        """
        Have what the proxy keeps per server transaction (its INVITE timing,
        its route, its response context) dropped when it ends, however it
        ends; call before the first of them is kept.

        One bound call per transaction rather than a closure per table: a
        server transaction lives 32 s after its final response (Timers J
        and L), and every object it holds meanwhile is walked by each full
        garbage collection.
        """
        if (
            transaction not in self._invite_started
            and transaction not in self._routed
            and transaction not in self._contexts
        ):
            transaction.add_terminated_callback(partial(self._transaction_ended, transaction))

    def _transaction_ended(self, transaction: ServerTransaction) -> None:
        self._invite_started.pop(transaction, None)
        self._routed.pop(transaction, None)
        self._drop_context(transaction)

    def _drop_context(self, transaction: ServerTransaction) -> None:
        """The request's response context is done or its transaction ended: stop and forget it."""
        context = self._contexts.pop(transaction, None)
        if context is not None:
            context.stop()

    def _final_for_routed(self, transaction: ServerTransaction, status: int) -> None:
        """A request routed by lookup got its final answer: drop stale cache entries."""
        routed = self._routed.pop(transaction, None)
        if routed is None or status not in STALE_LOCATION_STATUSES:
            return
        aor, node_ids = routed
        self.location_cache.invalidate(aor)
        if status in (408, 500, 502, 503, 504):  # a failed branch turns 503 into 500
            for node_id in node_ids:
                self.location_cache.forget_node(node_id)

    def _answer_no_binding(self, transaction: ServerTransaction, aor: str) -> None:
        """
        No phone is registered for ``aor``: 480, whether the user exists or
        not, so that nobody can list the users by calling names (a 404 for
        unknown ones would tell them apart).
        """
        self._answer(transaction, 480, "Temporarily Unavailable")

    def _deliver_locally(self, transaction: ServerTransaction, request: Request, aor: str) -> None:
        local = self.registrar.local_bindings(aor)
        if not local:
            self._answer(transaction, 480, "Temporarily Unavailable")
            return
        self._fork_to_instances(
            transaction,
            request,
            self._local_targets(local),
            flows_only=all(b.outbound for b in local),
        )

    def _forward_to_nodes(
        self,
        transaction: ServerTransaction,
        request: Request,
        aor: str,
        targets: list[_Target],
        nodes: list[tuple[int, str | None, int]],
        direct: frozenset[Hop] = frozenset(),
    ) -> None:
        """
        Resolve each serving super-node's SIP address, then fork to all
        targets: one branch per phone instance (SIP Outbound: its flows one
        after another, :mod:`p2psip.sip.outbound`), one per other binding.
        ``nodes`` are (Node-ID, the one instance it serves or None, lowest reg-id).
        """
        if not nodes:
            self._fork_to_instances(transaction, request, targets, direct=direct)
            return
        pending = len(nodes)
        resolved: list[_Target] = []

        def one_done() -> None:
            nonlocal pending
            pending -= 1
            if pending == 0:
                all_targets = targets + resolved
                if all_targets:
                    self._fork_to_instances(transaction, request, all_targets, direct=direct)
                else:
                    self._answer(
                        transaction, 480, "Temporarily Unavailable (serving super-node unreachable)"
                    )

        for node_id, instance, reg_id in nodes:
            uri = request.uri
            assert isinstance(uri, SipURI)
            target_uri = SipURI(host=self.domain, user=uri.user, scheme=uri.scheme)
            target_uri.parameters[NODE_PARAMETER] = f"{node_id:032x}"

            def found(
                address: tuple[str, int],
                target_uri: SipURI = target_uri,
                instance: str | None = instance,
                order: tuple[int, int] = (1, reg_id),
            ) -> None:
                hop = Hop(self.peer_transport, address[0], address[1])
                resolved.append(_Target(target_uri, hop, instance, order))
                one_done()

            def failed(failure: Failure, node_id: int = node_id) -> None:
                self.location_cache.forget_node(node_id)
                self.location_cache.invalidate(aor)
                self.log.info(
                    "super-node {node} serving {aor} unreachable: {why}",
                    node=f"{node_id:032x}"[:8],
                    aor=blur_aor(aor),
                    why=failure.getErrorMessage(),
                )
                one_done()

            self.location_cache.resolve(node_id).addCallbacks(found, failed)

    def _fork_to_instances(
        self,
        transaction: ServerTransaction,
        request: Request,
        targets: list[_Target],
        *,
        flows_only: bool = False,
        direct: frozenset[Hop] = frozenset(),
    ) -> None:
        """
        Fork with one branch per instance, its flows tried in order (RFC 5626
        s5.3).  ``flows_only``: every target is a phone's outbound flow
        served here, so their failing is answered 430 Flow Failed;
        ``direct``: the hops that are phones served elsewhere.
        """
        groups = group_by_instance(targets, lambda target: target.instance)
        ordered: list[tuple[URI, Hop]] = []
        branch_of: list[int] = []
        for number, group in enumerate(groups):
            for target in sorted(group, key=lambda target: target.order):
                ordered.append((target.uri, target.hop))
                branch_of.append(number)
        self._fork(
            transaction,
            request,
            ordered,
            branches=branch_of,
            flows_only=flows_only,
            direct=direct,
        )

    # -- forking and responses -------------------------------------------------

    def _prepare(
        self,
        outgoing: Request,
        target_uri: URI,
        hop: Hop,
        incoming: Request,
        stateless_key: str | None = None,
        arrived_over: str | None = None,
        direct: bool = False,
    ) -> None:
        """
        Request-URI, Max-Forwards, Record-Route and our Via (s16.6).

        ``direct``: ``hop`` is a phone served by another super-node, called
        from here (:mod:`p2psip.sip.direct_contacts`).

        ``arrived_over`` is the transport the request reached us by: when it
        differs from ``hop``'s (a phone on TLS, the next super-node on UDP),
        we record-route twice (RFC 5658), so each side of the dialog reaches
        us again by the transport and port it used.
        """
        outgoing.uri = target_uri
        max_forwards = incoming.max_forwards
        outgoing.headers.set(
            "Max-Forwards",
            str((DEFAULT_MAX_FORWARDS if max_forwards is None else max_forwards) - 1),
        )
        host = self.advertised[0]
        port = self._port_for(hop.transport)
        if stateless_key is None and (
            outgoing.method in DIALOG_CREATING_METHODS
            or (_names_super_node(target_uri) and _is_initial(incoming))
        ):
            # A branch to a phone served elsewhere (a direct call) ends the
            # route set here: our entry proves where its requests may go.
            token = (
                self.dialog_targets.token(incoming.call_id, hop.host, hop.port) if direct else None
            )
            if arrived_over is not None and arrived_over.upper() != hop.transport.upper():
                outgoing.headers.prepend("Record-Route", self._record_route(arrived_over, token))
            outgoing.headers.prepend("Record-Route", self._record_route(hop.transport, token))
        if stateless_key is None:
            unique = new_branch()[len(MAGIC_COOKIE) :]
        else:
            # A stateless forward must reuse the branch for retransmissions (s16.11).
            unique = hashlib.sha256(stateless_key.encode("utf-8", "surrogateescape")).hexdigest()[
                :20
            ]
        branch = f"{MAGIC_COOKIE}{_BRANCH_MARKER}{self._loop_hash(incoming)}.{unique}"
        # With --workers, requests leave by the first (shared) socket; with
        # rport the next hop would answer to that port, which any worker may
        # hold.  Without it the answer goes to our Via, this worker's port (a
        # super-node is not behind a NAT, so that address is reachable).
        rport = "" if self.shared_ports else ";rport"
        outgoing.headers.prepend(
            "Via", f"SIP/2.0/{hop.transport} {host}:{port};branch={branch}{rport}"
        )

    def _record_route(self, transport: str, target_token: str | None = None) -> str:
        """
        Our Record-Route entry for ``transport``: its port, and
        transport=tcp/tls unless UDP; with ``target_token``, the
        ``p2psip-target`` proof for the branch's address (:class:`DialogTargets`).
        """
        name = transport.upper()
        parameter = "" if name == "UDP" else f";transport={name.lower()}"
        # The Node-ID lets the next super-node on the route set check,
        # through the overlay, that this entry really names a ring member.
        node = f";{NODE_PARAMETER}={self.local_node_id:032x}"
        if target_token is not None:
            node += f";{TARGET_PARAMETER}={target_token}"
        return f"<sip:{self.advertised[0]}:{self._port_for(name)}{parameter};lr{node}>"

    def _fork(
        self,
        transaction: ServerTransaction,
        request: Request,
        targets: list[tuple[URI, Hop]],
        *,
        failover: bool = False,
        branches: list[int] | None = None,
        flows_only: bool = False,
        direct: frozenset[Hop] = frozenset(),
    ) -> None:
        """
        Send ``request`` to ``targets``: all at once (forking), or with
        ``failover`` one at a time, the next when one fails (the servers
        RFC 3263 found for one destination).  ``branches`` numbers each
        target's branch instead: targets of one branch are tried one at a
        time, the branches at once (the flows of one phone instance).
        ``direct``: the hops that are phones served elsewhere.
        """
        if transaction.state not in (State.TRYING, State.PROCEEDING):
            return  # already answered (a CANCEL raced the lookup)
        if not targets:
            self._answer(transaction, 480, "Temporarily Unavailable")
            return
        routed = self._media_forwarding(transaction, request, targets)
        if routed is None:
            return
        self._forget_when_ended(transaction)
        context = ResponseContext(
            transaction,
            self.clock,
            self.transactions,
            self._respond,
            finished=partial(self._drop_context, transaction),
        )
        context.flows_only = flows_only
        self._contexts[transaction] = context
        outgoing: list[tuple[Request, Hop]] = []
        for target_uri, hop, routes in routed[:MAX_BRANCHES]:
            copy = request.copy()
            for route in reversed(routes):
                copy.headers.prepend("Route", route)
            self._prepare(
                copy,
                target_uri,
                hop,
                request,
                arrived_over=transaction.source.transport,
                direct=hop in direct,
            )
            outgoing.append((copy, hop))
        if failover:
            context.fork_with_failover([outgoing])
        elif branches is not None:
            grouped: dict[int, list[tuple[Request, Hop]]] = {}
            for number, sent in zip(branches, outgoing):
                grouped.setdefault(number, []).append(sent)
            context.fork_with_failover(list(grouped.values()))
        else:
            context.fork(outgoing)
        self.log.debug(
            "forked {method} to {count} target(s)", method=request.method, count=len(outgoing)
        )

    # -- the media relay hook ----------------------------------------------------

    def _media_forwarding(
        self, transaction: ServerTransaction, request: Request, targets: list[tuple[URI, Hop]]
    ) -> list[tuple[URI, Hop, list[str]]] | None:
        """
        Let the media relay rewrite the body every copy will carry
        (:mod:`p2psip.sip.media_hook`), and send the copies through another
        super-node's relay when it asks for one; None when it refused the
        request and we answered it.

        Through another relay, each copy goes to that super-node with a
        Route naming it, and a copy for a phone served here comes back
        along a second Route naming us (the relay must see both ways).
        """
        plain: list[tuple[URI, Hop, list[str]]] = [(uri, hop, []) for uri, hop in targets]
        if self.media is None:
            return plain
        try:
            body = self.media.request_forwarding(request, transaction.source, targets)
        except SipParseError as e:
            self._answer(transaction, e.status, e.reason)
            return None
        if body is not None:
            request.body = body
        detour = self.media.detour(request)
        if detour is None:
            return plain
        relay_route, relay_hop = detour
        back = self._record_route(relay_hop.transport)
        return [
            (uri, relay_hop, [relay_route] if _names_super_node(uri) else [relay_route, back])
            for uri, _ in targets
        ]

    def _cancel_received(self, transaction: ServerTransaction) -> None:
        """RFC 3261 s16.10: answer the CANCEL and cancel every pending branch."""
        invite = self.transactions.find_cancelled(transaction.request)
        if invite is None:
            self._answer(transaction, 481, "Call/Transaction Does Not Exist")
            return
        self._answer(transaction, 200, "OK")
        if self.media is not None:
            self.media.call_cancelled(invite.request)
        context = self._contexts.get(invite)
        if context is None:
            # Still looking the user up: no branch exists yet.
            if invite.state is State.PROCEEDING:
                self._answer(invite, 487, "Request Terminated")
            return
        context.cancel()

    def _answer(
        self,
        transaction: ServerTransaction,
        status: int,
        reason: str,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        try:
            response = make_response(transaction.request, status, reason, to_tag=_new_tag())
        except SipParseError:
            response = make_response(transaction.request, status, reason)
        for name, value in headers:
            response.headers.add(name, value)
        self._respond(transaction, response)

    def _respond(self, transaction: ServerTransaction, response: Response) -> None:
        """
        Send a response upstream.

        The first final one is counted (and logged, for INVITE); for an
        initial INVITE the call set-up observers hear of the first response
        after 100 Trying and of the first final one.
        """
        sendable = transaction.state in (State.TRYING, State.PROCEEDING)
        if self.media is not None and response.status > 100:
            # Every 2xx of a forked INVITE goes up, even after the first.
            self.media.response_forwarding(response)
        transaction.respond(response)
        if not sendable:
            return  # dropped by the transaction, or a 2xx retransmission
        timing = self._invite_started.get(transaction)
        if timing is not None and timing.initial and response.status > 100:
            self._call_milestones(timing, response.status)
        if response.status < 200:
            return
        self._final_for_routed(transaction, response.status)
        request = transaction.request
        method = request.method if request.method in COUNTED_METHODS else "other"
        self.outcomes[(method, response.status)] += 1
        self.summary.note(method, response.status)
        timing = self._invite_started.pop(transaction, None)
        if timing is None:
            return
        if timing.initial:
            self.call_outcomes[_call_outcome(response.status)] += 1
        uri = request.uri
        aor = uri.address_of_record() if isinstance(uri, SipURI) and uri.user is not None else "?"
        # One line per call only at debug level: at info level the summary
        # says how many calls ended how, once a minute (p2psip.sip.request_log).
        self.log.debug(
            "INVITE {aor} from {source}: {status} {reason} after {elapsed_ms:.1f} ms",
            aor=blur_aor(aor),
            source=blur_flow(transaction.source),
            status=response.status,
            reason=response.reason,
            elapsed_ms=(self.clock.seconds() - timing.started) * 1000.0,
        )

    def _call_milestones(self, timing: _InviteTiming, status: int) -> None:
        seconds = self.clock.seconds() - timing.started
        if not timing.first_response_sent:
            timing.first_response_sent = True
            for observer in list(self.call_setup_observers):
                observer.first_response_sent(status, seconds)
        if status >= 200:
            for observer in list(self.call_setup_observers):
                observer.final_response_sent(status, seconds)

    def calls(self) -> dict[str, int]:
        """Calls through this proxy for /status: being set up now, and how the others ended."""
        in_progress = sum(1 for timing in self._invite_started.values() if timing.initial)
        return {
            "in_progress": in_progress,
            **{outcome: self.call_outcomes[outcome] for outcome in CALL_OUTCOMES},
        }

    def metrics(self) -> dict[str, object]:
        """Counters for /status: final responses by method and status, requests in progress."""
        by_method: dict[str, dict[str, int]] = {}
        for (method, status), count in sorted(self.outcomes.items()):
            by_method.setdefault(method, {})[str(status)] = count
        return {"final_responses": by_method, "requests_in_progress": self.pending_requests}

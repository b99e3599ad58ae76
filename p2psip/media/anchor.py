"""
Which calls a super-node relays, and the SDP rewriting that sends them
through its relay: the proxy's :class:`~p2psip.sip.media_hook.MediaHook`.

The policy (``media-relay``) is one of:

* ``never``: bodies pass untouched;
* ``nat-only`` (the default when a relay is configured): relay a call when
  a phone this super-node serves shows it is behind a NAT: the caller's
  top Via was stamped with a ``received`` or ``rport`` other than its
  sent-by (RFC 3581), or its SDP names a private address; the callee's
  registration flow is not the address its Contact names (the registrar
  reaches it through the NAT), or that Contact is a private address;
* ``always``: relay every call with a phone served here.

*Which super-node relays*: each super-node anchors the media of the phones
it serves itself, the caller's super-node for the caller (it sees the
INVITE arrive from the phone), the callee's super-node for the callee (it
delivers the INVITE to a phone registered there).  That super-node is the
one that knows the phone's real signalling address, which is what
latching needs to refuse strangers, and whose operator chose the policy
for those phones.  When both parties are behind NATs under ``nat-only``,
or both super-nodes say ``always``, both relay: the media crosses two
relays, each owning the leg towards its own phone.  A request that
arrives from another super-node (its Request-URI names this node with
``p2psip-node``) has no caller here, so only the callee's side is judged.

The decision is made once, on the INVITE that starts the call (even one
without SDP: a late offer comes in the 2xx and the answer in the ACK).
From then on every SDP of the dialog is rewritten by whose it is (the
caller's, in requests whose From tag is the caller's and in responses to
the callee's requests; the callee's otherwise): INVITE offers, 183 early
media, 2xx answers, re-INVITE, UPDATE, PRACK and ACK.  The session ends
on BYE, on CANCEL or a final failure of the first INVITE before it was
answered, or when the relay finds it idle.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence

from twisted.internet.interfaces import IReactorTime

from p2psip.media.directory import RelayDirectory
from p2psip.media.sdp import (
    SdpError,
    is_private_address,
    parse_sdp,
    refuse_unrelayable,
    rewrite_sdp,
)
from p2psip.media.sessions import MediaSession, RelaySessions, SessionRefused
from p2psip.sip.errors import SipParseError
from p2psip.sip.message import Request, Response
from p2psip.sip.proxy import NODE_PARAMETER
from p2psip.sip.transaction import Hop
from p2psip.sip.uri import URI, SipURI
from p2psip.util.log_throttle import LogThrottle
from p2psip.util.logs import Logger

#: The header a super-node without free relay ports adds to send a call
#: through another super-node's relay; its value names that node (hex Node-ID).
RELAY_HEADER = "P-P2PSIP-Media-Relay"
#: Methods whose requests and responses carry offers and answers (RFC 3264, 3311, 3262).
SDP_METHODS = frozenset({"INVITE", "UPDATE", "PRACK", "ACK"})


class MediaPolicy(enum.Enum):
    """``media-relay``: which calls go through this super-node's relay."""

    NEVER = "never"
    NAT_ONLY = "nat-only"
    ALWAYS = "always"


def _is_sdp(message: Request | Response) -> bool:
    content_type = message.content_type
    return (
        bool(message.body)
        and content_type is not None
        and content_type.split(";")[0].strip().lower() == "application/sdp"
    )


def _names_super_node(uri: URI) -> bool:
    return isinstance(uri, SipURI) and NODE_PARAMETER in uri.parameters


def via_shows_nat(request: Request) -> bool:
    """The sender's Via was stamped with another address or port than it claims (RFC 3581)."""
    via = request.via
    received = via.received
    if received is not None and received.lower().strip("[]") != via.host.lower().strip("[]"):
        return True
    rport = via.rport
    return rport is not None and rport != (via.port or 5060)


def _is_loopback_address(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def target_shows_nat(uri: URI, hop: Hop) -> bool:
    """A phone reached through a NAT: its registration flow is not its Contact, or the Contact is private."""
    if not isinstance(uri, SipURI):
        return False
    host = uri.host.lower().strip("[]")
    if is_private_address(host):
        return True
    return (hop.host.lower().strip("[]"), hop.port) != (host, uri.port or 5060)


class MediaAnchor:
    """
    The proxy's media hook: decides per call, rewrites SDP, ends sessions.

    ``address`` is the relay address written into rewritten SDP (IPv4).
    """

    log = Logger()

    def __init__(
        self,
        sessions: RelaySessions,
        policy: MediaPolicy,
        address: str,
        clock: IReactorTime,
        *,
        local_node_id: int | None = None,
        directory: RelayDirectory | None = None,
        peer_transport: str = "UDP",
    ) -> None:
        self.sessions = sessions
        self.policy = policy
        self.address = address
        #: A relay on loopback (a development or test host) may send to loopback media addresses.
        self._serves_loopback = _is_loopback_address(address)
        self.clock = clock
        self.local_node_id = local_node_id
        #: Other super-nodes' relays, for calls this one has no ports for.
        self.directory = directory
        self.peer_transport = peer_transport.upper()
        #: Calls sent through another relay, by Call-ID: its Route value and address.
        self._detours: dict[str, tuple[str, Hop]] = {}
        #: Calls sent through another super-node's relay (since start).
        self.detoured = 0
        self._refusal_log = LogThrottle(clock)
        #: SDP bodies in responses and ACKs we could not read (forwarded untouched).
        self.unreadable_sdp = 0

    # -- MediaHook ---------------------------------------------------------------

    def request_forwarding(
        self, request: Request, source: Hop, targets: Sequence[tuple[URI, Hop]]
    ) -> bytes | None:
        key = request.call_id
        if request.method == "BYE":
            self._end(key, "bye")
            return None
        session = self.sessions.get(key)
        if session is None and request.method == "INVITE" and request.to_tag is None:
            session = self._maybe_start(request, source, targets)
        if session is None or request.method not in SDP_METHODS or not _is_sdp(request):
            return None
        try:
            return self._rewrite(session, request.from_tag == session.caller_tag, request.body)
        except SdpError as e:
            if request.to_tag is None:
                self._end(key, "failed")
            phrase = "Not Acceptable Here" if e.status == 488 else "Bad Request"
            raise SipParseError(f"{phrase} ({e.reason})", e.status) from None
        except SessionRefused as e:
            if request.to_tag is None:
                self._end(key, "failed")
                if self._plan_detour(request):
                    return None
            self._refused(str(e))
            raise SipParseError("Service Unavailable (no media relay port free)", 503) from None

    def detour(self, request: Request) -> tuple[str, Hop] | None:
        return self._detours.pop(request.call_id, None)

    def response_forwarding(self, response: Response) -> None:
        key = response.call_id
        session = self.sessions.get(key)
        method = response.cseq.method
        if session is None or method not in SDP_METHODS:
            return
        if response.status >= 300:
            # A failed re-INVITE leaves the call as it was; a failed first one ends it.
            if method == "INVITE" and not session.answered:
                self._end(key, "failed")
            return
        if 200 <= response.status < 300 and method == "INVITE":
            session.answered = True
        if response.status > 100 and _is_sdp(response):
            # The responder is the party that did not send the request.
            from_caller = response.from_tag != session.caller_tag
            self._rewrite_in_place(session, from_caller, response)

    def ack_forwarding(self, ack: Request) -> None:
        session = self.sessions.get(ack.call_id)
        if session is not None and _is_sdp(ack):
            self._rewrite_in_place(session, ack.from_tag == session.caller_tag, ack)

    def call_cancelled(self, invite: Request) -> None:
        session = self.sessions.get(invite.call_id)
        if session is not None and not session.answered:
            self._end(invite.call_id, "cancel")

    # -- decisions ---------------------------------------------------------------

    def _maybe_start(
        self, request: Request, source: Hop, targets: Sequence[tuple[URI, Hop]]
    ) -> MediaSession | None:
        if self.policy is MediaPolicy.NEVER:
            return None
        requested = request.headers.get(RELAY_HEADER)
        if requested is not None:
            # A super-node without ports of its own sends the call here
            # (or, on its way back, to the phone it serves): only the named
            # node relays it.
            if (
                self.local_node_id is None
                or requested.strip().lower() != f"{self.local_node_id:032x}"
            ):
                return None
            return self._start(request, source, None, None)
        caller_here = not _names_super_node(request.uri)
        phones = [(uri, hop) for uri, hop in targets if not _names_super_node(uri)]
        callee_here = bool(phones)
        if not caller_here and not callee_here:
            return None
        if self.policy is MediaPolicy.NAT_ONLY:
            caller_nat = caller_here and (via_shows_nat(request) or self._sdp_private(request))
            callee_nat = any(target_shows_nat(uri, hop) for uri, hop in phones)
            if not caller_nat and not callee_nat:
                return None
        pool = self.sessions.pool
        if pool.capacity - pool.in_use < 2 and self._plan_detour(request):
            return None
        return self._start(
            request,
            source,
            source.host if caller_here else None,
            phones[0][1].host if callee_here else None,
        )

    def _start(
        self, request: Request, source: Hop, caller_host: str | None, callee_host: str | None
    ) -> MediaSession:
        tag = request.from_tag or ""
        try:
            session = self.sessions.create(
                request.call_id, tag, source.host.lower(), self.clock.seconds()
            )
        except SessionRefused as e:
            self._refused(str(e))
            raise SipParseError("Service Unavailable (no media relay port free)", 503) from None
        session.signalling = (caller_host, callee_host)
        self.log.debug("relaying the media of a call ({policy})", policy=self.policy.value)
        return session

    def _plan_detour(self, request: Request) -> bool:
        """
        Send the call through another super-node's relay, found in the
        overlay (:mod:`p2psip.media.directory`): mark the request for it and
        keep its Route for :meth:`detour`.  False when none is known.
        """
        if self.directory is None:
            return False
        for entry, (host, port) in self.directory.reachable():
            node = f"{entry.node_id:032x}"
            transport = (
                "" if self.peer_transport == "UDP" else f";transport={self.peer_transport.lower()}"
            )
            route = f"<sip:{host}:{port}{transport};lr;{NODE_PARAMETER}={node}>"
            request.headers.set(RELAY_HEADER, node)
            self._detours[request.call_id] = (route, Hop(self.peer_transport, host, port))
            self.detoured += 1
            self.log.info(
                "no relay ports free here: relaying a call through super-node {node}",
                node=node[:8],
            )
            return True
        return False

    @staticmethod
    def _sdp_private(request: Request) -> bool:
        if not _is_sdp(request):
            return False
        try:
            description = parse_sdp(request.body)
        except SdpError:
            return False
        return any(
            (destination := description.rtp_destination(stream)) is not None
            and is_private_address(destination[0])
            for stream in description.streams
        )

    # -- rewriting ---------------------------------------------------------------

    def _rewrite(self, session: MediaSession, from_caller: bool, body: bytes) -> bytes:
        description = parse_sdp(body)
        refuse_unrelayable(description)  # before sdp_from points the legs at it
        caller_host, callee_host = session.signalling
        ports = self.sessions.sdp_from(
            session,
            from_caller,
            description,
            caller_host if from_caller else callee_host,
            loopback_media=self._serves_loopback,
        )
        return rewrite_sdp(description, self.address, ports)

    def _rewrite_in_place(
        self, session: MediaSession, from_caller: bool, message: Request | Response
    ) -> None:
        """A response's or an ACK's SDP, which cannot be refused: on failure it passes as it was."""
        try:
            message.body = self._rewrite(session, from_caller, message.body)
        except (SdpError, SessionRefused, SipParseError) as e:
            self.unreadable_sdp += 1
            self.log.debug("left an SDP body unrelayed: {why}", why=str(e))

    def _end(self, key: str, why: str) -> None:
        self.sessions.end(key, why)

    def _refused(self, why: str) -> None:
        held_back = self._refusal_log.admit("refused")
        if held_back is not None:
            self.log.warn(
                "refused {count} call(s) the media relay could not take: {why}; widen "
                "media-ports or check what else binds them",
                count=held_back + 1,
                why=why,
            )

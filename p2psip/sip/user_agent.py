"""
A minimal SIP user agent (RFC 3261 sections 8, 12-15, 22.2) for the demo and tests.

It registers one AOR at a super-node (answering a Digest challenge once),
places calls (INVITE, answering one 407 or 401 challenge with its
credentials, then ACK and BYE along the dialog's route set) and
answers calls at once with 200 OK.  Its SDP names ``media_port`` (the
discard port 9 without one) and it keeps the other side's SDP (the
dialog's ``remote_sdp``, the UAS's ``offers_received``) so that whoever
runs it can send and count RTP; it sends none itself.  No re-INVITE, no forking
beyond taking the first 2xx: just enough to exercise a super-node end to
end without an external tool.  It is the transaction user of its own
:class:`~p2psip.sip.transaction.TransactionLayer` over a
:class:`~p2psip.sip.transport.SipTransport` the caller has started.

Digest credentials (RFC 7616 section 3.4) are built as::

    Authorization: Digest username="alice", realm="R", nonce="N",
        uri="sip:example.org", response="<hex>", algorithm=SHA-256,
        cnonce="C", nc=00000001, qop=auth, opaque="O"
"""

from __future__ import annotations

import os

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from p2psip.sip.digest import (
    ALGORITHMS,
    DigestParseError,
    compute_ha1,
    compute_response,
    parse_digest_parameters,
)
from p2psip.sip.message import NameAddress, Request, Response, make_request, make_response
from p2psip.sip.transaction import Hop, ServerTransaction, TransactionLayer
from p2psip.sip.transport import SipTransport
from p2psip.sip.uri import SipURI, parse_uri
from p2psip.util.logs import Logger

#: One PCMU stream at ``port`` (9, discard, for calls that carry no media).
_SDP_TEMPLATE = (
    "v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0\r\n"
)


class CallFailed(Exception):
    """A request of the user agent ended with an error response (or a timeout)."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"{response.status} {response.reason}")
        self.response = response


@define(eq=False)
class Dialog:
    """What a UAC keeps about an established call to send ACK and BYE (RFC 3261 s12.1.2)."""

    call_id: str
    local: NameAddress
    remote: NameAddress
    remote_target: SipURI
    route_set: list[NameAddress]
    cseq: int
    setup_seconds: float = 0.0
    #: The SDP of the 2xx (the answer): where the callee wants its media.
    remote_sdp: bytes = b""


def _random_token() -> str:
    return os.urandom(6).hex()


@define(eq=False)
class _Counter:
    value: int = field(default=1)

    def next(self) -> int:
        self.value += 1
        return self.value


class SimpleUserAgent:
    """
    One AOR's phone: register, call, answer.

    ``outbound`` is the super-node every request is sent to (the outbound
    proxy, RFC 3261 s8.1.2); ``password`` None means no credentials.
    """

    log = Logger()

    def __init__(
        self,
        aor: str,
        password: str | None,
        transport: SipTransport,
        outbound: Hop,
        clock: IReactorTime,
        contact: SipURI | None = None,
        media_port: int | None = None,
    ) -> None:
        uri = parse_uri(aor)
        if not isinstance(uri, SipURI) or uri.user is None:
            raise ValueError(f"{aor!r} is not a sip: AOR with a user part")
        self.aor = uri
        self.password = password
        self.transport = transport
        self.outbound = outbound
        self.clock = clock
        #: Registered instead of our own listener (``p2psip register --contact``).
        self.contact_override = contact
        #: The RTP port our SDP names (9, discard, when None).
        self.media_port = media_port
        #: The SDP of every INVITE answered, oldest first.
        self.offers_received: list[bytes] = []
        self.layer = TransactionLayer(transport, self, clock)
        transport.receiver = self.layer
        self.calls_answered = 0
        self.byes_received = 0
        self._register_call_id = f"{_random_token()}@{self._local_hop().host}"
        self._register_cseq = _Counter(0)

    # -- addresses -------------------------------------------------------------

    def _local_hop(self) -> Hop:
        hop = self.transport.local_hop(self.outbound.transport)
        if hop is None:
            raise ValueError(
                f"the user agent's transport has no {self.outbound.transport} listener"
            )
        return hop

    @property
    def contact(self) -> NameAddress:
        """Where this UA is reached: its own listener, unless told another contact."""
        if self.contact_override is not None:
            return NameAddress(self.contact_override)
        hop = self._local_hop()
        return NameAddress(SipURI(hop.host, self.aor.user, port=hop.port))

    def _sdp(self, host: str) -> bytes:
        return _SDP_TEMPLATE.format(host=host, port=self.media_port or 9).encode()

    def _send(self, request: Request, target: Hop) -> Deferred[Response]:
        """Send in a client transaction; fires with the final response."""
        final: Deferred[Response] = Deferred()

        def on_response(response: Response) -> None:
            if response.status >= 200 and not final.called:
                final.callback(response)

        self.layer.send_request(request, target, on_response)
        return final

    # -- REGISTER ----------------------------------------------------------------

    def register(self, expires_seconds: int = 600) -> Deferred[Response]:
        """Register the contact; fires with the 200, fails with :class:`CallFailed`."""
        registrar = SipURI(self.aor.host)

        def build(authorization: str | None) -> Request:
            request = make_request(
                "REGISTER",
                registrar,
                via=self.transport.make_via(self.outbound.transport),
                from_=NameAddress(self.aor.copy(), parameters={"tag": _random_token()}),
                to=NameAddress(self.aor.copy()),
                call_id=self._register_call_id,
                cseq_number=self._register_cseq.next(),
                contact=self.contact,
            )
            request.headers.add("Expires", str(expires_seconds))
            if authorization is not None:
                request.headers.add("Authorization", authorization)
            return request

        def answered(response: Response, retried: bool) -> Deferred[Response] | Response:
            if response.status == 401 and not retried and self.password is not None:
                authorization = self._authorization(response, "REGISTER", str(registrar))
                if authorization is not None:
                    return self._send(build(authorization), self.outbound).addCallback(
                        answered, True
                    )
            if response.status != 200:
                raise CallFailed(response)
            return response

        return self._send(build(None), self.outbound).addCallback(answered, False)

    def _authorization(
        self, response: Response, method: str, uri: str, challenge_header: str = "WWW-Authenticate"
    ) -> str | None:
        """Credentials for the first challenge (in ``challenge_header``) whose algorithm we know."""
        assert self.password is not None
        for value in response.headers.get_all(challenge_header):
            scheme, _, rest = value.strip().partition(" ")
            if scheme.lower() != "digest":
                continue
            try:
                challenge = parse_digest_parameters(rest)
            except DigestParseError:
                continue
            algorithm = challenge.get("algorithm", "MD5").upper()
            if algorithm not in ALGORITHMS or "nonce" not in challenge or "realm" not in challenge:
                continue
            username = self.aor.user or ""
            realm, nonce = challenge["realm"], challenge["nonce"]
            ha1 = compute_ha1(algorithm, username, realm, self.password)
            cnonce, nc = _random_token(), "00000001"
            digest = compute_response(algorithm, ha1, nonce, method, uri, "auth", nc, cnonce)
            parts = [
                f'username="{username}"',
                f'realm="{realm}"',
                f'nonce="{nonce}"',
                f'uri="{uri}"',
                f'response="{digest}"',
                f"algorithm={algorithm}",
                f'cnonce="{cnonce}"',
                f"nc={nc}",
                "qop=auth",
            ]
            if "opaque" in challenge:
                parts.append(f'opaque="{challenge["opaque"]}"')
            return "Digest " + ", ".join(parts)
        return None

    # -- calls as UAC ---------------------------------------------------------------

    def call(self, callee_aor: str) -> Deferred[Dialog]:
        """
        INVITE ``callee_aor`` through the outbound super-node and ACK the 2xx.

        Fires with the :class:`Dialog` (``setup_seconds`` is INVITE to 2xx),
        fails with :class:`CallFailed` for an error response.
        """
        target = parse_uri(callee_aor)
        local = NameAddress(self.aor.copy(), parameters={"tag": _random_token()})
        call_id = f"{_random_token()}@{self._local_hop().host}"
        hop = self._local_hop()
        cseq = _Counter(0)

        def build(credentials: tuple[str, str] | None) -> Request:
            invite = make_request(
                "INVITE",
                target,
                via=self.transport.make_via(self.outbound.transport),
                from_=local,
                to=NameAddress(target.copy()),
                call_id=call_id,
                cseq_number=cseq.next(),
                contact=self.contact,
                body=self._sdp(hop.host),
                content_type="application/sdp",
            )
            if credentials is not None:
                invite.headers.add(*credentials)
            return invite

        started = self.clock.seconds()

        def challenged(response: Response, retried: bool) -> Deferred[Response] | Response:
            """
            Answer one 407 (a proxy: Proxy-Authorization) or 401 (the callee:
            Authorization) with our credentials, in a new INVITE of the same
            call (same Call-ID and From tag, next CSeq, s22.2); the client
            transaction has already ACKed the challenge.
            """
            if retried or self.password is None or response.status not in (401, 407):
                return response
            proxy = response.status == 407
            authorization = self._authorization(
                response,
                "INVITE",
                str(target),
                "Proxy-Authenticate" if proxy else "WWW-Authenticate",
            )
            if authorization is None:
                return response
            name = "Proxy-Authorization" if proxy else "Authorization"
            return self._send(build((name, authorization)), self.outbound).addCallback(
                challenged, True
            )

        def answered(response: Response) -> Dialog:
            if not 200 <= response.status < 300:
                raise CallFailed(response)
            contacts = response.contacts
            remote_target = contacts[0].uri if contacts else target
            if not isinstance(remote_target, SipURI):
                raise CallFailed(response)
            dialog = Dialog(
                call_id=call_id,
                local=local,
                remote=response.to,
                remote_target=remote_target,
                route_set=list(reversed(response.record_routes)),
                cseq=cseq.value,
                setup_seconds=self.clock.seconds() - started,
                remote_sdp=response.body,
            )
            self._send_ack(dialog)
            return dialog

        final: Deferred[Response] = self._send(build(None), self.outbound).addCallback(
            challenged, False
        )
        return final.addCallback(answered)

    def _in_dialog(self, dialog: Dialog, method: str, cseq: int) -> tuple[Request, Hop]:
        request = make_request(
            method,
            dialog.remote_target.copy(),
            via=self.transport.make_via(self.outbound.transport),
            from_=dialog.local,
            to=dialog.remote,
            call_id=dialog.call_id,
            cseq_number=cseq,
            routes=dialog.route_set,
        )
        first = dialog.route_set[0].uri if dialog.route_set else dialog.remote_target
        assert isinstance(first, SipURI)
        port = first.port or 5060
        return request, Hop(self.outbound.transport, first.host.strip("[]"), port)

    def _send_ack(self, dialog: Dialog) -> None:
        ack, hop = self._in_dialog(dialog, "ACK", dialog.cseq)
        self.layer.send_request(ack, hop, lambda response: None)

    def hang_up(self, dialog: Dialog) -> Deferred[Response]:
        """BYE along the route set; fires with the 200, fails with :class:`CallFailed`."""
        dialog.cseq += 1
        bye, hop = self._in_dialog(dialog, "BYE", dialog.cseq)

        def answered(response: Response) -> Response:
            if response.status != 200:
                raise CallFailed(response)
            return response

        return self._send(bye, hop).addCallback(answered)

    # -- TransactionUser: calls as UAS ------------------------------------------------

    def request_received(self, transaction: ServerTransaction) -> None:
        request = transaction.request
        if request.method == "INVITE":
            ok = make_response(request, 200, to_tag=_random_token())
            ok.headers.add("Contact", str(self.contact))
            for record_route in request.headers.get_all("Record-Route"):
                ok.headers.add("Record-Route", record_route)
            hop = self._local_hop()
            ok.body = self._sdp(hop.host)
            self.offers_received.append(request.body)
            ok.headers.add("Content-Type", "application/sdp")
            self.calls_answered += 1
            transaction.respond(ok)
            return
        if request.method == "BYE":
            self.byes_received += 1
        transaction.respond(make_response(request, 200, to_tag=_random_token()))

    def ack_received(self, request: Request, source: Hop) -> None:
        pass

    def stray_response_received(self, response: Response, source: Hop) -> None:
        pass

    def stop(self) -> None:
        """End every transaction (their timers) so a test or the demo leaves a clean reactor."""
        for transaction in list(self.layer.server_transactions.values()) + list(
            self.layer.client_transactions.values()
        ):
            transaction._terminate()


__all__ = ["SimpleUserAgent", "Dialog", "CallFailed"]

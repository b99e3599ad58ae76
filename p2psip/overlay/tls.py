"""
Mutually authenticated TLS under every overlay link (RFC 6940 s6.6 and s13).

RFC 6940 runs its links over TLS with a certificate at both ends: a node
knows who is at the other end of a link before the first message arrives,
and nobody can read, inject or alter messages on the way.  Here:

* Both ends present the node certificate of their :class:`NodeIdentity`
  and require one from the other end (no certificate, no handshake).
* The other end's certificate is judged by the node's
  :class:`~p2psip.overlay.certificates.TrustPolicy`, the one that also
  judges message signatures: with ``OverlayRootTrust`` it must come from the
  overlay's root, be valid now and name a Node-ID of this overlay; with
  ``SelfSignedTrust`` (``--insecure`` rings) the Node-ID is the hash of its
  key.  So TLS is used in both modes, through one code path.  OpenSSL's own
  chain building is not used: the overlay root is the only anchor, and the
  policy checks the leaf against it.
* When the node dials a peer it expects (an Attach answer's candidate, or a
  mediated connection to a Node-ID), the certificate must name that Node-ID
  among its ``reload://`` URIs, compared as numbers after the policy parsed
  them; anything else fails the handshake.
* The Node-ID the certificate proves is the link's peer from the moment the
  handshake completes (:meth:`LinkSecurity.peer_of`); messages on the link
  cannot change it later.
* A refused certificate is logged as a warning, at most once a minute per
  source address (:class:`~p2psip.util.log_throttle.LogThrottle`), with
  RFC 6940's error code for it (Error_Forbidden).

TLS runs in memory (Twisted's ``TLSMemoryBIOFactory``), so it wraps any
stream: a TCP connection to a listener, a socket the mediator punched, or
the mediator's relay.  The framed-message layer above sees plain bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from p2psip.overlay.certificates import CertificateRefused, CertifiedIdentity, TrustPolicy
from p2psip.overlay.identity import MAX_CERTIFICATE_BYTES, NodeIdentity
from p2psip.overlay.message import ErrorCode
from p2psip.util.ids import id_hex
from p2psip.util.log_throttle import LOG_INTERVAL_SECONDS, LogThrottle
from p2psip.util.logs import Logger

#: How long a new connection may take to finish its TLS handshake; a peer
#: that opens a connection and says nothing holds a socket no longer.
HANDSHAKE_TIMEOUT_SECONDS = 10.0


class KeyLogFile:
    """
    Appends TLS secrets to a file in the NSS key log format, which
    Wireshark reads (``tls.keylog_file``) to decrypt a capture.

    The file is opened (mode 0600, appended to) at the first secret, so
    building a role creates nothing.  Anyone holding the file can read every
    link it covers: for debugging and the wire conformance test only.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._descriptor: int | None = None

    def __call__(self, line: bytes) -> None:
        if self._descriptor is None:
            self._descriptor = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        os.write(self._descriptor, line + b"\n")

    def close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


class LinkRefused(ConnectionError):
    """
    A link's other end did not prove an acceptable identity.

    ``error_code`` is RFC 6940's code for the refusal (s14.9), ``reason``
    the sentence the log shows.
    """

    def __init__(self, reason: str, error_code: ErrorCode = ErrorCode.FORBIDDEN) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_code = error_code

    def __str__(self) -> str:
        return f"{self.reason} (Error_{self.error_code.name.title()})"


@frozen
class AuthenticatedPeer:
    """Who a TLS handshake proved to be at a link's other end."""

    #: The Node-ID the link is filed under: the one we dialled, else the
    #: certificate's first.
    node_id: int
    identity: CertifiedIdentity


class _PeerCheck:
    """One connection's verdict on the other end's certificate, kept for its TLS protocol."""

    def __init__(
        self, security: LinkSecurity, tls: TLSMemoryBIOProtocol, expected: int | None
    ) -> None:
        self.security = security
        self.tls = tls
        self.expected = expected
        self.examined: bytes | None = None
        self.peer: AuthenticatedPeer | None = None
        self.refusal: LinkRefused | None = None

    def source(self) -> str:
        """The other end's address, for the log (the host only, so a flood shares a line)."""
        transport = self.tls.transport
        peer = transport.getPeer() if transport is not None else None
        return str(getattr(peer, "host", None) or peer or "?")

    def examine(self, certificate: x509.Certificate, der: bytes) -> bool:
        # OpenSSL asks again for every problem it finds with the same leaf
        # (no issuer in its store, self-signed, expired): decide once.
        if der == self.examined:
            return self.peer is not None
        self.examined = der
        try:
            self.peer = self.security.authenticate(certificate, der, self.expected)
        except LinkRefused as refusal:
            self.peer, self.refusal = None, refusal
            self.security.note(self.source(), f"refused: {refusal}")
            return False
        return True


class LinkSecurity:
    """
    The node's TLS credentials and the trust its peers' certificates are judged by.

    One object per node: it builds the two OpenSSL contexts once (client and
    server; both present our certificate and demand the peer's) and wraps
    factories and endpoints so that what they carry runs over TLS.

    :param identity: our key and certificate.
    :param trust: the policy the node's message signatures are checked with.
    :param clock: schedules the TLS layer's write coalescing and the links'
        handshake timeouts.
    :param key_log: told every TLS secret in NSS key log format (one line,
        no newline), so a capture can be decrypted; only for wire debugging
        and conformance tests.
    """

    log = Logger()

    def __init__(
        self,
        identity: NodeIdentity,
        trust: TrustPolicy,
        clock: IReactorTime,
        *,
        handshake_timeout_seconds: float = HANDSHAKE_TIMEOUT_SECONDS,
        key_log: Callable[[bytes], None] | None = None,
    ) -> None:
        self.identity = identity
        self.trust = trust
        self.clock = clock
        self.handshake_timeout_seconds = handshake_timeout_seconds
        self.key_log = key_log
        self._refusal_log = LogThrottle(clock)
        #: The certificate check of every TLS connection still alive.
        self._checks: WeakKeyDictionary[TLSMemoryBIOProtocol, _PeerCheck] = WeakKeyDictionary()
        self._client_context = self._context(SSL.TLS_CLIENT_METHOD)
        self._server_context = self._context(SSL.TLS_SERVER_METHOD)

    # -- the decision, without sockets -------------------------------------

    def authenticate(
        self, certificate: x509.Certificate, der: bytes, expected: int | None
    ) -> AuthenticatedPeer:
        """
        What ``certificate`` (the other end's) proves, for a link dialled to
        ``expected`` (None: inbound, or a bootstrap endpoint).

        :raises LinkRefused: the certificate is too large, its key is not
            ECDSA P-256 (what every RELOAD signature here uses), the trust
            policy refuses it, or it does not name ``expected``.
        """
        if len(der) > MAX_CERTIFICATE_BYTES:
            raise LinkRefused(f"certificate of {len(der)} bytes exceeds {MAX_CERTIFICATE_BYTES}")
        try:
            key = certificate.public_key()
        except Exception as e:  # hostile key encodings raise the parser's own errors
            raise LinkRefused(f"unreadable certificate key: {type(e).__name__}") from e
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise LinkRefused("certificate key is not ECDSA P-256")
        try:
            identity = self.trust.identify(certificate)
        except CertificateRefused as e:
            raise LinkRefused(f"untrusted certificate: {e}") from e
        except Exception as e:  # the parser's own errors, from hostile extensions
            raise LinkRefused(f"unreadable certificate: {type(e).__name__}") from e
        if expected is None:
            return AuthenticatedPeer(identity.node_id, identity)
        if expected not in identity.node_ids:
            raise LinkRefused(
                f"certificate proves Node-ID {id_hex(identity.node_id)}, "
                f"not {id_hex(expected)} that was dialled"
            )
        return AuthenticatedPeer(expected, identity)

    def note(self, source: str, what: str) -> None:
        """Warn about a refused or broken link, at most once a minute per source."""
        held_back = self._refusal_log.admit(source)
        if held_back is None:
            return
        self.log.warn(
            "overlay link with {source}: {why}{held_back_note}",
            source=source,
            why=what,
            held_back=held_back,
            held_back_note=(
                f" ({held_back} more from there in the last {LOG_INTERVAL_SECONDS:g}s "
                "were not logged)"
                if held_back
                else ""
            ),
        )

    # -- OpenSSL ------------------------------------------------------------

    def _context(self, method: int) -> SSL.Context:
        context = SSL.Context(method)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        # No compression (CRIME), no session tickets or cache: a resumed
        # session would skip the certificate check the link's identity
        # comes from.
        context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET)
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        # Most links are idle most of the time: free their record buffers meanwhile.
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        context.use_certificate(x509.load_der_x509_certificate(self.identity.certificate_der))
        context.use_privatekey(self.identity.private_key)
        context.check_privatekey()
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        if self.key_log is not None:
            key_log = self.key_log
            context.set_keylog_callback(lambda connection, line: key_log(line))
        return context

    def _connection(
        self, context: SSL.Context, tls: TLSMemoryBIOProtocol, expected: int | None
    ) -> SSL.Connection:
        # Twisted keeps the TLS protocol as the connection's app data; the
        # check hangs off that protocol for as long as it lives.
        self._checks[tls] = _PeerCheck(self, tls, expected)
        return SSL.Connection(context, None)

    def _verify(
        self, connection: SSL.Connection, certificate: Any, error_number: int, depth: int, ok: int
    ) -> bool:
        """
        OpenSSL's verify callback: the connection's :class:`_PeerCheck` decides on the leaf.

        Certificates above the leaf are not consulted (the policy checks the
        leaf against the overlay root itself), and OpenSSL's complaints about
        the leaf (no local issuer, self-signed) are replaced by the policy's
        verdict.  Never raises: an exception here would surface from the
        handshake as something other than a TLS error.
        """
        if depth > 0:
            return True
        check = self._checks.get(connection.get_app_data())
        if check is None:
            return False
        try:
            leaf = certificate.to_cryptography()
            return check.examine(leaf, leaf.public_bytes(Encoding.DER))
        except Exception:
            self.log.failure("while checking an overlay peer's certificate")
            return False

    def peer_of(self, transport: Any) -> AuthenticatedPeer:
        """
        Who the completed handshake on ``transport`` proved to be at the other end.

        :raises LinkRefused: ``transport`` is not one of this object's TLS
            connections, or its check did not accept the certificate.
        """
        check = self._checks.get(transport) if isinstance(transport, TLSMemoryBIOProtocol) else None
        if check is None:
            raise LinkRefused("the link's transport is not the overlay's TLS")
        if check.peer is None:
            raise check.refusal or LinkRefused("the other end presented no certificate")
        return check.peer

    def refusal_of(self, transport: Any) -> LinkRefused | None:
        """Why ``transport``'s certificate check refused the other end, if it did."""
        check = self._checks.get(transport) if isinstance(transport, TLSMemoryBIOProtocol) else None
        return None if check is None else check.refusal

    # -- wrapping -------------------------------------------------------------

    def client_factory(
        self, wrapped: IProtocolFactory, expected: int | None = None
    ) -> TLSMemoryBIOFactory:
        """``wrapped``'s protocols over TLS, as the side that dials (expecting ``expected``)."""
        return TLSMemoryBIOFactory(_ClientCreator(self, expected), True, wrapped, clock=self.clock)

    def server_factory(self, wrapped: IProtocolFactory) -> TLSMemoryBIOFactory:
        """``wrapped``'s protocols over TLS, as the side that accepts."""
        return TLSMemoryBIOFactory(_ServerCreator(self), False, wrapped, clock=self.clock)

    def client_endpoint(
        self, endpoint: IStreamClientEndpoint, expected: int | None = None
    ) -> IStreamClientEndpoint:
        """``endpoint`` with TLS on top; its ``connect`` fires with the wrapped protocol."""
        return _TLSClientEndpoint(self, endpoint, expected)


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    def __init__(self, security: LinkSecurity, expected: int | None) -> None:
        self.security = security
        self.expected = expected

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        security = self.security
        return security._connection(security._client_context, tlsProtocol, self.expected)


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    def __init__(self, security: LinkSecurity) -> None:
        self.security = security

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        security = self.security
        return security._connection(security._server_context, tlsProtocol, None)


@implementer(IStreamClientEndpoint)
class _TLSClientEndpoint:
    """A client endpoint whose connections run TLS (like ``wrapClientTLS``, on our clock)."""

    def __init__(
        self, security: LinkSecurity, wrapped: IStreamClientEndpoint, expected: int | None
    ) -> None:
        self.security = security
        self.wrapped = wrapped
        self.expected = expected

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        factory = self.security.client_factory(protocolFactory, self.expected)
        connected: Deferred[IProtocol] = self.wrapped.connect(factory)
        return connected.addCallback(unwrapped)


def unwrapped(protocol: Any) -> Any:
    """The application's protocol inside a TLS wrapper (or ``protocol`` itself)."""
    return protocol.wrappedProtocol if isinstance(protocol, TLSMemoryBIOProtocol) else protocol


__all__ = [
    "HANDSHAKE_TIMEOUT_SECONDS",
    "AuthenticatedPeer",
    "KeyLogFile",
    "LinkRefused",
    "LinkSecurity",
    "unwrapped",
]

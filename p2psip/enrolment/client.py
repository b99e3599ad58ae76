"""
The enrolling side (RFC 6940 s11.2 and s11.3): fetch the signed
configuration, then ask for a certificate, over HTTPS, with no trust on
first use.

The peer knows the overlay root before it talks to anyone: either the
root itself (``--ca-cert FILE``, or ``overlay-root.pem`` from an earlier
enrolment) or its fingerprint (``--ca-fingerprint sha256:HEX``, printed by
the bootstrap).

1. ``GET /.well-known/reload-config`` on the enrolment server's host and
   port.  With the root in hand the TLS connection must chain to it.  With
   only a fingerprint the document is fetched over TLS without checking
   the server, and is then authenticated by its content: its
   ``root-cert`` must have the pinned fingerprint and its signature must
   be that root's (:func:`~p2psip.enrolment.configuration.read_configuration`).
   Nothing secret is sent on that connection.
2. ``POST`` the enrolment form to the enrolment URL over TLS that must
   chain to the root and name the URL's host; only this connection
   carries the password.
3. The certificate that comes back must be issued by the root for this
   overlay, for our key, naming the account; a user certificate must name
   the Node-ID of the super-node that asked.

Failures are :class:`EnrolmentFailed` (retrying cannot help: wrong
password, a pin that does not match, a refusal) or
:class:`EnrolmentUnavailable` (the server is not reachable yet, is busy,
or asks us to wait), so a role starting up knows whether to try again.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.error import ConnectError, ConnectionLost, DNSLookupError
from twisted.internet.interfaces import IConsumer, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from p2psip.enrolment.configuration import (
    MAX_DOCUMENT_BYTES,
    ConfigurationRefused,
    OverlayConfiguration,
    declared_roots,
    read_configuration,
)
from p2psip.enrolment.fingerprints import matches_fingerprint, root_fingerprint
from p2psip.enrolment.requests import (
    CERTIFICATE_CONTENT_TYPE,
    CONFIGURATION_PATH,
    FORM_CONTENT_TYPE,
    EnrolmentRequest,
    encode_request,
)
from p2psip.overlay.certificates import (
    CertificateRefused,
    CertifiedIdentity,
    OverlayRootTrust,
    public_key_der,
)
from p2psip.overlay.identity import NodeIdentity
from p2psip.util.ids import id_hex
from p2psip.util.reactor import IRoleReactor

#: Seconds one HTTPS exchange may take, connection included.
REQUEST_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 10.0
#: A certificate is well under this; a larger answer is cut off and refused.
MAX_CERTIFICATE_BYTES = 16 * 1024


class EnrolmentFailed(Exception):
    """Enrolment cannot succeed as asked; ``str(error)`` says why and what to change."""


class EnrolmentUnavailable(Exception):
    """The enrolment server cannot be used right now; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@frozen
class RootPin:
    """The overlay root a peer trusts before enrolling: the certificate or its fingerprint."""

    root_der: bytes | None = None
    fingerprint: bytes | None = None

    def check(self, root_der: bytes) -> None:
        """Raise :class:`EnrolmentFailed` unless ``root_der`` is the pinned root."""
        if self.root_der is not None and root_der != self.root_der:
            raise EnrolmentFailed("the server's overlay root is not the one in the given CA file")
        if self.fingerprint is not None and not matches_fingerprint(root_der, self.fingerprint):
            raise EnrolmentFailed(
                f"the server's overlay root has fingerprint {root_fingerprint(root_der)}, not the "
                "one given with --ca-fingerprint: this is not the overlay's enrolment server, or "
                "the fingerprint is mistyped"
            )


@frozen
class Enrolment:
    """What a successful enrolment brought."""

    certificate_der: bytes
    root_der: bytes
    configuration: OverlayConfiguration
    #: The signed configuration document as fetched.
    document: bytes
    #: The Node-ID and user name the certificate names.
    node_id: int
    user_name: str


def certificate_signing_request(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A DER PKCS#10 request for ``key``; the CA reads only its key (and checks its signature)."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p2psip node")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


# -- TLS policies --------------------------------------------------------------


@implementer(IPolicyForHTTPS)
class _ChainsToRoot:
    """TLS that must chain to the overlay root and name the URL's host."""

    def __init__(self, root_der: bytes) -> None:
        self._root = ssl.Certificate.load(root_der, crypto.FILETYPE_ASN1)

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._root)


@implementer(IOpenSSLClientConnectionCreator)
class _UncheckedTLS:
    """
    TLS that does not check the server: only for fetching the configuration
    document, which is authenticated by its signature and the pinned
    fingerprint instead, and never for anything secret.
    """

    def __init__(self) -> None:
        options = ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
        self._context = options.getContext()

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        return connection


@implementer(IPolicyForHTTPS)
class _SignedContentOnly:
    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return _UncheckedTLS()


# -- HTTP --------------------------------------------------------------------


class _LimitedBody(Protocol):
    """Collects a response body of at most ``limit`` bytes."""

    def __init__(self, limit: int, finished: Deferred[bytes]) -> None:
        self.limit = limit
        self.finished = finished
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.finished.errback(EnrolmentFailed(f"the answer is larger than {self.limit} bytes"))
            # The response's transport is a producer (IPushProducer).
            stop = getattr(self.transport, "stopProducing", None)
            if stop is not None:
                stop()
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


def _https_url(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise EnrolmentFailed(
            f"{url!r} is not an https:// URL; the enrolment server is https://HOST:PORT/enrol, "
            "as the bootstrap logs it at start"
        )
    return parts


def configuration_url(enrol_url: str) -> str:
    """The configuration document's URL on the enrolment server's host and port (s11.2)."""
    parts = _https_url(enrol_url)
    return urllib.parse.urlunsplit(("https", parts.netloc, CONFIGURATION_PATH, "", ""))


def _network_error(failure: Failure, url: str) -> Failure:
    """Connection trouble becomes EnrolmentUnavailable; TLS verification failures are final."""
    if failure.check(EnrolmentFailed, EnrolmentUnavailable):
        return failure
    if failure.check(ResponseFailed):
        reasons = getattr(failure.value, "reasons", [])
        if any(isinstance(r, Failure) and r.check(SSL.Error) for r in reasons):
            detail = "; ".join(str(r.value) for r in reasons if isinstance(r, Failure))
            raise EnrolmentFailed(
                f"TLS with {url} failed ({detail}): its certificate is not from the overlay root "
                "this peer trusts"
            )
    if failure.check(SSL.Error):
        raise EnrolmentFailed(f"TLS with {url} failed: {failure.value}")
    if failure.check(ConnectError, DNSLookupError, ConnectionLost, ResponseFailed, TimeoutError):
        raise EnrolmentUnavailable(f"cannot reach {url}: {failure.getErrorMessage()}")
    return failure


async def _exchange(
    reactor: IRoleReactor,
    policy: IPolicyForHTTPS,
    method: bytes,
    url: str,
    headers: dict[bytes, bytes],
    body: bytes | None,
    limit: int,
) -> tuple[IResponse, bytes]:
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, contextFactory=policy, connectTimeout=CONNECT_TIMEOUT_SECONDS, pool=pool)
    producer = None if body is None else _BytesProducer(body)
    request = agent.request(
        method, url.encode("ascii"), Headers({k: [v] for k, v in headers.items()}), producer
    )
    request.addTimeout(REQUEST_TIMEOUT_SECONDS, reactor)
    try:
        response: IResponse = await request
        finished: Deferred[bytes] = Deferred()
        response.deliverBody(_LimitedBody(limit, finished))
        finished.addTimeout(REQUEST_TIMEOUT_SECONDS, reactor)
        data = await finished
    except Exception:
        _network_error(Failure(), url).raiseException()
        raise AssertionError("unreachable")
    return response, data


@implementer(IBodyProducer)
class _BytesProducer:
    """A request body that is already all in memory."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _header(response: IResponse, name: bytes) -> str:
    values: list[bytes] = response.headers.getRawHeaders(name) or [b""]
    text: str = values[0].decode("latin-1")
    return text.split(";")[0].strip().lower()


async def fetch_configuration(
    reactor: IRoleReactor, enrol_url: str, pin: RootPin, overlay_name: str | None = None
) -> tuple[OverlayConfiguration, bytes]:
    """The verified configuration document of the overlay behind ``enrol_url``, and its bytes."""
    url = configuration_url(enrol_url)
    policy: IPolicyForHTTPS = (
        _ChainsToRoot(pin.root_der) if pin.root_der is not None else _SignedContentOnly()
    )
    response, document = await _exchange(reactor, policy, b"GET", url, {}, None, MAX_DOCUMENT_BYTES)
    if response.code != 200:
        _refused(response, document, url)
    root_der = pin.root_der if pin.root_der is not None else _pinned_root(document, pin, url)
    pin.check(root_der)
    try:
        configuration = read_configuration(document, root_der, reactor.seconds(), overlay_name)
    except ConfigurationRefused as e:
        raise EnrolmentFailed(f"the configuration document from {url} is refused: {e}") from None
    return configuration, document


def _pinned_root(document: bytes, pin: RootPin, url: str) -> bytes:
    """Of the roots a not yet verified document names, the one with the pinned fingerprint."""
    try:
        roots = declared_roots(document)
    except ConfigurationRefused as e:
        raise EnrolmentFailed(f"the configuration document from {url} is refused: {e}") from None
    for root in roots:
        if pin.fingerprint is not None and matches_fingerprint(root, pin.fingerprint):
            return root
    if not roots:
        raise EnrolmentFailed(f"the configuration document from {url} names no root-cert")
    return roots[0]  # refused by pin.check, with the fingerprint it has


def _refused(response: IResponse, body: bytes, url: str) -> None:
    message = body.decode("utf-8", "replace").strip()[:500] or response.phrase.decode("latin-1")
    if response.code == 429 or response.code >= 500:
        retry = _header(response, b"retry-after")
        raise EnrolmentUnavailable(
            f"{url} answered {response.code}: {message}",
            retry_after=float(retry) if retry.isascii() and retry.isdigit() else None,
        )
    raise EnrolmentFailed(f"{url} refused the request with {response.code}: {message}")


async def request_certificate(
    reactor: IRoleReactor, enrol_url: str, root_der: bytes, request: EnrolmentRequest
) -> bytes:
    """POST ``request`` over TLS that chains to ``root_der``; the DER certificate granted."""
    _https_url(enrol_url)
    response, body = await _exchange(
        reactor,
        _ChainsToRoot(root_der),
        b"POST",
        enrol_url,
        {b"content-type": FORM_CONTENT_TYPE.encode(), b"accept": CERTIFICATE_CONTENT_TYPE.encode()},
        encode_request(request),
        MAX_CERTIFICATE_BYTES,
    )
    if response.code != 200:
        _refused(response, body, enrol_url)
    if _header(response, b"content-type") != CERTIFICATE_CONTENT_TYPE:
        raise EnrolmentFailed(f"{enrol_url} answered 200 but not with {CERTIFICATE_CONTENT_TYPE}")
    return body


def _check_issued(
    reactor: IRoleReactor,
    certificate_der: bytes,
    configuration: OverlayConfiguration,
    key: ec.EllipticCurvePrivateKey,
    user_name: str,
    node_id: int | None,
) -> CertifiedIdentity:
    """The certificate must be the root's, for our key, naming ``user_name`` (and ``node_id``)."""
    trust = OverlayRootTrust(configuration.root_der, configuration.instance_name, reactor.seconds)
    try:
        certificate = x509.load_der_x509_certificate(certificate_der)
        identity = trust.identify(certificate)
    except CertificateRefused as e:
        raise EnrolmentFailed(f"the certificate the server sent is refused: {e}") from None
    except ValueError as e:
        raise EnrolmentFailed(
            f"the server sent something that is not a certificate ({e})"
        ) from None
    own = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if public_key_der(certificate) != own:
        raise EnrolmentFailed("the certificate the server sent is not for this node's key")
    if identity.user_name != user_name:
        raise EnrolmentFailed(
            f"the certificate names user {identity.user_name!r}, not {user_name!r}"
        )
    if node_id is not None and identity.node_id != node_id:
        raise EnrolmentFailed(
            f"the user certificate names node {id_hex(identity.node_id)}, not this super-node "
            f"({id_hex(node_id)})"
        )
    return identity


async def enrol_node(
    reactor: IRoleReactor,
    *,
    enrol_url: str,
    pin: RootPin,
    account: str,
    password: str,
    key: ec.EllipticCurvePrivateKey,
    overlay_name: str | None = None,
) -> Enrolment:
    """A node certificate for ``key`` under ``account``, with a Node-ID the CA picks."""
    configuration, document = await fetch_configuration(reactor, enrol_url, pin, overlay_name)
    request = EnrolmentRequest(account, password, certificate_signing_request(key))
    der = await request_certificate(reactor, enrol_url, configuration.root_der, request)
    proved = _check_issued(reactor, der, configuration, key, account, None)
    return Enrolment(der, configuration.root_der, configuration, document, proved.node_id, account)


async def enrol_user(
    reactor: IRoleReactor,
    *,
    enrol_url: str,
    pin: RootPin,
    user: str,
    password: str,
    node: NodeIdentity,
    key: ec.EllipticCurvePrivateKey,
    overlay_name: str | None = None,
) -> Enrolment:
    """
    A user certificate for ``user`` bound to the super-node ``node`` (its key and Node-ID).

    ``key`` must be ``node``'s private key: the CSR is made with it and the
    CA checks that it is the key of ``node``'s certificate.
    """
    configuration, document = await fetch_configuration(reactor, enrol_url, pin, overlay_name)
    request = EnrolmentRequest(
        user, password, certificate_signing_request(key), node_certificate=node.certificate_der
    )
    der = await request_certificate(reactor, enrol_url, configuration.root_der, request)
    proved = _check_issued(reactor, der, configuration, key, user, node.node_id)
    return Enrolment(der, configuration.root_der, configuration, document, proved.node_id, user)

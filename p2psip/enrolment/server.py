"""
The bootstrap's enrolment server: HTTPS, one listener, two paths.

``POST /enrol``
    RFC 6940 s11.3: the form of :mod:`p2psip.enrolment.requests`, decided
    by :class:`~p2psip.enrolment.issuer.CertificateIssuer`; a granted
    request is answered ``200`` with the DER certificate as
    ``application/pkix-cert``.  Errors are plain-text statuses: 400 (a
    malformed form or CSR), 403 (wrong credentials, a grant the account
    lacks, a node certificate that is not the requester's), 405, 413
    (body over :data:`~p2psip.enrolment.requests.MAX_REQUEST_BYTES`,
    refused before it is read), 415 (not a form), 429 (too many failed
    logins, with ``Retry-After``), 503 (too many password checks running).
``GET /.well-known/reload-config``
    RFC 6940 s11.2: the signed configuration document.

An address may hold at most eight connections open at once (128 in all),
refused before the TLS handshake and logged like the HTTP listener's.
TLS is served with a certificate the overlay CA issues at start for the
hosts the bootstrap is reached at (a fresh key each start, kept only in
memory), sent together with the root, so a peer that pins the root checks
this server against it.  Every refusal is logged at warn through the
site's rate-limited refusal log (one line per source a minute, with the
count held back); every certificate issued is one info line.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import crypto
from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorFromThreads, IReactorTime
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.internet.threads import deferToThreadPool
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from p2psip.enrolment.accounts import Account, AccountsFile, AccountsFileError
from p2psip.enrolment.authority import OverlayAuthority
from p2psip.enrolment.configuration import ConfigurationPublisher, OverlayConfiguration
from p2psip.enrolment.fingerprints import root_fingerprint
from p2psip.enrolment.issuer import (
    RETRY_AFTER_SECONDS,
    CertificateIssuer,
    EnrolmentRefused,
    Issued,
    check_now,
)
from p2psip.enrolment.requests import (
    CERTIFICATE_CONTENT_TYPE,
    CONFIGURATION_CONTENT_TYPE,
    ENROLMENT_PATH,
    FORM_CONTENT_TYPE,
    MAX_REQUEST_BYTES,
    MalformedRequest,
    decode_request,
)
from p2psip.sip.login_throttle import LoginThrottle
from p2psip.util.connection_limit import ConnectionLimitFactory
from p2psip.util.endpoints import split_description
from p2psip.util.ids import id_hex
from p2psip.util.logs import Logger
from p2psip.util.reactor import IRoleReactor
from p2psip.web.site import bounded_site, refuse_logged

#: Connections one address may hold open to the enrolment server, and in all.
ENROLMENT_CONNECTIONS_PER_SOURCE = 8
ENROLMENT_MAX_CONNECTIONS = 128


class ListenAddressError(ValueError):
    """An ``--enrol-listen`` value this server cannot use."""


def enrolment_listen_address(text: str) -> str:
    """
    Check an ``--enrol-listen`` value: ``ssl:PORT[:interface=ADDR][:backlog=N]``.

    The TLS key and certificate are the CA's business, so the ``privateKey``
    and ``certKey`` fields of Twisted's ``ssl:`` strings are refused here.
    Returns the text unchanged.
    """
    fields = split_description(text.strip())
    if fields[0].lower() != "ssl" or len(fields) < 2:
        raise ListenAddressError(
            f"{text!r} is not an enrolment listener: write ssl:PORT[:interface=ADDR], "
            "e.g. ssl:8443 (the CA issues the server certificate itself)"
        )
    for field in fields[2:]:
        name = field.partition("=")[0]
        if name not in ("interface", "backlog"):
            raise ListenAddressError(
                f"{text!r}: the enrolment listener takes only interface= and backlog=; its "
                "certificate is issued by the overlay CA, so privateKey and certKey are not used"
            )
    tcp_description(text)
    return text


def enrolment_url(host: str, port: int) -> str:
    """``https://HOST:PORT/enrol``, with an IPv6 address in brackets."""
    if _is_ip_address(host) and ipaddress.ip_address(host).version == 6:
        host = f"[{host}]"
    return f"https://{host}:{port}{ENROLMENT_PATH}"


def tcp_description(text: str) -> str:
    """The plain TCP endpoint string under an ``ssl:`` enrolment listener."""
    # The text after the scheme keeps its escapes (an IPv6 interface=\:\:1).
    tcp = "tcp:" + text.strip().split(":", 1)[1]
    try:
        endpoints.serverFromString(_NO_REACTOR, tcp)
    except Exception as e:
        raise ListenAddressError(f"{text!r} is not a listening endpoint ({e})") from None
    return tcp


_NO_REACTOR = object()


def server_tls_options(
    authority: OverlayAuthority, hosts: Sequence[str], now: float
) -> CertificateOptions:
    """TLS (1.2 and later) with a fresh key and a CA-issued certificate for ``hosts``, plus the root."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = authority.issue_server_certificate(key.public_key(), hosts, now=now)
    return CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(x509.load_der_x509_certificate(certificate)),
        extraCertChain=[crypto.X509.from_cryptography(authority.root)],
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )


def _source(request: Request) -> str | None:
    address = request.getClientAddress()
    return getattr(address, "host", None)


def _plain(request: Request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    return message.encode("utf-8") + b"\n"


class _EnrolResource(Resource):
    """``/enrol``: one POST, one certificate (or one refusal)."""

    isLeaf = True
    log = Logger()

    def __init__(self, issuer: CertificateIssuer) -> None:
        super().__init__()
        self.issuer = issuer

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"allow", b"POST")
        return self._refuse(
            request, EnrolmentRefused(405, "POST an enrolment form (RFC 6940 s11.3) here")
        )

    def render_POST(self, request: Request) -> bytes | int:
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type != FORM_CONTENT_TYPE.encode("ascii"):
            return self._refuse(
                request,
                EnrolmentRefused(415, f"send the request as Content-Type: {FORM_CONTENT_TYPE}"),
            )
        content = request.content
        body = content.read(MAX_REQUEST_BYTES + 1) if content is not None else b""
        try:
            enrolment = decode_request(body)
        except MalformedRequest as e:
            return self._refuse(request, EnrolmentRefused(400, str(e)))
        try:
            self.issuer.accounts.refresh()
        except AccountsFileError as e:
            self.log.error("enrolment accounts: {why}; the old accounts stay in force", why=str(e))
        disconnected: list[bool] = []
        request.notifyFinish().addErrback(lambda _reason: disconnected.append(True))
        answer: Deferred[bytes] = self.issuer.grant(enrolment, _source(request)).addCallbacks(
            lambda issued: self._granted(issued, request),
            lambda failure: self._not_granted(failure, request),
        )
        answer.addCallback(self._send, request, disconnected)
        answer.addErrback(lambda failure: self.log.failure("while answering an enrolment", failure))
        return NOT_DONE_YET

    def _granted(self, issued: Issued, request: Request) -> bytes:
        self.log.info(
            "enrolment: issued a {what} certificate for node {node_id} to account {account}",
            what="user" if issued.user_certificate else "node",
            node_id=id_hex(issued.node_id),
            account=issued.user_name,
        )
        request.setResponseCode(200)
        request.setHeader(b"content-type", CERTIFICATE_CONTENT_TYPE.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return issued.certificate

    def _not_granted(self, failure: Failure, request: Request) -> bytes:
        if failure.check(EnrolmentRefused):
            refusal = failure.value
            assert isinstance(refusal, EnrolmentRefused)
            return self._refuse(request, refusal)
        self.log.failure("while deciding an enrolment request", failure)
        return _plain(request, 500, "internal error; the bootstrap's log has the details")

    @staticmethod
    def _send(body: bytes, request: Request, disconnected: list[bool]) -> None:
        if disconnected:
            return
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
        request.write(body)
        request.finish()

    def _refuse(self, request: Request, refusal: EnrolmentRefused) -> bytes:
        refuse_logged(request, refusal.status, f"enrolment refused: {refusal.reason}")
        if refusal.status == 429:
            request.setHeader(b"retry-after", str(RETRY_AFTER_SECONDS).encode("ascii"))
        return _plain(request, refusal.status, refusal.message)


class _ConfigurationResource(Resource):
    """``/.well-known/reload-config``: the signed configuration document."""

    isLeaf = True

    def __init__(self, document: Callable[[], bytes]) -> None:
        super().__init__()
        self._document = document

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONFIGURATION_CONTENT_TYPE.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return self._document()


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return _plain(
            request, 404, "this server answers POST /enrol and GET /.well-known/reload-config"
        )


class _Root(Resource):
    def __init__(self, issuer: CertificateIssuer, document: Callable[[], bytes]) -> None:
        super().__init__()
        self._enrol = _EnrolResource(issuer)
        well_known = Resource()
        well_known.putChild(b"reload-config", _ConfigurationResource(document))
        self._well_known = well_known

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"enrol" and not request.postpath:
            return self._enrol
        if path == b".well-known" and request.postpath == [b"reload-config"]:
            return self._well_known
        return _NotFound()

    def render(self, request: Request) -> bytes:
        return _NotFound().render(request)


def enrolment_site(
    issuer: CertificateIssuer,
    document: Callable[[], bytes],
    *,
    allowed_hosts: Sequence[str] = (),
    reactor: IReactorTime | None = None,
) -> Site:
    """The enrolment server's Site (without TLS; :class:`EnrolmentServer` adds it)."""
    return bounded_site(
        _Root(issuer, document),
        max_body_bytes=MAX_REQUEST_BYTES,
        allowed_hosts=allowed_hosts,
        reactor=reactor,
    )


class EnrolmentServer(Service):
    """
    Listen with the enrolment site over TLS.

    The port is opened in ``privilegedStartService`` (``startService`` when
    that was not called), so a busy port stops the role at start with the
    option to change, as ``--http`` does.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IRoleReactor,
        description: str,
        site: Site,
        tls: Callable[[], CertificateOptions],
        *,
        public_host: str | None = None,
        fingerprint: str | None = None,
        check_threads: int = 0,
    ) -> None:
        self.reactor = reactor
        self.description = description
        self.site = site
        self.tls = tls
        #: The host peers reach this server by, for :attr:`url` and the log.
        self.public_host = public_host
        #: The CA's fingerprint, logged with the URL so the operator can hand both out.
        self.fingerprint = fingerprint
        #: Threads for password checks; 0: checks run in the reactor thread.
        self.check_threads = check_threads
        #: Where password checks run while the service runs (made at start).
        self.pool: ThreadPool | None = None
        self.port: IListeningPort | None = None
        self._opened = False

    @property
    def url(self) -> str | None:
        """``https://HOST:PORT/enrol`` once the port is open (and a public host is known)."""
        if self.port is None or self.public_host is None:
            return None
        host = self.port.getHost()
        if not isinstance(host, (IPv4Address, IPv6Address)):
            return None
        return enrolment_url(self.public_host, host.port)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._open()

    def startService(self) -> None:
        super().startService()
        if self.check_threads and self.pool is None:
            self.pool = ThreadPool(0, self.check_threads, name="enrolment-password-checks")
            self.pool.start()
        if not self._opened:
            self._open()

    def _open(self) -> None:
        self._opened = True
        endpoint = endpoints.serverFromString(self.reactor, tcp_description(self.description))
        tls = TLSMemoryBIOFactory(self.tls(), False, self.site, clock=self.reactor)
        # Counted before TLS, so a flood of handshakes from one address is cut short too.
        factory = ConnectionLimitFactory(
            tls,
            self.reactor,
            ENROLMENT_CONNECTIONS_PER_SOURCE,
            ENROLMENT_MAX_CONNECTIONS,
            what="enrolment",
            hint="nothing here: peers enrol once, with one connection at a time",
        )
        failures: list[Failure] = []
        endpoint.listen(factory).addCallbacks(self._listening, failures.append)
        if failures:
            error = failures[0].value
            if isinstance(error, CannotListenError):
                raise CannotListenError(
                    error.interface,
                    error.port,
                    f"{error.socketError}; --enrol-listen (enrol-listen in the config file) asks "
                    f"for {self.description}: stop what uses that port or choose another",
                ) from None
            failures[0].raiseException()

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        host = port.getHost()
        where = (
            f"{host.host}:{host.port}"
            if isinstance(host, (IPv4Address, IPv6Address))
            else str(host)
        )
        self.log.info("enrolment server listening on {address} (HTTPS)", address=where)
        if self.url is not None:
            self.log.info(
                "enrolment: peers enrol with --enrol-url {url} --ca-fingerprint {fingerprint}",
                url=self.url,
                fingerprint=self.fingerprint,
            )

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.stop()
        port, self.port, self._opened = self.port, None, False
        if port is None:
            return succeed(None)
        stopped = port.stopListening()
        return stopped if isinstance(stopped, Deferred) else succeed(None)


def build_enrolment_server(
    reactor: IRoleReactor,
    *,
    authority: OverlayAuthority,
    accounts: AccountsFile,
    listen: str,
    hosts: Sequence[str],
    describe: Callable[[], OverlayConfiguration],
    throttle: LoginThrottle | None = None,
    announce: bool = False,
) -> EnrolmentServer:
    """
    The whole enrolment server of one CA, wired: issuer, signed
    configuration, site and TLS listener on ``listen`` (``ssl:PORT...``).

    ``hosts`` are the names and addresses peers reach it by (its TLS
    certificate names them, and they pass the Host check);
    ``describe`` gives the configuration document's current content.
    Password checks run in a small thread pool of the server's own (two
    threads), not in the reactor thread.  With ``announce`` the first host
    is the public one: :attr:`EnrolmentServer.url`
    names it and the log says the URL and fingerprint peers need.
    """
    threaded = IReactorFromThreads.providedBy(reactor)
    server: EnrolmentServer

    def run_check(check: Callable[[], Account | None]) -> Deferred[Account | None]:
        pool = server.pool
        if pool is None:
            return check_now(check)
        # Only set when the reactor provides IReactorFromThreads (checked above).
        return deferToThreadPool(cast(IReactorFromThreads, reactor), pool, check)

    issuer = CertificateIssuer(authority, accounts, reactor, throttle, run_check)
    publisher = ConfigurationPublisher(authority, describe, reactor.seconds)
    # Every host the certificate names may be in Host headers, addresses
    # included: behind a port forward the listener's own address differs.
    site = enrolment_site(issuer, publisher.document, allowed_hosts=hosts, reactor=reactor)
    server = EnrolmentServer(
        reactor,
        listen,
        site,
        lambda: server_tls_options(authority, hosts, reactor.seconds()),
        public_host=hosts[0] if announce else None,
        fingerprint=root_fingerprint(authority.root_der),
        check_threads=2 if threaded else 0,
    )
    return server


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True

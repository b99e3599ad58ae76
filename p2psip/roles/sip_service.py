"""
The SIP part of a super-node: registrar and proxy on the overlay node.

``makeService`` builds the stack (:func:`build_sip_stack`) from the
role's frozen :class:`~p2psip.roles.ring_options.SipConfig`, the overlay
node, the users file and the nonce secret::

    users file --> DigestAuthenticator --> Registrar --+
    overlay node --> OverlayLocationService -----------+--> SipProxy
                                           SipTransport <--> TransactionLayer

and :class:`SipService` does what waits for the reactor: it opens the
listeners, announces the SIP listener to the overlay for AppAttach
(application 5060, RFC 7904 section 5) so other super-nodes can forward
calls here, re-reads the users file every ``USERS_REFRESH_SECONDS`` when
it changed (``p2psip users add`` takes effect without a restart), and
stops the stack on shutdown.

With ``--sip-tls`` the service also listens for SIP over TLS (RFC 3261
s26) with the SIP domain's certificate (``--sip-tls-certificate``,
``--sip-tls-key``); phones need no certificate of their own.  Super-nodes
keep reaching each other over the UDP or TCP listener.

Digest authentication is on unless ``--sip-trusted-network`` asks for it to
be off.  The nonce secret (32 random bytes) is kept in ``DATA_DIR/sip-nonce-secret``
so that nonces survive a restart.

Phones prove their user with a password, the overlay wants a certificate:
the registration of a user is signed with a user certificate this
super-node holds, from ``DATA_DIR/user-certs/`` (``p2psip enrol --user``;
:mod:`p2psip.enrolment.user_certificates`).  They are read at start and
again when the directory changes; a REGISTER for a user without one is
refused (403), and the log names the command that fixes it.  An
``--insecure`` ring needs none: the node makes self-signed ones.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Any

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from prometheus_client import CollectorRegistry
from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.internet.task import LoopingCall
from twisted.python import usage
from twisted.python.failure import Failure

from p2psip.enrolment.user_certificates import UserCertificateError, UserCertificates
from p2psip.interfaces import ISuperNodeOverlay
from p2psip.media.anchor import MediaAnchor, MediaPolicy
from p2psip.media.directory import PUBLISH_INTERVAL_SECONDS, RelayDirectory
from p2psip.media.metrics import MediaRelayCollector, relay_status
from p2psip.media.relay import PortPool
from p2psip.media.sessions import RelaySessions
from p2psip.media.udp import RelayService, UdpSocketOpener
from p2psip.roles.ring_options import SIP_TLS_KEY_TYPES, SipConfig, SipTlsCredentials
from p2psip.sip.binding_store import BindingStore
from p2psip.sip.digest import DigestAuthenticator
from p2psip.sip.dns_lookup import ServerLocator, make_resolver
from p2psip.sip.gateway import Gateway
from p2psip.sip.location import OverlayLocationService
from p2psip.sip.direct_contacts import DialogTargets, DirectContacts
from p2psip.sip.location_cache import LocationCache
from p2psip.sip.metrics import CallSetupTimes, OverloadCollector, SipCollector
from p2psip.sip.overload import OverloadGuard
from p2psip.sip.proxy import SipProxy
from p2psip.sip.registrar import Registrar
from p2psip.sip.request_limit import RequestRateLimit
from p2psip.sip.transaction import Hop
from p2psip.sip.transport import SipListeningPort, SipTransport
from p2psip.sip.users import UsersFile, UsersFileError
from p2psip.usages.sip import SIP_APPLICATION
from p2psip.util import gc_tuning
from p2psip.util.endpoints import endpoint_interface, escape_field
from p2psip.util.logs import Logger
from p2psip.util.loop_lag import LoopLagProbe
from p2psip.util.socket_backlog import ReceiveBacklog
from p2psip.util.reactor import IRoleReactor, as_udp_reactor

NONCE_SECRET_FILE = "sip-nonce-secret"
NONCE_SECRET_BYTES = 32
USERS_REFRESH_SECONDS = 10.0


def load_or_create_secret(data_dir: str | Path) -> bytes:
    """
    The Digest nonce secret, created (mode 0600) on first use.

    :raises ValueError: naming the file when it exists but is too short.
    """
    path = Path(data_dir) / NONCE_SECRET_FILE
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = os.urandom(NONCE_SECRET_BYTES)
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(handle, secret)
            os.fsync(handle)
        finally:
            os.close(handle)
        return secret
    if len(secret) < 16:
        raise ValueError(
            f"{path}: the nonce secret must hold at least 16 bytes; delete the file to get a new one"
        )
    return secret


def dialog_targets(secret: bytes | None) -> DialogTargets:
    """
    The key of the proxy's ``p2psip-target`` proofs: derived from the kept
    nonce secret, so direct calls' in-dialog requests still pass after a
    restart; with ``--sip-trusted-network`` (no secret kept) a fresh one.
    """
    if secret is None:
        return DialogTargets(os.urandom(NONCE_SECRET_BYTES))
    return DialogTargets(hmac.new(secret, b"p2psip dialog targets", hashlib.sha256).digest())


def load_users(config: SipConfig) -> UsersFile | None:
    """The Digest users file named by ``--users``, read now so a bad one stops the role."""
    if config.users_path is None:
        return None
    try:
        return UsersFile.load(config.users_path)
    except UsersFileError as e:
        raise usage.UsageError(f"{e} (check --users)") from None


def sip_tls_options(credentials: SipTlsCredentials) -> CertificateOptions:
    """
    The server side of SIP over TLS: the domain's certificate chain and key,
    TLS 1.2 or later, no client certificate asked for (phones authenticate
    with Digest).
    """
    key = serialization.load_pem_private_key(credentials.key_pem, password=None)
    if not isinstance(key, SIP_TLS_KEY_TYPES):
        raise ValueError(f"a {type(key).__name__} cannot serve TLS")
    chain = [
        crypto.X509.from_cryptography(certificate)
        for certificate in x509.load_pem_x509_certificates(credentials.certificates_pem)
    ]
    return CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=chain[0],
        extraCertChain=chain[1:],
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )


@frozen
class SipStack:
    """The parts of one super-node's SIP service, built together."""

    config: SipConfig
    node: ISuperNodeOverlay
    users: UsersFile | None
    location: OverlayLocationService
    registrar: Registrar
    transport: SipTransport
    proxy: SipProxy
    #: The server TLS of ``--sip-tls`` listeners (None without any).
    tls: CertificateOptions | None = None
    #: The media relay (None with ``--media-relay never``).
    media: MediaAnchor | None = None
    #: How late the event loop runs (the overload guard's lag; /status, /metrics).
    loop_lag: LoopLagProbe | None = None


def build_sip_stack(
    config: SipConfig,
    node: ISuperNodeOverlay,
    reactor: IRoleReactor,
    users: UsersFile | None,
    secret: bytes | None,
    fallback_host: str,
) -> SipStack:
    """
    Wire registrar, proxy and transport on ``node``.

    ``secret`` is the Digest nonce secret (None with ``--sip-trusted-network``);
    ``fallback_host`` is the overlay's advertised host, used for Via and
    Record-Route when neither ``--sip-advertise`` nor the first listener
    names one.  The advertised port is known once the service listens.
    """
    authenticator = None
    if not config.trusted_network:
        if users is None or secret is None:
            raise ValueError("Digest authentication needs the users file and the nonce secret")
        authenticator = DigestAuthenticator(
            config.domain,
            secret,
            reactor,
            users,
            algorithms=config.digest_algorithms,
            clients=config.digest_clients,
            offers=users,
        )
    location = OverlayLocationService(node, reactor)
    registrar = Registrar(
        config.domain,
        location,
        reactor,
        authenticator,
        users,
        trusted_network=config.trusted_network,
        direct_contacts=DirectContacts(
            config.direct_contacts,
            relays_every_call=config.media is not None and config.media.policy == "always",
        ),
    )
    # A listener on every interface names no host: take the overlay's
    # advertised one, which the role resolved (advertise, the overlay
    # interface, or the default-route interface's address).
    host = config.advertise or config.listen_interface or fallback_host
    transport = SipTransport(
        as_udp_reactor(reactor),
        tcp_idle_timeout_seconds=config.idle_timeout_seconds,
        tcp_connections_per_source=config.connections_per_source,
        max_tcp_connections=config.max_connections,
    )
    transport.advertised_host = host
    routes = config.domain_routes
    locator = (
        ServerLocator(make_resolver(config.dns_servers, reactor))
        if routes.foreign_domains
        else None
    )
    media = build_media_relay(config, reactor, host, node)
    loop_lag = LoopLagProbe(reactor)
    proxy = SipProxy(
        config.domain,
        (host, 0),
        node,
        location,
        registrar,
        transport,
        reactor,
        peer_transport=config.peer_transport,
        rate_limit=RequestRateLimit(reactor, config.rate_limit_per_second, config.rate_limit_burst)
        if config.rate_limit_per_second > 0
        else None,
        credentials=registrar.credentials,
        gateway=Gateway(routes, locator, reactor),
        media=media,
        location_cache=LocationCache(
            location, node, reactor, max_entries=config.location_cache_entries
        ),
        dialog_targets=dialog_targets(secret),
    )
    if config.overload.enabled:
        transactions = proxy.transactions
        backlog = ReceiveBacklog(lambda: transport.udp_ports, reactor)
        proxy.overload = OverloadGuard(
            config.overload,
            lambda: transactions.unanswered,
            lambda: loop_lag.smoothed_seconds,
            backlog=backlog.fill,
        )
    transport.receiver = proxy.transactions
    tls = sip_tls_options(config.tls) if config.tls is not None else None
    return SipStack(
        config, node, users, location, registrar, transport, proxy, tls, media, loop_lag
    )


def build_media_relay(
    config: SipConfig, reactor: IRoleReactor, host: str, node: ISuperNodeOverlay
) -> MediaAnchor | None:
    """
    The relay's port pool, sessions, SDP rewriting and the overlay's list of
    other relays (None with ``--media-relay never``).
    """
    relay = config.media
    if relay is None:
        return None
    sessions = RelaySessions(
        PortPool(relay.low_port, relay.high_port),
        UdpSocketOpener(as_udp_reactor(reactor), relay.interface),
        idle_timeout_seconds=relay.idle_timeout_seconds,
    )
    return MediaAnchor(
        sessions,
        MediaPolicy(relay.policy),
        relay.address or host,
        reactor,
        local_node_id=node.local_node_id,
        directory=RelayDirectory(node),
        peer_transport=config.peer_transport,
    )


class UserCertificateLoader:
    """
    Hands the user certificates in ``DATA_DIR/user-certs`` to the node, and
    the ones added later once the directory changes.
    """

    log = Logger()

    def __init__(self, certificates: UserCertificates, node: ISuperNodeOverlay) -> None:
        self.certificates = certificates
        self.node = node
        self._seen: dict[str, bytes] = {}
        self._directory_stamp: tuple[int, int] | None = None

    @property
    def data_dir(self) -> Path:
        return self.certificates.directory.parent

    def enrol_hint(self) -> str:
        """The command that gives this super-node a user's certificate (``{user}``: the AOR)."""
        return f"p2psip enrol --user {{user}} --data-dir {self.data_dir}"

    def load(self) -> int:
        """
        Read the directory if it changed; return how many certificates are new.

        :raises UserCertificateError: a file cannot be read.
        """
        try:
            status = self.certificates.directory.stat()
        except FileNotFoundError:
            return 0
        except OSError as e:
            raise UserCertificateError(f"cannot read {self.certificates.directory}: {e}") from e
        stamp = (status.st_mtime_ns, status.st_ino)
        if stamp == self._directory_stamp:
            return 0
        found = self.certificates.load_all()
        self._directory_stamp = stamp
        added = 0
        for user, der in found.items():
            if self._seen.get(user) == der:
                continue
            self._seen[user] = der
            path = self.certificates.directory / f"{user}.pem"
            try:
                self.node.add_user_certificate(der)
            except ValueError as e:
                self.log.warn(
                    "{path} cannot sign registrations for this super-node: {why}; enrol the "
                    "user again with `p2psip enrol --user` for this node's key",
                    path=str(path),
                    why=str(e),
                )
                continue
            added += 1
        return added


class SipService(Service):
    """Opens a super-node's SIP listeners and runs its stack until the role stops."""

    log = Logger()

    def __init__(
        self,
        stack: SipStack,
        reactor: IRoleReactor,
        *,
        joined: Deferred[None] | None = None,
        freeze_gc: bool = True,
        user_certificates: UserCertificates | None = None,
        bindings: BindingStore | None = None,
        legacy_bindings_file: Path | None = None,
    ) -> None:
        self.stack = stack
        #: Where the registrar's bindings are kept across restarts (None: not kept).
        self.bindings = bindings
        #: An earlier version's bindings file, moved into ``bindings`` at start.
        self.legacy_bindings_file = legacy_bindings_file
        self.config = stack.config
        self.reactor = reactor
        self.joined = joined
        self.freeze_gc = freeze_gc
        #: Garbage-collection pauses, timed while the service runs (in a role).
        self.gc_pauses = gc_tuning.GcPauses(reactor)
        self.users = stack.users
        self.registrar = stack.registrar
        self.proxy = stack.proxy
        self.transport = stack.transport
        self.advertised: tuple[str, int] | None = None
        self.user_certificates: UserCertificateLoader | None = None
        if user_certificates is not None:
            self.user_certificates = UserCertificateLoader(user_certificates, stack.node)
            stack.location.enrol_hint = self.user_certificates.enrol_hint()
        self.relay: RelayService | None = None
        self.directory: RelayDirectory | None = None
        self._announce: LoopingCall | None = None
        if stack.media is not None:
            self.relay = RelayService(stack.media.sessions, reactor)
            self.directory = stack.media.directory
            self._announce = LoopingCall(self._announce_relay)
            self._announce.clock = reactor
        self._refresh: LoopingCall | None = None
        if self.users is not None or self.user_certificates is not None:
            self._refresh = LoopingCall(self._refresh_files)
            self._refresh.clock = reactor

    def startService(self) -> None:
        super().startService()
        config = self.config
        listeners: list[tuple[str, str, CertificateOptions | None]] = [
            ("--sip", description, None) for description in config.listeners
        ]
        listeners += [
            ("--sip-tls", description, self.stack.tls) for description in config.tls_listeners
        ]
        shared = config.shared_ports
        for option, description, tls in listeners:
            self._listen(option, description, tls, shared=shared)
        # Other super-nodes reach us (through AppAttach) over UDP or TCP (a
        # thin client behind a NAT: TCP, its chosen peer transport); TLS is
        # what phones may use besides.
        chosen = config.peer_transport_choice
        hop = (
            (self.transport.local_hop(chosen) if chosen is not None else None)
            or self.transport.local_hop("UDP")
            or self.transport.local_hop("TCP")
            or self.transport.local_hop("TLS")
        )
        assert hop is not None
        ports = {
            name: own.port
            for name in ("UDP", "TCP", "TLS")
            if (own := self.transport.local_hop(name)) is not None
        }
        if shared:
            # A worker's own ports, for what must reach this worker and no
            # other: AppAttach answers, Via and Record-Route; what it sends
            # over UDP leaves from its own port too (answers to the source).
            self.proxy.shared_ports = frozenset(ports.values())
            interface = endpoint_interface(config.listeners[0]) or ""
            named = f":interface={escape_field(interface)}" if interface else ""
            for name in ("UDP", "TCP"):
                if name in ports:
                    own_port = self._listen(
                        "--sip", f"{name.lower()}:0{named}", None, private=name == "UDP"
                    )
                    address = own_port.getHost()
                    assert isinstance(address, (IPv4Address, IPv6Address))
                    ports[name] = address.port
            hop = Hop(hop.transport, hop.host, ports[hop.transport])
        host = self.transport.advertised_host or "127.0.0.1"
        self.advertised = (host, hop.port)
        self.proxy.advertised = (host.lower(), hop.port)
        self.proxy.advertised_ports = ports
        self.stack.node.set_application_address(SIP_APPLICATION, host, hop.port)
        self._restore_bindings()
        enrolled = 0
        if self.user_certificates is not None:
            try:
                enrolled = self.user_certificates.load()
            except UserCertificateError as e:
                self.transport.stop()
                raise usage.UsageError(str(e)) from None
        if self._refresh is not None:
            self._refresh.start(USERS_REFRESH_SECONDS, now=False)
        if self.relay is not None:
            self.relay.startService()
        if self.stack.loop_lag is not None:
            self.stack.loop_lag.start()
        if self._announce is not None:
            # The overlay takes the entry once the node is in the ring.
            if self.joined is None:
                self._announce.start(PUBLISH_INTERVAL_SECONDS)
            else:
                self.joined.addCallback(self._start_announcing)
        users = self.users
        self.log.info(
            "SIP super-node for {domain} at {host}:{port} ({listeners}); authentication {auth}; "
            "user certificates for {enrolled} user(s)",
            domain=config.domain,
            host=host,
            port=hop.port,
            listeners=" ".join([*config.listeners, *(f"tls:{t}" for t in config.tls_listeners)]),
            auth="off (trusted network)"
            if config.trusted_network
            else f"digest, {len(users.users()) if users else 0} user(s)",
            enrolled=enrolled,
        )
        if self.freeze_gc:
            gc_tuning.tune_for_server()
            self.gc_pauses.install()
            if self.joined is not None:
                self.joined.addCallback(lambda _: self._freeze() if self.running else None)

    def _listen(
        self,
        option: str,
        description: str,
        tls: CertificateOptions | None,
        *,
        shared: bool = False,
        private: bool = False,
    ) -> SipListeningPort:
        """Listen now, or stop every listener and name the option that failed."""
        failures: list[Failure] = []
        ports: list[SipListeningPort] = []
        self.transport.listen(description, tls=tls, shared=shared, private=private).addCallbacks(
            ports.append, failures.append
        )
        if failures or not ports:
            self.transport.stop()
            why = failures[0].getErrorMessage() if failures else "the listener did not start"
            raise usage.UsageError(f"{option} {description}: {why}")
        return ports[0]

    def _start_announcing(self, result: object) -> object:
        if self.running and self._announce is not None and not self._announce.running:
            self._announce.start(PUBLISH_INTERVAL_SECONDS)
        return result

    def _announce_relay(self) -> None:
        """Store this relay's entry in the overlay's list, and read the others'."""
        media = self.stack.media
        if media is None or self.directory is None:
            return
        pool = media.sessions.pool
        if pool.capacity:
            self.directory.publish(media.address, pool.capacity - pool.in_use)
        self.directory.refresh()

    def _freeze(self) -> None:
        gc_tuning.freeze_after_start_up()

    def _restore_bindings(self) -> None:
        """Serve again the phones registered here before a restart (p2psip.sip.binding_store)."""
        if self.bindings is not None:
            self.bindings.restore(self.reactor.seconds(), self.legacy_bindings_file)

    def _refresh_files(self) -> None:
        if self.users is not None:
            self._refresh_users()
        if self.user_certificates is not None:
            try:
                added = self.user_certificates.load()
            except UserCertificateError as e:
                self.log.warn("{why}; the user certificates read before stay in force", why=str(e))
                return
            if added:
                self.log.info("read {count} new user certificate(s)", count=added)

    def _refresh_users(self) -> None:
        assert self.users is not None
        try:
            if self.users.refresh():
                self.log.info(
                    "re-read {path}: {count} user(s)",
                    path=str(self.users.path),
                    count=len(self.users.users()),
                )
        except UsersFileError as e:
            self.log.warn("{why}; the users read before stay in force (fix --users)", why=str(e))

    def stopService(self) -> Deferred[list[None]]:
        super().stopService()
        if self._refresh is not None and self._refresh.running:
            self._refresh.stop()
        self.registrar.stop()
        self.gc_pauses.uninstall()
        if self.stack.loop_lag is not None:
            self.stack.loop_lag.stop()
        if self.relay is not None and self.relay.running:
            self.relay.stopService()
        if self._announce is not None and self._announce.running:
            self._announce.stop()
            if self.directory is not None and self.directory.published:
                self.directory.withdraw()
        self.proxy.transactions.terminate_all()
        self.proxy.summary.flush()
        return self.transport.stop()

    # -- status and metrics ----------------------------------------------------

    def registrations(self) -> tuple[int, int]:
        """AORs with a binding served here, and their bindings."""
        aors = self.registrar.served_aors()
        return len(aors), sum(len(self.registrar.local_bindings(aor)) for aor in aors)

    def status(self) -> dict[str, Any]:
        """The ``sip`` section of ``/status``."""
        if self.advertised is None:
            return {"state": "starting"}
        aors, bindings = self.registrations()
        users = self.users
        return {
            "address": f"{self.advertised[0]}:{self.advertised[1]}",
            "listeners": list(self.config.listeners),
            "tls_listeners": list(self.config.tls_listeners),
            "authentication": "off (trusted network)" if self.config.trusted_network else "digest",
            "users": len(users.users()) if users is not None else None,
            "registrations": {"aors": aors, "bindings": bindings},
            "calls": self.proxy.calls(),
            "final_responses": self.proxy.metrics()["final_responses"],
            "requests_in_progress": self.proxy.pending_requests,
            "location_cache": self.proxy.location_cache.stats(),
            "transactions": self.proxy.transactions.metrics(),
            "transport": self.transport.metrics(),
            "gateway": self.proxy.gateway.status(),
            "media_relay": relay_status(self.stack.media, self.directory),
            "overload": self.overload_status(),
        }

    def overload_status(self) -> dict[str, Any]:
        """The overload guard's thresholds and refusals, and the loop lag."""
        guard = self.proxy.overload
        status: dict[str, Any] = guard.status() if guard is not None else {"guard": "off"}
        if self.stack.loop_lag is not None:
            status["loop_lag"] = self.stack.loop_lag.status()
        status["gc"] = self.gc_pauses.status()
        return status

    def add_metrics(self, registry: CollectorRegistry) -> None:
        """The stack's numbers (read at scrape time) and the call set-up histograms."""
        registry.register(
            SipCollector(lambda: self.proxy, lambda: self.transport, self.registrations)
        )
        CallSetupTimes(registry).watch(self.proxy)
        registry.register(OverloadCollector(lambda: self.proxy, self.stack.loop_lag))
        if self.stack.media is not None:
            registry.register(MediaRelayCollector(self.stack.media))


__all__ = [
    "SipService",
    "UserCertificateLoader",
    "SipStack",
    "build_sip_stack",
    "sip_tls_options",
    "load_users",
    "load_or_create_secret",
    "NONCE_SECRET_FILE",
    "USERS_REFRESH_SECONDS",
]

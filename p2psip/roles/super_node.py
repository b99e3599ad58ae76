"""
What the bootstrap and peer roles share: both are ring members that can
also serve SIP, built the same way from a frozen :class:`RingRoleConfig`.

``make_ring_role`` composes finished parts; no part is created when
twistd starts the service.  The children of the returned
:class:`RingRole` start in this order and stop in the reverse one:

1. the mediator client (with ``--mediator``), so that links the node
   cannot make directly can be asked for as soon as it joins;
2. on the bootstrap, the enrolment server (HTTPS on ``--enrol-listen``),
   so that peers can enrol while the ring forms;
3. the overlay service: listen, found or join the ring; on stop, Leave;
4. the SIP service (with ``--sip``): listeners, registrar and proxy;
5. the HTTP site: status page, ``/metrics`` and the admin API.

The node's certificate and trust policy (and the bootstrap's CA), the
known peers, the users file and the nonce secret are read (and made, on
first start) by :func:`load_ring_state`, which ``makeService`` calls;
tests pass their own :class:`RingState` instead.  A peer that enrols on
start is a :class:`~p2psip.roles.enrolment_service.FirstEnrolment` until
it has its certificate.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from attrs import field, frozen
from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import IReactorTime
from twisted.python import usage

from p2psip.enrolment.authority import OverlayAuthority
from p2psip.enrolment.fingerprints import root_fingerprint
from p2psip.enrolment.server import EnrolmentServer
from p2psip.enrolment.user_certificates import UserCertificates
from p2psip.nat.traversal import TraversalClient
from p2psip.nat.traversal_service import TraversalService
from p2psip.overlay import peer_cache
from p2psip.overlay.certificates import OverlayRootTrust, SelfSignedTrust, TrustPolicy
from p2psip.overlay.identity import NodeIdentity
from p2psip.overlay.links import Connector, StreamConnector, inbound_link_factory
from p2psip.overlay.mediated import MediatedConnector, MediatedIncoming
from p2psip.overlay.metrics import OverlayMetrics
from p2psip.overlay.node import OverlayNode
from p2psip.overlay.operations import OverlayOperations
from p2psip.overlay.tls import KeyLogFile, LinkSecurity
from p2psip.overlay.value_persistence import ValuePersistence
from p2psip.roles.enrolment_service import FirstEnrolment, bootstrap_enrolment_server
from p2psip.roles.overlay_api import overlay_api_routes
from p2psip.roles.overlay_service import OverlayService
from p2psip.roles.ring_credentials import EnrolmentNeeded, NodeRoleConfig, load_credentials
from p2psip.roles.ring_options import MediatorClientConfig, RingRoleConfig, SipConfig
from p2psip.roles.sip_service import SipService, build_sip_stack, load_or_create_secret, load_users
from p2psip.sip.binding_store import LEGACY_FILE_NAME as LEGACY_BINDINGS_FILE_NAME
from p2psip.sip.binding_store import BindingStore
from p2psip.sip.users import UsersFile
from p2psip.util.admin_token import AdminTokenError, load_or_create_token
from p2psip.util.connection_limit import ConnectionLimitFactory
from p2psip.util.ids import id_hex
from p2psip.util.logs import Logger
from p2psip.util.memory_report import MemoryReportService
from p2psip.util.metrics import role_registry
from p2psip.util.reactor import (
    HolePunchReactor,
    IRoleReactor,
    as_hole_punch_reactor,
    as_role_reactor,
    stopper,
)
from p2psip.util.state_db import FILE_NAME as STATE_DB_FILE_NAME
from p2psip.util.state_db import StateDatabase, StateDatabaseError, StateFlusher, state_threads
from p2psip.web.overlay_status import overlay_status
from p2psip.web.site import build_site, http_service

#: Inbound overlay connections at once, from everyone.
MAX_OVERLAY_CONNECTIONS = 1024

_log = Logger()


@frozen
class RingState:
    """What a ring role reads from disk before it is built."""

    identity: NodeIdentity
    known_peers: tuple[peer_cache.KnownPeer, ...] = ()
    users: UsersFile | None = None
    nonce_secret: bytes | None = None
    #: Without one the admin API refuses every request.
    admin_token: str | None = None
    #: Whose certificates the node believes; load_ring_state always sets it
    #: (the overlay root, or self-signed under --insecure).
    trust: TrustPolicy = field(factory=SelfSignedTrust)
    #: The overlay CA, on a bootstrap (its enrolment server issues from it).
    authority: OverlayAuthority | None = None
    #: ``DATA_DIR/state.sqlite3``: bindings and DHT values kept across restarts
    #: (None: nothing is kept, as in tests that build roles in memory).
    database: StateDatabase | None = None


class RoleFilesConfig(NodeRoleConfig, Protocol):
    """What :func:`load_ring_state` reads: a ring role's config, or the thin client's."""

    @property
    def sip(self) -> SipConfig | None: ...


def load_ring_state(config: RoleFilesConfig, clock: IReactorTime) -> RingState:
    """
    Read the role's files in ``--data-dir`` (made, mode 0700, if missing):
    the node key and certificate with the trust policy and, on a
    bootstrap, the overlay CA (:mod:`p2psip.roles.ring_credentials`), the
    admin API token (made on first start), the known peers, and for SIP
    the users file and the nonce secret.  Errors name the file and the fix.

    :raises EnrolmentNeeded: a peer that enrols on start has no certificate yet.
    """
    try:
        os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
    except OSError as error:
        raise usage.UsageError(
            f"cannot create the data directory {config.data_dir}: {error.strerror}; "
            "set --data-dir (or data-dir in --config) to a directory the role's user may write"
        ) from None
    credentials = load_credentials(config, clock.seconds)
    users = secret = None
    if config.sip is not None:
        users = load_users(config.sip)
        if not config.sip.trusted_network:
            try:
                secret = load_or_create_secret(config.data_dir)
            except (OSError, ValueError) as error:
                raise usage.UsageError(f"the SIP nonce secret: {error}") from None
    try:
        admin_token = load_or_create_token(config.data_dir)
    except AdminTokenError as error:
        raise usage.UsageError(f"the admin API token: {error}") from None
    try:
        database = StateDatabase.open(config.data_dir / STATE_DB_FILE_NAME)
    except StateDatabaseError as error:
        raise usage.UsageError(str(error)) from None
    return RingState(
        credentials.identity,
        tuple(peer_cache.load(config.data_dir)),
        users,
        secret,
        admin_token,
        trust=credentials.trust,
        authority=credentials.authority,
        database=database,
    )


class RingRole(MultiService):
    """A ring member's services, with the parts the status page and tests look at."""

    log = Logger()

    def __init__(
        self, config: RingRoleConfig, node: OverlayNode, registry: CollectorRegistry
    ) -> None:
        super().__init__()
        self.config = config
        self.node = node
        self.registry = registry
        self.overlay: OverlayService | None = None
        self.sip: SipService | None = None
        self.traversal: TraversalService | None = None
        self.enrolment: EnrolmentServer | None = None

    def startService(self) -> None:
        warn_if_insecure(self.node)
        super().startService()

    def status(self) -> dict[str, Any]:
        """The whole ``/status`` document: the node, then the SIP and mediator sections."""
        document = overlay_status(self.node)
        document["role"] = self.config.role
        document["security"] = security_status(self.node)
        if self.sip is not None:
            document["sip"] = self.sip.status()
        if self.traversal is not None and self.config.mediator is not None:
            document["mediator"] = _mediator_status(self.traversal, self.config.mediator)
        return document


def security_status(node: OverlayOperations) -> dict[str, Any]:
    """How this node's certificates are checked: enrolled under which root, or insecure."""
    trust = node.certificates.trust
    if isinstance(trust, OverlayRootTrust):
        return {
            "mode": "enrolled",
            "overlay_root": root_fingerprint(trust.root_der),
            "user_name": node.identity.user_name,
        }
    return {"mode": "insecure", "warning": "self-signed certificates, no CA (--insecure)"}


def _mediator_status(traversal: TraversalService, config: MediatorClientConfig) -> dict[str, Any]:
    client = traversal.client
    observed = client.observed
    return {
        "endpoint": config.endpoint,
        "registered": client.online,
        "id": client.client_id,
        "observed": f"{observed[0]}:{observed[1]}" if observed else None,
    }


def _traversal(
    config: MediatorClientConfig,
    reactor: HolePunchReactor,
    clock: IReactorTime,
    node_id: int,
    incoming: MediatedIncoming,
) -> TraversalService:
    """
    The mediator client: registered under our Node-ID in hex, peers' links
    to ``incoming``; ``clock`` (the same reactor) schedules its reconnects.
    """
    client = TraversalClient(
        reactor,
        clientFromString(reactor, config.endpoint),
        id_hex(node_id),
        config.secret,
        accept=incoming.accept,
        on_incoming=incoming.made,
    )
    return TraversalService(client, clock=clock)


def warn_if_insecure(node: OverlayOperations) -> None:
    """The loud start-up line of a node of an ``--insecure`` ring."""
    if node.certificates.trust.insecure:
        _log.critical(
            "INSECURE: --insecure ring of self-signed certificates without a CA: anyone can "
            "join it and write any user's registration; for development only"
        )


def link_security(
    state: RingState, reactor: IRoleReactor, key_log_path: Path | None
) -> LinkSecurity:
    """
    The TLS every overlay link runs (mutually authenticated, judged by the
    same trust as the node's message signatures), with the key log of
    ``--overlay-tls-key-log`` if asked for.
    """
    key_log = None
    if key_log_path is not None:
        key_log = KeyLogFile(key_log_path)
        _log.warn(
            "the overlay links' TLS secrets are written to {path} (--overlay-tls-key-log): "
            "whoever reads it can decrypt this node's overlay traffic",
            path=str(key_log_path),
        )
    return LinkSecurity(state.identity, state.trust, reactor, key_log=key_log)


def make_ring_role(
    config: RingRoleConfig, reactor: IRoleReactor, state: RingState, *, freeze_gc: bool = True
) -> RingRole:
    """Build every part of a ring role from ``config`` and ``state``, wired together."""
    max_bytes = config.overlay.limits.max_message_bytes
    security = link_security(state, reactor, config.overlay_tls_key_log)
    stream = StreamConnector(reactor, reactor, max_bytes, security)
    connector: Connector = stream
    traversal = mediated = None
    if config.mediator is not None:
        incoming = MediatedIncoming()
        traversal = _traversal(
            config.mediator,
            as_hole_punch_reactor(reactor),
            reactor,
            state.identity.node_id,
            incoming,
        )
        mediated = MediatedConnector(
            stream,
            traversal,
            reactor,
            max_bytes,
            direct_timeout_seconds=config.mediator.direct_timeout_seconds,
            incoming=incoming,
            security=security,
        )
        connector = mediated
    node = OverlayNode(
        identity=state.identity,
        clock=reactor,
        connector=connector,
        advertised_host=config.advertised_host,
        advertised_port=0,
        config=config.overlay,
        trust=state.trust,
    )
    factory = inbound_link_factory(node, reactor, max_bytes, security)
    if mediated is not None:
        mediated.incoming.open(factory)
    registry = role_registry()
    OverlayMetrics(registry, lambda: node).watch(node)
    role = RingRole(config, node, registry)
    flusher = None
    if state.database is not None:
        # First child: it starts first and stops last, committing what the others staged.
        flusher = StateFlusher(state.database, reactor, threads=state_threads(reactor))
        flusher.setServiceParent(role)
        values = ValuePersistence(
            state.database,
            node.storage,
            node.membership,
            node.certificates,
            reactor,
            config.overlay.limits,
        )
        flusher.sources.append(values.stage_changes)
        values.setServiceParent(role)
    if traversal is not None:
        role.traversal = traversal
        traversal.setServiceParent(role)
    if state.authority is not None and config.security.authority is not None:
        # Before the overlay: peers may enrol while the ring is still forming.
        role.enrolment = bootstrap_enrolment_server(config, node, state.authority, reactor)
        role.enrolment.setServiceParent(role)
    role.overlay = OverlayService(
        node,
        endpoint=serverFromString(reactor, config.listen),
        factory=ConnectionLimitFactory(
            factory,
            reactor,
            config.overlay_connections_per_source,
            MAX_OVERLAY_CONNECTIONS,
            what="overlay",
            hint="--overlay-connections-per-source",
        ),
        advertised_host=config.advertised_host,
        advertised_because=config.advertised_because,
        bootstrap=config.bootstrap,
        known_peers=state.known_peers,
        data_dir=config.data_dir,
        found_ring=config.found_ring,
        clock=reactor,
        save_interval_seconds=config.overlay.update_interval_seconds,
        mediated=mediated,
        listen_description=config.listen,
        stop_role=stopper(reactor),
    )
    role.overlay.setServiceParent(role)
    if config.sip is not None:
        stack = build_sip_stack(
            config.sip, node, reactor, state.users, state.nonce_secret, config.advertised_host
        )
        bindings = None
        if flusher is not None:
            bindings = BindingStore(flusher.database, stack.registrar)
        role.sip = SipService(
            stack,
            reactor,
            joined=role.overlay.joined,
            freeze_gc=freeze_gc,
            user_certificates=UserCertificates(config.data_dir),
            bindings=bindings,
            legacy_bindings_file=config.data_dir / LEGACY_BINDINGS_FILE_NAME,
        )
        role.sip.add_metrics(registry)
        role.sip.setServiceParent(role)
    site = build_site(
        status=role.status,
        metrics=registry,
        api=overlay_api_routes(node),
        admin_token=state.admin_token,
        title=config.title,
        ring_page=True,
        allowed_hosts=config.http_allowed_hosts,
        reactor=reactor,
    )
    http_service(config.http, site, reactor).setServiceParent(role)
    if config.debug_memory_signal:
        MemoryReportService(lambda report: reactor.callLater(0, report)).setServiceParent(role)
    return role


def make_ring_service(
    config: RingRoleConfig, reactor: IRoleReactor | None = None
) -> RingRole | FirstEnrolment:
    """
    ``makeService`` of the bootstrap and peer roles: read the state, then build.

    A peer told to enrol on start that has no certificate yet gets a
    :class:`FirstEnrolment`, which enrols once the reactor runs and then
    builds and starts the ring role.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = as_role_reactor(global_reactor)
    role_reactor = reactor
    try:
        state = load_ring_state(config, role_reactor)
    except EnrolmentNeeded as needed:
        return FirstEnrolment(
            config,
            role_reactor,
            lambda: make_ring_role(config, role_reactor, load_ring_state(config, role_reactor)),
            str(needed),
        )
    return make_ring_role(config, role_reactor, state)

"""
What the bootstrap and peer roles share: both are ring members that can
also serve SIP, built the same way from a frozen :class:`RingRoleConfig`.

``make_ring_role`` composes finished parts; no part is created when
twistd starts the service.  The children of the returned
:class:`RingRole` start in this order and stop in the reverse one:

1. the mediator client (with ``--mediator``), so that links the node
   cannot make directly can be asked for as soon as it joins;
2. the overlay service: listen, found or join the ring; on stop, Leave;
3. the SIP service (with ``--sip``): listeners, registrar and proxy;
4. the HTTP site: status page, ``/metrics`` and the admin API.

The node key, the known peers, the users file and the nonce secret are
read (and the key made, on first start) by :func:`load_ring_state`, which
``makeService`` calls; tests pass their own :class:`RingState` instead.
"""

from __future__ import annotations

import os
from typing import Any

from attrs import frozen
from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import IReactorTime
from twisted.python import usage

from p2psip.util.reactor import (
    HolePunchReactor,
    IRoleReactor,
    as_hole_punch_reactor,
    as_role_reactor,
)
from p2psip.enrolment.user_certificates import UserCertificates
from p2psip.nat.traversal import TraversalClient
from p2psip.nat.traversal_service import TraversalService
from p2psip.overlay import peer_cache
from p2psip.overlay.identity import IdentityError, NodeIdentity
from p2psip.overlay.links import Connector, FramedLinkFactory, StreamConnector
from p2psip.overlay.mediated import MediatedConnector, MediatedIncoming
from p2psip.overlay.metrics import OverlayMetrics
from p2psip.overlay.node import OverlayNode
from p2psip.roles.overlay_api import overlay_api_routes
from p2psip.roles.overlay_service import OverlayService
from p2psip.roles.ring_options import MediatorClientConfig, RingRoleConfig
from p2psip.roles.sip_service import SipService, build_sip_stack, load_or_create_secret, load_users
from p2psip.sip.users import UsersFile
from p2psip.util.admin_token import AdminTokenError, load_or_create_token
from p2psip.util.connection_limit import ConnectionLimitFactory
from p2psip.util.ids import id_hex
from p2psip.util.metrics import role_registry
from p2psip.web.overlay_status import overlay_status
from p2psip.web.site import build_site, http_service


#: Inbound overlay connections at once, from everyone.
MAX_OVERLAY_CONNECTIONS = 1024


@frozen
class RingState:
    """What a ring role reads from disk before it is built."""

    identity: NodeIdentity
    known_peers: tuple[peer_cache.KnownPeer, ...] = ()
    users: UsersFile | None = None
    nonce_secret: bytes | None = None
    #: Without one the admin API refuses every request.
    admin_token: str | None = None


def load_ring_state(config: RingRoleConfig) -> RingState:
    """
    Read the role's files in ``--data-dir`` (made, mode 0700, if missing):
    the node key and the admin API token (made on first start), the known
    peers, and for SIP the users file and the nonce secret.  Errors name
    the file and the fix.
    """
    try:
        os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
    except OSError as error:
        raise usage.UsageError(
            f"cannot create the data directory {config.data_dir}: {error.strerror}; "
            "set --data-dir (or data-dir in --config) to a directory the role's user may write"
        ) from None
    try:
        identity = NodeIdentity.load_or_create(config.data_dir)
    except IdentityError as error:
        raise usage.UsageError(str(error)) from None
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
    return RingState(identity, tuple(peer_cache.load(config.data_dir)), users, secret, admin_token)


class RingRole(MultiService):
    """A ring member's services, with the parts the status page and tests look at."""

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

    def status(self) -> dict[str, Any]:
        """The whole ``/status`` document: the node, then the SIP and mediator sections."""
        document = overlay_status(self.node)
        document["role"] = self.config.role
        if self.sip is not None:
            document["sip"] = self.sip.status()
        if self.traversal is not None and self.config.mediator is not None:
            document["mediator"] = _mediator_status(self.traversal, self.config.mediator)
        return document


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


def make_ring_role(
    config: RingRoleConfig, reactor: IRoleReactor, state: RingState, *, freeze_gc: bool = True
) -> RingRole:
    """Build every part of a ring role from ``config`` and ``state``, wired together."""
    max_bytes = config.overlay.limits.max_message_bytes
    stream = StreamConnector(reactor, reactor, max_bytes)
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
        )
        connector = mediated
    node = OverlayNode(
        identity=state.identity,
        clock=reactor,
        connector=connector,
        advertised_host=config.advertised_host,
        advertised_port=0,
        config=config.overlay,
    )
    factory = FramedLinkFactory(node, reactor, max_bytes)
    if mediated is not None:
        mediated.incoming.open(factory)
    registry = role_registry()
    OverlayMetrics(registry, lambda: node).watch(node)
    role = RingRole(config, node, registry)
    if traversal is not None:
        role.traversal = traversal
        traversal.setServiceParent(role)
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
        bootstrap=config.bootstrap,
        known_peers=state.known_peers,
        data_dir=config.data_dir,
        found_ring=config.found_ring,
        clock=reactor,
        save_interval_seconds=config.overlay.update_interval_seconds,
        mediated=mediated,
    )
    role.overlay.setServiceParent(role)
    if config.sip is not None:
        stack = build_sip_stack(
            config.sip, node, reactor, state.users, state.nonce_secret, config.advertised_host
        )
        role.sip = SipService(
            stack,
            reactor,
            joined=role.overlay.joined,
            freeze_gc=freeze_gc,
            user_certificates=UserCertificates(config.data_dir),
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
    return role


def make_ring_service(config: RingRoleConfig, reactor: IRoleReactor | None = None) -> RingRole:
    """``makeService`` of the bootstrap and peer roles: read the state, then build."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = as_role_reactor(global_reactor)
    return make_ring_role(config, reactor, load_ring_state(config))

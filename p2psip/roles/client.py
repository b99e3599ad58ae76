"""
``twistd p2psip-client``: a thin client, a RELOAD client with a SIP adaptor.

The client attaches to one peer of the ring (RFC 6940 s3.2.1,
:mod:`p2psip.overlay.client`) and runs, on top of that attachment, the
same SIP stack a super-node runs (:func:`~p2psip.roles.sip_service.build_sip_stack`):
an ordinary SIP phone on this host registers with the adaptor (default
``udp:5062`` and ``tcp:5062`` on 127.0.0.1) and calls through it without
knowing about the overlay.

* **Registrations** are stored by the client itself, signed with its
  user's certificate (``p2psip enrol --user AOR --data-dir DIR`` issues
  one for the client's own key and Node-ID), as a SIP-REGISTRATION entry
  keyed by the client's Node-ID; they are stored again every time the
  client attaches to a new peer.
* **Calls** to other users are looked up in the overlay and sent to the
  node that serves the callee, found with AppAttach: when both ends are
  thin clients, SIP goes straight from one client's adaptor to the
  other's.  Calls to the phone arrive the same way: AppAttach to the
  client's Node-ID reaches it through its attachment peer and answers
  with the adaptor's address.

* **Behind a NAT**, with ``--mediator``, the client logs in to the STUNT
  mediator under its Node-ID and its SIP to other clients goes over TCP,
  through the mediator when the announced address does not answer
  (:mod:`p2psip.roles.client_traversal`).

The children start in this order and stop in the reverse one: the
mediator client (with ``--mediator``), the attachment service, the SIP
service, the HTTP site (status page,
``/status`` with the attachment peer, registrations and calls,
``/metrics``, and the admin API: ``p2psip put|get|lookup|ring`` work
against a client as against a peer).
"""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import clientFromString

from p2psip.enrolment.user_certificates import UserCertificates
from p2psip.nat.traversal import TraversalClient
from p2psip.nat.traversal_service import TraversalService
from p2psip.overlay.client import OverlayClient
from p2psip.overlay.links import StreamConnector
from p2psip.overlay.metrics import OverlayMetrics
from p2psip.roles.client_options import ClientConfig, is_loopback_host
from p2psip.roles.client_options import Options as ClientOptions
from p2psip.roles.client_service import ClientOverlayService
from p2psip.roles.client_traversal import SipStreams
from p2psip.roles.enrolment_service import FirstEnrolment
from p2psip.roles.overlay_api import overlay_api_routes
from p2psip.roles.ring_credentials import EnrolmentNeeded
from p2psip.roles.sip_service import SipService, build_sip_stack
from p2psip.roles.super_node import (
    RingState,
    link_security,
    load_ring_state,
    security_status,
    warn_if_insecure,
)
from p2psip.sip.binding_store import BindingStore
from p2psip.sip.registrar import Registrar
from p2psip.util.ids import id_hex
from p2psip.util.logs import Logger
from p2psip.util.metrics import role_registry
from p2psip.util.reactor import IRoleReactor, as_hole_punch_reactor, as_role_reactor, stopper
from p2psip.util.state_db import StateFlusher, state_threads
from p2psip.web.site import build_site, http_service

#: Calls kept for /status, newest last.
RECENT_CALLS = 20

_log = Logger()


class CallLog:
    """
    The calls set up through this client, for ``/status``: counts and the
    most recent outcomes with their set-up times (a ``CallSetupObserver``
    of the proxy).
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.started = 0
        self.answered = 0
        self.failed = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_CALLS)
        self._first: float | None = None

    def first_response_sent(self, status: int, seconds: float) -> None:
        self.started += 1
        self._first = seconds

    def final_response_sent(self, status: int, seconds: float) -> None:
        if 200 <= status < 300:
            self.answered += 1
        else:
            self.failed += 1
        self.recent.append(
            {
                "status": status,
                "first_response_ms": round((self._first or seconds) * 1000.0, 1),
                "final_response_ms": round(seconds * 1000.0, 1),
                "at": round(self.clock.seconds(), 3),
            }
        )
        self._first = None

    def status(self, requests_in_progress: int) -> dict[str, Any]:
        return {
            "started": self.started,
            "answered": self.answered,
            "failed": self.failed,
            #: Proxied requests whose server transaction has not ended yet.
            "requests_in_progress": requests_in_progress,
            "recent": list(self.recent),
        }


class ClientRole(MultiService):
    """The thin client's services, with the parts the status page and tests look at."""

    log = Logger()

    def __init__(
        self, config: ClientConfig, client: OverlayClient, registry: CollectorRegistry
    ) -> None:
        super().__init__()
        self.config = config
        self.client = client
        self.registry = registry
        self.overlay: ClientOverlayService | None = None
        self.sip: SipService | None = None
        #: With --mediator: the mediator client and the SIP streams it makes.
        self.traversal: TraversalService | None = None
        self.streams: SipStreams | None = None
        self.calls = CallLog(client.clock)
        self._reach_warned = False

    def startService(self) -> None:
        warn_if_insecure(self.client)
        super().startService()

    def warn_if_unreachable(self) -> None:
        """
        Warn, once, when the adaptor announces a loopback address to a ring
        on other hosts: calls from there could not reach this phone.
        """
        link = self.client.attacher.link
        if self._reach_warned or self.sip is None or self.sip.advertised is None or link is None:
            return
        peer_host = link.remote_address.rsplit(":", 1)[0].strip("[]")
        if is_loopback_host(self.sip.advertised[0]) and not is_loopback_host(peer_host):
            self._reach_warned = True
            self.log.warn(
                "the SIP adaptor announces {address}, a loopback address, to a ring on other "
                "hosts: calls from there cannot reach this phone; add a --sip listener on a "
                "public interface (with --users) and set --sip-advertise",
                address=f"{self.sip.advertised[0]}:{self.sip.advertised[1]}",
            )

    def status(self) -> dict[str, Any]:
        """The whole ``/status`` document: the attachment, the registrations, the calls."""
        client = self.client
        attacher = client.attacher
        peer = client.attachment_peer
        address = client.peer_address(peer) if peer is not None else None
        now = client.clock.seconds()
        document: dict[str, Any] = {
            "role": "client",
            "insecure": client.certificates.trust.insecure,
            "node_id": id_hex(client.node_id),
            "overlay": client.config.overlay_name,
            "state": client.state.value,
            "security": security_status(client),
            "attachment": {
                "peer": id_hex(peer) if peer is not None else None,
                "address": f"{address[0]}:{address[1]}" if address else None,
                "attached_for_seconds": round(now - attacher.attached_at, 3)
                if peer is not None and attacher.attached_at is not None
                else None,
                "attachments": attacher.attachments,
                "last_reattach_seconds": attacher.last_reattach_seconds,
                "fallback": id_hex(attacher.fallback.node_id) if attacher.fallback else None,
            },
            "connections": [link.describe() for link in client.all_links()],
            "pending_transactions": client.pending_request_count(),
            "counters": dict(sorted(client.counters.items())),
        }
        if self.sip is not None:
            sip = self.sip.status()
            registrar = self.sip.registrar
            sip["registered"] = [
                {
                    "aor": aor,
                    "contacts": [str(b.contact.uri) for b in registrar.local_bindings(aor)],
                    "expires_in": max(
                        (int(b.expires_at - now) for b in registrar.local_bindings(aor)),
                        default=0,
                    ),
                }
                for aor in registrar.served_aors()
            ]
            if self.streams is not None:
                sip["paths"] = self.streams.status()
            document["sip"] = sip
            document["calls"] = self.calls.status(self.sip.proxy.pending_requests)
        if self.traversal is not None and self.config.mediator is not None:
            document["mediator"] = {
                "endpoint": self.config.mediator.endpoint,
                "id": id_hex(client.node_id),
                "registered": self.traversal.registered,
            }
        return document


def make_client_role(
    config: ClientConfig, reactor: IRoleReactor, state: RingState, *, freeze_gc: bool = True
) -> ClientRole:
    """Build every part of the thin client from ``config`` and ``state``, wired together."""
    security = link_security(state, reactor, config.overlay_tls_key_log)
    connector = StreamConnector(reactor, reactor, config.overlay.limits.max_message_bytes, security)
    client = OverlayClient(
        identity=state.identity,
        clock=reactor,
        connector=connector,
        config=config.overlay,
        trust=state.trust,
    )
    registry = role_registry()
    OverlayMetrics(registry, lambda: client).watch(client)
    role = ClientRole(config, client, registry)
    flusher = None
    if state.database is not None:
        # First child: it starts first and stops last, committing what the others staged.
        flusher = StateFlusher(state.database, reactor, threads=state_threads(reactor))
        flusher.setServiceParent(role)
    if config.mediator is not None:
        role.traversal, role.streams = _mediated_sip(config, reactor, client)
        role.traversal.setServiceParent(role)
    role.overlay = ClientOverlayService(
        client,
        bootstrap=config.bootstrap,
        known_peers=state.known_peers,
        data_dir=config.data_dir,
        clock=reactor,
        give_up=stopper(reactor),
    )
    role.overlay.setServiceParent(role)
    stack = build_sip_stack(config.sip, client, reactor, state.users, state.nonce_secret, "")
    stack.proxy.call_setup_observers.append(role.calls)
    bindings = None
    if flusher is not None:
        # Restored at start and stored in the overlay again once attached (_republish).
        bindings = BindingStore(flusher.database, stack.registrar)
    if role.streams is not None:
        role.streams.serve(stack.transport)
        stack.proxy.node_of_source = role.streams.node_of_source
    role.sip = SipService(
        stack,
        reactor,
        joined=role.overlay.attached,
        freeze_gc=freeze_gc,
        user_certificates=UserCertificates(config.data_dir),
        bindings=bindings,
    )
    role.overlay.reattached.append(lambda: _republish(stack.registrar))
    role.overlay.reattached.append(role.warn_if_unreachable)
    role.sip.add_metrics(registry)
    role.sip.setServiceParent(role)
    site = build_site(
        status=role.status,
        metrics=registry,
        api=overlay_api_routes(client),
        admin_token=state.admin_token,
        title=config.title,
        ring_page=True,
        allowed_hosts=config.http_allowed_hosts,
        reactor=reactor,
    )
    http_service(config.http, site, reactor).setServiceParent(role)
    return role


def _mediated_sip(
    config: ClientConfig, reactor: IRoleReactor, client: OverlayClient
) -> tuple[TraversalService, SipStreams]:
    """The mediator client, logged in under our Node-ID, and the SIP streams it carries."""
    mediator = config.mediator
    assert mediator is not None
    traversal_client = TraversalClient(
        as_hole_punch_reactor(reactor),
        clientFromString(reactor, mediator.endpoint),
        id_hex(client.node_id),
        mediator.secret,
        accept=lambda peer_id: streams.accept(peer_id),
        on_incoming=lambda result: streams.made(result),
    )
    traversal = TraversalService(traversal_client, clock=reactor)
    streams = SipStreams(
        reactor, traversal, client, direct_timeout_seconds=mediator.direct_timeout_seconds
    )
    return traversal, streams


def _republish(registrar: Registrar) -> None:
    """After every attachment: store the phones' registrations again, through the new peer."""
    registrar.republish()


class Options(ClientOptions):
    role: ClassVar[str] = "client"


def makeService(options: Options, reactor: IRoleReactor | None = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = as_role_reactor(global_reactor)
    role_reactor = reactor
    config = options.config
    try:
        state = load_ring_state(config, role_reactor)
    except EnrolmentNeeded as needed:
        return FirstEnrolment(
            config,
            role_reactor,
            lambda: make_client_role(config, role_reactor, load_ring_state(config, role_reactor)),
            str(needed),
        )
    return make_client_role(config, role_reactor, state)


__all__ = ["Options", "makeService", "make_client_role", "ClientRole", "CallLog"]

"""
The overlay part every ring role shares: options, the node's service, its
status page and admin API.

``makeService`` only wires objects together; the service opens the
listener, loads or creates the node key in ``--data-dir`` and joins the
ring when twistd starts it, and leaves the ring (RFC 6940 Leave) when
twistd stops it, e.g. on SIGTERM.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService, Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import usage

from p2psip.config import RoleOptions, client_endpoint, positive_float
from p2psip.nat.traversal import TraversalClient, TraversalService
from p2psip.overlay.codec import Limits
from p2psip.overlay.errors import OverlayError
from p2psip.overlay.identity import NodeIdentity
from p2psip.overlay.links import FramedLinkFactory, StreamConnector
from p2psip.overlay.mediated import DIRECT_CONNECT_TIMEOUT_SECONDS, MediatedConnector
from p2psip.overlay import peer_cache
from p2psip.overlay.metrics import OverlayMetrics
from p2psip.overlay.node import NodeState, OverlayConfig, OverlayNode
from p2psip.util.files import DataFileError
from p2psip.util.ids import MAX_ID, id_hex
from p2psip.util.metrics import role_registry
from p2psip.web.overlay_status import overlay_status
from p2psip.web.site import ApiError, ApiRoute, build_site, http_service


class OverlayOptions(RoleOptions):
    """Options of every role that is a member of the ring."""

    role: ClassVar[str] = ""
    repeatable: ClassVar[tuple[str, ...]] = ("bootstrap",)
    default_http: ClassVar[str] = "tcp:8084:interface=127.0.0.1"
    default_data_dir: ClassVar[str] = "/var/lib/p2psip"

    optParameters = [
        [
            "overlay-name",
            None,
            "p2psip.test",
            "Overlay (and SIP domain) name; every peer of a ring uses the same.",
        ],
        ["overlay", None, "tcp:6084", "Endpoint to listen on for RELOAD links, e.g. tcp:6084."],
        [
            "bootstrap",
            None,
            None,
            "Client endpoint of a bootstrap or known peer, e.g. tcp:198.51.100.1:6084.",
        ],
        [
            "http",
            None,
            None,
            "Endpoint of the status page, /metrics and admin API (loopback by default).",
        ],
        ["data-dir", None, None, "Directory for the node key and certificate."],
        [
            "advertise",
            None,
            None,
            "Address other peers use to reach this node (default: the listen interface or 127.0.0.1).",
        ],
        ["successors", None, 4, "Successor list size.", int],
        ["predecessors", None, 4, "Predecessor list size.", int],
        ["replicas", None, 2, "Copies of every value kept on the next successors.", int],
        [
            "update-interval",
            None,
            60.0,
            "Seconds between Chord Updates to neighbours (stabilisation).",
            float,
        ],
        [
            "ping-interval",
            None,
            15.0,
            "Seconds of silence before a link is pinged; twice this plus the request timeout declares a peer dead.",
            float,
        ],
        ["request-timeout", None, 15.0, "RELOAD transaction timeout in seconds.", float],
        ["max-message-size", None, 1_048_576, "Largest RELOAD message accepted, in bytes.", int],
        [
            "mediator",
            None,
            None,
            "Client endpoint of a p2psip-mediator's control port (e.g. tcp:198.51.100.9:3479): "
            "peers that a direct connect does not reach are reached through it.",
            client_endpoint,
        ],
        ["mediator-secret", None, None, "The mediator's shared secret (its [mediator] secret)."],
        [
            "mediator-secret-file",
            None,
            None,
            "File whose first line is the secret for the mediator (this node's line of its secrets file, "
            "or its shared secret); wins over --mediator-secret.",
        ],
        [
            "direct-connect-timeout",
            None,
            DIRECT_CONNECT_TIMEOUT_SECONDS,
            "Seconds a direct connect to a peer may take before the mediator is asked.",
            positive_float,
        ],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        self["http"] = self["http"] or self.default_http
        self["data-dir"] = self["data-dir"] or os.path.join(self.default_data_dir, self.role)
        for name in ("successors", "predecessors"):
            if self[name] < 1:
                raise usage.UsageError(f"--{name} must be at least 1")
        if self["replicas"] < 0 or self["replicas"] > self["successors"]:
            raise usage.UsageError("--replicas must be between 0 and --successors")
        for name in ("update-interval", "ping-interval", "request-timeout"):
            if self[name] <= 0:
                raise usage.UsageError(f"--{name} must be a positive number of seconds")
        if self["max-message-size"] < 4096:
            raise usage.UsageError("--max-message-size must be at least 4096 bytes")
        self["mediator-secret-bytes"] = self._mediator_secret()

    def _mediator_secret(self) -> bytes | None:
        """The secret for the mediator's challenge, read now so a bad file stops the role at once."""
        path = self["mediator-secret-file"]
        if path:
            try:
                with open(path, encoding="utf-8") as secret_file:
                    secret = secret_file.readline().strip()
            except OSError as error:
                raise usage.UsageError(
                    f"cannot read --mediator-secret-file {path}: {error.strerror}; "
                    "fix the path or the file's permissions"
                ) from None
            if not secret:
                raise usage.UsageError(
                    f"--mediator-secret-file {path} is empty; put the secret on its first line"
                )
            return secret.encode("utf-8")
        if self["mediator-secret"]:
            return str(self["mediator-secret"]).encode("utf-8")
        if self["mediator"]:
            raise usage.UsageError(
                "--mediator needs the secret it checks: give --mediator-secret or --mediator-secret-file "
                f"(or 'mediator-secret-file' in the [{self.role}] section of --config)"
            )
        return None

    def overlay_config(self) -> OverlayConfig:
        return OverlayConfig(
            overlay_name=self["overlay-name"],
            successors=self["successors"],
            predecessors=self["predecessors"],
            replicas=self["replicas"],
            update_interval_seconds=self["update-interval"],
            ping_interval_seconds=self["ping-interval"],
            request_timeout_seconds=self["request-timeout"],
            limits=Limits(max_message_bytes=self["max-message-size"]),
        )


def _listen_interface(description: str) -> str | None:
    for part in description.split(":"):
        if part.startswith("interface="):
            return part.split("=", 1)[1].replace("\\", "")
    return None


#: Delay between a neighbour change and saving the known peers (coalesces bursts).
PEER_SAVE_DELAY_SECONDS = 1.0


class OverlayService(Service):
    """Runs one :class:`OverlayNode`: listen, join (or found) the ring, leave on stop."""

    log = Logger()
    JOIN_RETRY_SECONDS = 5.0

    def __init__(self, options: OverlayOptions, reactor: Any, found_ring: bool) -> None:
        self.options = options
        self.reactor = reactor
        self.found_ring = found_ring
        self.node: OverlayNode | None = None
        self.port: IListeningPort | None = None
        self.joined: Deferred[None] = Deferred()
        self._retry: Any = None
        #: More sections of ``/status`` (the peer's ``sip``), by name.
        self.status_sections: dict[str, Callable[[], Any]] = {}
        #: The ``/metrics`` registry, set by :func:`make_overlay_role`.
        self.registry: CollectorRegistry | None = None
        #: Times the node's requests once it exists (made by :meth:`metrics`).
        self.overlay_metrics: OverlayMetrics | None = None
        self.traversal: TraversalService | None = None
        self.mediated: MediatedConnector | None = None
        #: Peers saved by an earlier run (see p2psip.overlay.peer_cache).
        self.known_peers: list[peer_cache.KnownPeer] = []
        self._saved_peers: list[peer_cache.KnownPeer] = []
        self._save_error = ""
        self._save_peers_call: LoopingCall | None = None
        self._pending_peer_save: Any = None

    def startService(self) -> Any:
        super().startService()
        options = self.options
        config = options.overlay_config()
        os.makedirs(options["data-dir"], mode=0o700, exist_ok=True)
        identity = NodeIdentity.load_or_create(options["data-dir"])
        self.known_peers = peer_cache.load(options["data-dir"])
        stream = StreamConnector(self.reactor, self.reactor, config.limits.max_message_bytes)
        connector: StreamConnector | MediatedConnector = stream
        if options["mediator"]:
            self.mediated = connector = self._start_traversal(
                stream, identity.node_id, config.limits.max_message_bytes
            )
        node = OverlayNode(
            identity=identity,
            clock=self.reactor,
            connector=connector,
            advertised_host="0.0.0.0",
            advertised_port=0,
            config=config,
        )
        self.node = node
        if self.overlay_metrics is not None:
            self.overlay_metrics.watch(node)
        endpoint = serverFromString(self.reactor, options["overlay"])
        factory = FramedLinkFactory(node, self.reactor, config.limits.max_message_bytes)
        if self.mediated is not None:
            self.mediated.inbound_factory = factory
        d = endpoint.listen(factory)
        d.addCallback(self._listening)
        return d

    def _start_traversal(
        self, stream: StreamConnector, node_id: int, max_message_bytes: int
    ) -> MediatedConnector:
        """Register at the mediator under our Node-ID and connect through it."""
        options = self.options
        traversal = TraversalService(
            TraversalClient(
                self.reactor,
                clientFromString(self.reactor, options["mediator"]),
                id_hex(node_id),
                options["mediator-secret-bytes"],
            )
        )
        connector = MediatedConnector(
            stream,
            traversal,
            self.reactor,
            max_message_bytes,
            direct_timeout_seconds=options["direct-connect-timeout"],
        )
        traversal.client.accept = connector.accept_incoming
        traversal.client.on_incoming = connector.incoming_made
        self.traversal = traversal
        self.status_sections["mediator"] = self._mediator_status
        traversal.startService()
        return connector

    def _mediator_status(self) -> dict[str, Any]:
        assert self.traversal is not None
        client = self.traversal.client
        return {
            "endpoint": self.options["mediator"],
            "registered": client.online,
            "id": client.client_id,
            "observed": f"{client.observed[0]}:{client.observed[1]}" if client.observed else None,
        }

    def _listening(self, port: IListeningPort) -> None:
        assert self.node is not None
        self.port = port
        host = port.getHost()
        assert isinstance(host, (IPv4Address, IPv6Address)), host
        advertise = (
            self.options["advertise"] or _listen_interface(self.options["overlay"]) or "127.0.0.1"
        )
        if advertise in ("0.0.0.0", "::"):
            advertise = "127.0.0.1"
        self.node.set_advertised_address(advertise, host.port)
        self.log.info(
            "overlay {overlay}: node {node} listening on {address}",
            overlay=self.options["overlay-name"],
            node=id_hex(self.node.node_id),
            address=f"{advertise}:{host.port}",
        )
        cached = [peer.endpoint for peer in self.known_peers if peer.node_id != self.node.node_id]
        endpoints = list(dict.fromkeys([*self.options["bootstrap"], *cached]))
        if self.found_ring or not self.options["bootstrap"]:
            if cached:
                # A restarted founder rejoins the ring it knew rather than
                # starting a second one beside it; only when none of its old
                # peers answers does it found a new ring.
                self.log.info(
                    "trying {count} peers known from {path} before founding a ring",
                    count=len(cached),
                    path=os.path.join(self.options["data-dir"], peer_cache.FILE_NAME),
                )
                self._try_join(cached, found_if_none=True)
            else:
                self._found()
        else:
            self._try_join(endpoints)

    def _found(self) -> None:
        assert self.node is not None
        self.node.start_alone()
        self._joined_ring()

    def _joined_ring(self) -> None:
        assert self.node is not None
        if not self.joined.called:
            self.joined.callback(None)
        # Save soon after the neighbourhood changes (a peer killed moments
        # after it joined must still find its ring again), and now and then
        # anyway, since addresses are learned without a neighbour change.
        self.node.neighbour_observers.append(self._schedule_peer_save)
        self._save_peers_call = LoopingCall(self._save_known_peers)
        self._save_peers_call.clock = self.reactor
        self._save_peers_call.start(self.options["update-interval"], now=False)

    def _schedule_peer_save(self) -> None:
        if self._pending_peer_save is None or not self._pending_peer_save.active():
            self._pending_peer_save = self.reactor.callLater(
                PEER_SAVE_DELAY_SECONDS, self._save_known_peers
            )

    def _try_join(self, endpoints: list[str], found_if_none: bool = False) -> None:
        assert self.node is not None
        node = self.node

        def failed(failure: Any) -> None:
            if not self.running:
                return
            node.stop()
            if found_if_none:
                self.log.info(
                    "no known peer answered ({why}); founding a new ring",
                    why=failure.getErrorMessage(),
                )
                self._found()
                return
            self.log.warn(
                "joining the ring failed: {why}; retrying in {seconds:g} s",
                why=failure.getErrorMessage(),
                seconds=self.JOIN_RETRY_SECONDS,
            )
            self._retry = self.reactor.callLater(self.JOIN_RETRY_SECONDS, self._try_join, endpoints)

        def succeeded(_: object) -> None:
            self._joined_ring()
            self._save_known_peers()

        node.join(endpoints).addCallbacks(succeeded, failed)

    def _save_known_peers(self) -> None:
        """Keep the ring members we know in the data directory, for the next start."""
        if self.node is None:
            return
        peers = [peer_cache.KnownPeer(*entry) for entry in self.node.known_peer_addresses()]
        if not peers or peers == self._saved_peers:
            return
        try:
            peer_cache.save(self.options["data-dir"], peers)
        except DataFileError as error:
            if str(error) != self._save_error:
                self.log.warn("{why}; a restart will join through --bootstrap only", why=str(error))
            self._save_error = str(error)
            return
        self._saved_peers = peers
        self._save_error = ""

    @inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._save_peers_call is not None and self._save_peers_call.running:
            self._save_peers_call.stop()
        if self._pending_peer_save is not None and self._pending_peer_save.active():
            self._pending_peer_save.cancel()
        if self.node is not None and self.node.state == NodeState.JOINED:
            self._save_known_peers()
        if self.mediated is not None:
            # A leaving node takes no new peers' connections.
            self.mediated.inbound_factory = None
        if self.node is not None:
            try:
                yield self.node.leave()
            except Exception:
                self.log.failure("while leaving the ring")
            self.node.stop()
        if self.traversal is not None and self.traversal.running:
            yield self.traversal.stopService()
        if self.port is not None:
            yield self.port.stopListening()

    # -- status and admin API ------------------------------------------

    def status(self) -> dict[str, Any]:
        if self.node is None:
            return {"state": "starting", "role": self.options.role}
        document = overlay_status(self.node)
        document["role"] = self.options.role
        for name, section in self.status_sections.items():
            document[name] = section()
        return document

    def _node(self) -> OverlayNode:
        if self.node is None:
            raise ApiError(503, "the node is still starting")
        return self.node

    def _name(self, args: dict[str, str], body: dict[str, Any] | None) -> str:
        name = (body or {}).get("name") or args.get("name")
        if not name or not isinstance(name, str):
            raise ApiError(400, 'give the resource name as ?name=NAME (or JSON {"name": ...})')
        return name

    def api_routes(self) -> dict[str, ApiRoute]:
        def as_api_error(failure: Any) -> Any:
            if failure.check(OverlayError):
                raise ApiError(502, failure.getErrorMessage())
            return failure

        def put(args: dict[str, str], body: dict[str, Any] | None) -> Any:
            name = self._name(args, body)
            value = (body or {}).get("value", args.get("value"))
            if not isinstance(value, str):
                raise ApiError(400, 'give the value as JSON {"value": "..."}')
            raw_lifetime = (body or {}).get("lifetime", args.get("lifetime", 3600))
            try:
                lifetime = int(raw_lifetime)
            except (TypeError, ValueError):
                raise ApiError(400, "lifetime must be a whole number of seconds") from None
            if not 1 <= lifetime <= 0xFFFFFFFF:
                raise ApiError(400, "lifetime must be between 1 and 4294967295 seconds")
            return (
                self._node()
                .put(name, value.encode("utf-8"), lifetime)
                .addCallbacks(lambda result: result.as_json(), as_api_error)
            )

        def get(args: dict[str, str], body: dict[str, Any] | None) -> Any:
            return (
                self._node()
                .get(self._name(args, body))
                .addCallbacks(lambda result: result.as_json(), as_api_error)
            )

        def lookup(args: dict[str, str], body: dict[str, Any] | None) -> Any:
            return (
                self._node()
                .lookup(self._name(args, body))
                .addCallbacks(lambda result: result.as_json(), as_api_error)
            )

        def ring(args: dict[str, str], body: dict[str, Any] | None) -> Any:
            return walk_ring(self._node()).addErrback(as_api_error)

        return {
            "put": ApiRoute(("POST",), put),
            "get": ApiRoute(("GET",), get),
            "lookup": ApiRoute(("GET",), lookup),
            "ring": ApiRoute(("GET",), ring),
        }

    def metrics(self) -> CollectorRegistry:
        """
        The role's ``/metrics`` registry: process metrics and the node's.

        The node usually does not exist yet (``startService`` makes it), so
        its numbers are read through ``self.node`` at scrape time, and its
        requests are timed from the moment it is made.
        """
        registry = role_registry()
        self.overlay_metrics = OverlayMetrics(registry, lambda: self.node)
        if self.node is not None:
            self.overlay_metrics.watch(self.node)
        return registry


MAX_RING_WALK = 4096


@inlineCallbacks
def walk_ring(node: OverlayNode) -> Any:
    """
    Every peer of the ring in order, found by asking for the owner of
    (peer + 1) from one peer to the next.
    """
    nodes = [
        {
            "node_id": id_hex(node.node_id),
            "address": f"{node.advertised_host}:{node.advertised_port}",
        }
    ]
    current = node.node_id
    complete = False
    for _ in range(MAX_RING_WALK):
        owner, (host, port) = yield node.find_owner((current + 1) & MAX_ID)
        if owner == node.node_id:
            complete = True
            break
        nodes.append({"node_id": id_hex(owner), "address": f"{host}:{port}"})
        current = owner
    return {"nodes": nodes, "complete": complete, "count": len(nodes)}


def make_overlay_role(
    options: OverlayOptions, reactor: Any, found_ring: bool, title: str
) -> tuple[MultiService, OverlayService]:
    """The MultiService of a ring role: the overlay node plus its HTTP site."""
    top = MultiService()
    overlay = OverlayService(options, reactor, found_ring)
    overlay.setServiceParent(top)
    overlay.registry = overlay.metrics()
    site = build_site(
        status=overlay.status,
        metrics=overlay.registry,
        api=overlay.api_routes(),
        title=title,
        ring_page=True,
        reactor=reactor,
    )
    http_service(options["http"], site, reactor).setServiceParent(top)
    return top, overlay


__all__ = ["OverlayOptions", "OverlayService", "make_overlay_role", "walk_ring", "succeed"]

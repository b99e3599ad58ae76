"""
SIP between thin clients behind NATs: to the address AppAttach gave, else through the mediator.

A thin client's adaptor announces with AppAttach (RFC 6940 s5.5.2) the
address it listens on, which behind a NAT is a private or loopback one
that the other client cannot reach.  With ``--mediator`` the client logs
in to the STUNT mediator under its Node-ID in hex, as ring members do, its
SIP goes to other nodes over TCP, and :class:`SipStreams` opens those
streams for its SIP transport (``SipTransport.stream_connector``):

1. a TCP connect to the announced address, with the short
   ``direct-connect-timeout``; skipped for a loopback address of another
   node (it would lead back to this host) and, after one failed, for a
   while (``DIRECT_RETRY_AFTER_SECONDS``);
2. else a connection by Node-ID through the mediator, which picks the
   method: direct (the other side is reachable), TCP simultaneous open,
   the low-TTL SYN, or its relay.  The Node-ID is the one whose AppAttach
   answer named the address (``OverlayOperations.node_serving_at``).

Streams the mediator brings in from other clients are SIP connections of
the adaptor (:meth:`SipStreams.accept`).  On every stream to or from
another node REGISTER is refused (403): the adaptor takes registrations
without a password because only this host's phones can reach its
loopback listeners, and the mediator must not change that.  Each path taken, either way, is
logged and counted for ``/status`` (``sip.paths``): ``app-attach`` for the
plain connect, else the mediator's method name.  A mediated stream's far
end is the NAT's or the relay's address, not the one the node announces,
so the proxy learns from :meth:`SipStreams.node_of_source` which node it
is with (and trusts that node's Record-Route as it trusts a ring member's).  The SIP itself is not
encrypted end to end here (no TLS between adaptors), so the mediator's
relay could read it, as any SIP proxy on the way could.
"""

from __future__ import annotations

import collections
import ipaddress
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IAddress, IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory

from p2psip.nat.traversal import TraversalClient, TraversalError, TraversalResult
from p2psip.overlay.mediated import DIRECT_RETRY_AFTER_SECONDS, REGISTRATION_WAIT_SECONDS
from p2psip.sip.transaction import Hop
from p2psip.sip.transport import SipStreamProtocol, SipTransport
from p2psip.util.ids import id_hex, id_short, node_id_from_hex
from p2psip.util.logs import Logger
from p2psip.util.reactor import IRoleReactor

#: The path name of a stream opened straight to the AppAttach address.
APP_ATTACH_PATH = "app-attach"
#: Streams kept for /status, newest last.
RECENT_STREAMS = 20
#: What other nodes may not send over a stream to or from them.
REFUSED_FROM_NODES = frozenset({"REGISTER"})


class NodesByAddress(Protocol):
    """What :class:`SipStreams` needs of the overlay client."""

    def node_serving_at(self, host: str, port: int) -> int | None: ...


class Registration(Protocol):
    """What :class:`SipStreams` needs of ``TraversalService``."""

    registered: bool

    def when_registered(self) -> Deferred[TraversalClient]: ...


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class _NodeStreamFactory(Factory):
    """SIP connections with another node: the transport's, without REGISTER."""

    def __init__(self, transport: SipTransport) -> None:
        self.transport = transport

    def buildProtocol(self, addr: IAddress | None) -> SipStreamProtocol:
        protocol = SipStreamProtocol(self.transport)
        protocol.refused_methods = REFUSED_FROM_NODES
        return protocol


class SipStreams:
    """Opens the SIP adaptor's streams to other nodes, and takes the ones the mediator brings."""

    log = Logger()

    def __init__(
        self,
        reactor: IRoleReactor,
        registration: Registration,
        nodes: NodesByAddress,
        direct_timeout_seconds: float,
        registration_wait_seconds: float = REGISTRATION_WAIT_SECONDS,
    ) -> None:
        self.reactor = reactor
        self.registration = registration
        self.nodes = nodes
        self.direct_timeout_seconds = direct_timeout_seconds
        self.registration_wait_seconds = registration_wait_seconds
        self.transport: SipTransport | None = None
        self._factory: _NodeStreamFactory | None = None
        #: Streams opened by us and by others, by path.
        self.outgoing: collections.Counter[str] = collections.Counter()
        self.incoming: collections.Counter[str] = collections.Counter()
        self.failed = 0
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_STREAMS)
        #: Node-ID -> time until which the plain connect is skipped.
        self._direct_failed_until: dict[int, float] = {}
        #: The far end of each open mediated stream -> the node it is with.
        self._nodes_by_remote: dict[tuple[str, int], int] = {}

    def serve(self, transport: SipTransport) -> None:
        """Open ``transport``'s outbound streams, and hand it the mediator's inbound ones."""
        self.transport = transport
        self._factory = _NodeStreamFactory(transport)
        transport.stream_connector = self.connect

    def node_of_source(self, source: Hop) -> int | None:
        """
        The node a request's source is a mediated stream with (the proxy's
        ``node_of_source``): the mediator, which checked both ends' secrets,
        made the stream to or from that Node-ID, so a Record-Route naming it
        is that node's, though the stream's far end is not its announced address.
        """
        if source.transport.upper() != "TCP":
            return None
        return self._nodes_by_remote.get((source.host, source.port))

    def _with_node(self, protocol: IProtocol, node_id: int) -> None:
        if not isinstance(protocol, SipStreamProtocol):
            return
        remote = protocol.remote
        self._nodes_by_remote[remote] = node_id

        def closed(_: object) -> None:
            if self._nodes_by_remote.get(remote) == node_id:
                del self._nodes_by_remote[remote]

        protocol.closed.addCallback(closed)

    # -- outbound ----------------------------------------------------------------

    def connect(self, address: tuple[str, int], factory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        A stream to ``address``: straight there, else by Node-ID.  It is
        built by our node-stream factory (``factory``'s connections
        without REGISTER) once :meth:`serve` was called, else by ``factory``.
        """
        return Deferred.fromCoroutine(self._connect(address, self._factory or factory))

    async def _connect(self, address: tuple[str, int], factory: IProtocolFactory) -> IProtocol:
        host, port = address
        node_id = self.nodes.node_serving_at(host, port)
        started = self.reactor.seconds()
        if node_id is None:
            why = "not tried"
        elif _is_loopback(host):
            why = "not tried: a loopback address of another node"
        elif started < self._direct_failed_until.get(node_id, 0.0):
            why = "not tried: it failed recently"
        else:
            why = ""
        if not why or node_id is None:
            try:
                protocol = await self._direct(host, port, factory)
            except Exception as error:
                why = " ".join(str(error).split()) or error.__class__.__name__
                if node_id is None:
                    self.failed += 1
                    raise ConnectionError(
                        f"SIP connect to {host}:{port} failed ({why}), and no node is known to "
                        "serve there, so the mediator cannot be asked"
                    ) from None
                self._direct_failed_until[node_id] = started + DIRECT_RETRY_AFTER_SECONDS
                self.log.info(
                    "SIP connect to {node} at {address} failed ({why}); asking the mediator",
                    node=id_short(node_id),
                    address=f"{host}:{port}",
                    why=why,
                )
            else:
                if node_id is not None:
                    self._direct_failed_until.pop(node_id, None)
                    self._note("outgoing", node_id, APP_ATTACH_PATH, started)
                return protocol
        return await self._mediated(node_id, address, why, factory, started)

    async def _direct(self, host: str, port: int, factory: IProtocolFactory) -> IProtocol:
        endpoint_class = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        attempt: Deferred[IProtocol] = endpoint_class(
            self.reactor, host.strip("[]"), port, timeout=max(1, round(self.direct_timeout_seconds))
        ).connect(factory)
        attempt.addTimeout(self.direct_timeout_seconds, self.reactor)
        return await attempt

    async def _mediated(
        self,
        node_id: int,
        address: tuple[str, int],
        direct_why: str,
        factory: IProtocolFactory,
        started: float,
    ) -> IProtocol:
        where = f"{address[0]}:{address[1]}"
        waiting = self.registration.when_registered()
        waiting.addTimeout(self.registration_wait_seconds, self.reactor)
        try:
            client = await waiting
        except Exception as error:
            self.failed += 1
            raise ConnectionError(
                f"cannot reach node {id_short(node_id)}: SIP connect to {where} ({direct_why}); "
                f"not registered at the mediator ({error or 'timed out'}): check --mediator and "
                "its secret"
            ) from None
        try:
            result: TraversalResult = await client.connect(id_hex(node_id), factory)
        except Exception as error:
            self.failed += 1
            reason = error.reason if isinstance(error, TraversalError) else str(error)
            raise ConnectionError(
                f"cannot reach node {id_short(node_id)}: SIP connect to {where} ({direct_why}); "
                f"mediator: {reason}"
            ) from None
        self.log.info(
            "SIP stream to {node} made by the mediator: {method} in {seconds:.3f} s",
            node=id_short(node_id),
            method=result.method,
            seconds=result.setup_seconds,
        )
        self._note("outgoing", node_id, result.method, started)
        self._with_node(result.protocol, node_id)
        return result.protocol

    # -- inbound: the TraversalClient's accept and on_incoming --------------------

    def accept(self, peer_id: str) -> IProtocolFactory | None:
        """A stream from another node (a Node-ID in hex) is a SIP connection of the adaptor."""
        if self._factory is None:
            return None
        if node_id_from_hex(peer_id) is None:
            self.log.info(
                "refused a mediated stream from {peer!r}: not a Node-ID", peer=peer_id[:40]
            )
            return None
        return self._factory

    def made(self, result: TraversalResult) -> None:
        self.log.info(
            "SIP stream from {node} made by the mediator: {method}",
            node=result.peer_id[:8],
            method=result.method,
        )
        self._note("incoming", int(result.peer_id, 16), result.method, None)
        self._with_node(result.protocol, int(result.peer_id, 16))

    # -- /status ------------------------------------------------------------------

    def _note(self, direction: str, node_id: int, path: str, started: float | None) -> None:
        (self.outgoing if direction == "outgoing" else self.incoming)[path] += 1
        entry: dict[str, Any] = {"direction": direction, "node": id_hex(node_id), "path": path}
        if started is not None:
            entry["setup_ms"] = round((self.reactor.seconds() - started) * 1000.0, 1)
        self.recent.append(entry)

    def status(self) -> dict[str, Any]:
        """The ``sip.paths`` part of ``/status``: how streams to other nodes were made."""
        return {
            "mediator_registered": self.registration.registered,
            "outgoing": dict(sorted(self.outgoing.items())),
            "incoming": dict(sorted(self.incoming.items())),
            "failed": self.failed,
            "recent": list(self.recent),
        }


__all__ = ["SipStreams", "APP_ATTACH_PATH"]

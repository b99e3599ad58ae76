"""
Overlay links to peers behind NATs: a direct connect first, then the mediator.

A peer's Attach candidate is the address it listens on, which behind a NAT
is a private address nobody outside can reach.  ``MediatedConnector``
therefore tries that candidate with a short timeout and, when the connect
fails, asks the STUNT mediator (``p2psip.nat.traversal``) for a
connection to the peer, keyed by the peer's Node-ID in hex (every node
registers at the mediator under its own Node-ID).  The mediator picks the
method: direct (one side public), TCP simultaneous open, the low-TTL SYN,
or its relay.  The link records the method in ``path``, which the status
page shows.  Whatever the mediator hands over (a punched socket, a relayed
stream) is only a byte stream: the link's TLS (:mod:`p2psip.overlay.tls`)
runs end to end over it, so the relay sees ciphertext and the peer must
prove the Node-ID the mediator was asked for.

Connections the mediator brings in from other peers become inbound links
through :class:`MediatedIncoming`, whose :meth:`~MediatedIncoming.accept`
and :meth:`~MediatedIncoming.made` are the ``accept`` and ``on_incoming``
callbacks of the ``TraversalClient``; it exists before the node does, and
takes connections once the node's inbound factory is known.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IAddress, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from p2psip.nat.traversal import TraversalClient, TraversalError, TraversalResult
from p2psip.overlay.links import FramedStreamLink, Link, LinkListener
from p2psip.overlay.tls import LinkSecurity, unwrapped
from p2psip.util.ids import id_hex, id_short, node_id_from_hex
from p2psip.util.logs import Logger

#: How long the connect to a peer's own candidate may take before the
#: mediator is asked; unreachable private addresses often just time out.
DIRECT_CONNECT_TIMEOUT_SECONDS = 2.0
#: After a failed direct connect, peers are reached through the mediator
#: straight away for this long.
DIRECT_RETRY_AFTER_SECONDS = 300.0
#: Peers whose failed direct connect is remembered at most (oldest go first).
MAX_REMEMBERED_PEERS = 4096
#: How long a connect waits for the mediator registration (at startup).
REGISTRATION_WAIT_SECONDS = 10.0


def _reason(error: BaseException) -> str:
    """One line for the log: Twisted wraps some connect errors around a whole Failure."""
    for argument in error.args:
        if isinstance(argument, Failure):
            return f"{error.__class__.__name__}: {argument.getErrorMessage()}"
    return " ".join(str(error).split()) or error.__class__.__name__


class MediatedConnectFailed(ConnectionError):
    """Neither the direct connect nor the mediator reached the peer."""


class DirectConnector(TypingProtocol):
    """The plain connector underneath (``StreamConnector``)."""

    def connect(
        self, listener: LinkListener, host: str, port: int, peer_id: int | None = None
    ) -> Deferred[Link]: ...

    def connect_endpoint(self, listener: LinkListener, description: str) -> Deferred[Link]: ...


class Traversal(TypingProtocol):
    """What the connector needs of ``TraversalService``."""

    def when_registered(self) -> Deferred[TraversalClient]: ...


class _OutboundLinkFactory(Factory):
    """Builds the outbound link for a connection the mediator makes."""

    def __init__(
        self,
        listener: LinkListener,
        clock: IReactorTime,
        max_message_bytes: int,
        security: LinkSecurity | None,
    ) -> None:
        self.listener = listener
        self.clock = clock
        self.max_message_bytes = max_message_bytes
        self.security = security

    def buildProtocol(self, addr: IAddress | None) -> FramedStreamLink:
        return FramedStreamLink(
            self.listener, self.clock, self.max_message_bytes, inbound=False, security=self.security
        )


class MediatedConnector:
    """
    The overlay node's connector when a mediator is configured.

    :param direct: the plain TCP connector (also used for bootstrap
        endpoints, which are public by definition).
    :param traversal: the ``TraversalService`` keeping this node registered.
    :param direct_timeout_seconds: the short timeout of the direct attempt.
    :param incoming: the peers' connections the mediator brings in (the
        same object the ``TraversalClient`` was given as its policy).
    :param security: the node's TLS, run over every connection the
        mediator makes; None only where links are not sockets (tests with
        in-memory links).
    """

    log = Logger()

    def __init__(
        self,
        direct: DirectConnector,
        traversal: Traversal,
        clock: IReactorTime,
        max_message_bytes: int,
        direct_timeout_seconds: float = DIRECT_CONNECT_TIMEOUT_SECONDS,
        registration_wait_seconds: float = REGISTRATION_WAIT_SECONDS,
        incoming: MediatedIncoming | None = None,
        security: LinkSecurity | None = None,
    ) -> None:
        self.direct = direct
        self.security = security
        self.traversal = traversal
        self.clock = clock
        self.max_message_bytes = max_message_bytes
        self.direct_timeout_seconds = direct_timeout_seconds
        self.registration_wait_seconds = registration_wait_seconds
        #: Node-ID -> time until which the direct attempt is skipped.
        self.direct_failed_until: dict[int, float] = {}
        self.incoming = incoming if incoming is not None else MediatedIncoming()

    def connect_endpoint(self, listener: LinkListener, description: str) -> Deferred[Link]:
        return self.direct.connect_endpoint(listener, description)

    def connect(
        self, listener: LinkListener, host: str, port: int, peer_id: int | None = None
    ) -> Deferred[Link]:
        """A link to ``peer_id`` at ``host:port``: direct, else through the mediator."""
        if peer_id is None:
            return self.direct.connect(listener, host, port)
        result: Deferred[Link] = self._connect(listener, host, port, peer_id)
        return result

    @inlineCallbacks
    def _connect(
        self, listener: LinkListener, host: str, port: int, peer_id: int
    ) -> Generator[Deferred[Any], Any, Link]:
        direct_reason = "not tried: it failed recently"
        if self.clock.seconds() >= self.direct_failed_until.get(peer_id, 0.0):
            attempt = self.direct.connect(listener, host, port, peer_id=peer_id)
            attempt.addTimeout(self.direct_timeout_seconds, self.clock)
            try:
                direct_link: Link = yield attempt
            except Exception as error:
                direct_reason = _reason(error)
                self._skip_direct(peer_id)
                self.log.info(
                    "direct connect to {peer} at {address} failed ({why}); asking the mediator",
                    peer=id_short(peer_id),
                    address=f"{host}:{port}",
                    why=direct_reason,
                )
            else:
                self.direct_failed_until.pop(peer_id, None)
                return direct_link
        # The peer may have reached us meanwhile (both ends often want the
        # link at once); a second mediated session would only duplicate it,
        # and relayed ones cost the mediator's relay capacity.
        existing = listener.link_for(peer_id)
        if existing is not None:
            self.log.debug(
                "peer {peer} linked to us meanwhile; not asking the mediator",
                peer=id_short(peer_id),
            )
            return existing
        waiting = self.traversal.when_registered()
        waiting.addTimeout(self.registration_wait_seconds, self.clock)
        try:
            client = yield waiting
        except Exception as error:
            raise MediatedConnectFailed(
                f"cannot reach peer {id_short(peer_id)}: direct connect to {host}:{port} ({direct_reason}); "
                f"not registered at the mediator ({error or 'timed out'}): check --mediator and its secret"
            ) from None
        factory: IProtocolFactory = _OutboundLinkFactory(
            listener, self.clock, self.max_message_bytes, self.security
        )
        if self.security is not None:
            factory = self.security.client_factory(factory, expected=peer_id)
        try:
            result = yield client.connect(id_hex(peer_id), factory)
        except Exception as error:
            raise MediatedConnectFailed(
                f"cannot reach peer {id_short(peer_id)}: direct connect to {host}:{port} ({direct_reason}); "
                f"mediator: {error.reason if isinstance(error, TraversalError) else error}"
            ) from None
        link = unwrapped(result.protocol)
        if not isinstance(link, Link):
            if isinstance(result.protocol, Protocol) and result.protocol.transport is not None:
                result.protocol.transport.loseConnection()
            raise MediatedConnectFailed(
                f"the mediator's connection to {id_short(peer_id)} carries no link"
            )
        link.path = result.method
        try:
            yield link.when_established()
        except Exception as error:
            raise MediatedConnectFailed(
                f"peer {id_short(peer_id)} reached by the mediator ({result.method}) but not "
                f"linked: {error}"
            ) from None
        self.log.info(
            "overlay link to {peer} made by the mediator: {method} in {seconds:.3f} s",
            peer=id_short(peer_id),
            method=result.method,
            seconds=result.setup_seconds,
        )
        return link

    #: The mediator reaches a peer by its Node-ID when its address does not.
    reaches_by_node_id = True

    def avoid_direct(self, peer_id: int) -> None:
        """
        The node's hello over a direct link found another node: reach
        ``peer_id`` through the mediator from now on.
        """
        self._skip_direct(peer_id)

    def _skip_direct(self, peer_id: int) -> None:
        now = self.clock.seconds()
        if len(self.direct_failed_until) >= MAX_REMEMBERED_PEERS:
            for stale in [peer for peer, until in self.direct_failed_until.items() if until <= now]:
                del self.direct_failed_until[stale]
            if len(self.direct_failed_until) >= MAX_REMEMBERED_PEERS:
                self.direct_failed_until.pop(next(iter(self.direct_failed_until)))
        self.direct_failed_until[peer_id] = now + DIRECT_RETRY_AFTER_SECONDS


class MediatedIncoming:
    """
    Peers' connections the mediator brings in: the ``accept`` and
    ``on_incoming`` callbacks of the ``TraversalClient``.

    Refused until :meth:`open` names the node's inbound factory, and again
    after :meth:`close` (a leaving node takes no new peers' connections).
    """

    log = Logger()

    def __init__(self) -> None:
        self.inbound_factory: IProtocolFactory | None = None

    def open(self, inbound_factory: IProtocolFactory) -> None:
        """The node is up: its links are built by ``inbound_factory``."""
        self.inbound_factory = inbound_factory

    def close(self) -> None:
        self.inbound_factory = None

    def accept(self, peer_id: str) -> IProtocolFactory | None:
        """Accept a mediated connection when the node is up and the ID is a Node-ID."""
        if self.inbound_factory is None:
            return None
        if node_id_from_hex(peer_id) is None:
            self.log.info(
                "refused a mediated connection from {peer!r}: not a Node-ID", peer=peer_id[:40]
            )
            return None
        return self.inbound_factory

    def made(self, result: TraversalResult) -> None:
        """Note on the inbound link how the mediator made it."""
        link = unwrapped(result.protocol)
        if isinstance(link, Link):
            link.path = result.method
        self.log.info(
            "overlay link from {peer} made by the mediator: {method}",
            peer=result.peer_id,
            method=result.method,
        )


__all__ = [
    "DIRECT_CONNECT_TIMEOUT_SECONDS",
    "MediatedConnectFailed",
    "MediatedConnector",
    "MediatedIncoming",
]

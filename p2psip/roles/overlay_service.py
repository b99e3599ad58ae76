"""
The service that runs a ring member's overlay node inside twistd.

The node and everything it needs are built by the role's ``makeService``;
this service only does what must wait for the reactor: listen on the
overlay endpoint, then found the ring or join it (through the
``--bootstrap`` peers, then the peers known from the last run), keep the
known-peers file up to date, and on stop (SIGTERM) leave the ring with
RFC 6940 Leave before closing the listener.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from p2psip.overlay import peer_cache
from p2psip.overlay.mediated import MediatedConnector
from p2psip.overlay.membership import NodeState
from p2psip.overlay.node import OverlayNode
from p2psip.util.files import DataFileError
from p2psip.util.ids import id_hex
from p2psip.util.logs import Logger

#: Delay between a neighbour change and saving the known peers (coalesces bursts).
PEER_SAVE_DELAY_SECONDS = 1.0
#: Between two attempts to join when nobody admitted us.
JOIN_RETRY_SECONDS = 5.0


class OverlayService(Service):
    """Listen, found or join the ring, keep the known peers, leave on stop."""

    log = Logger()

    def __init__(
        self,
        node: OverlayNode,
        *,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        advertised_host: str,
        bootstrap: Sequence[str],
        known_peers: Sequence[peer_cache.KnownPeer],
        data_dir: Path,
        found_ring: bool,
        clock: IReactorTime,
        save_interval_seconds: float,
        mediated: MediatedConnector | None = None,
        advertised_because: str = "advertise",
        listen_description: str = "",
        stop_role: Callable[[], None] | None = None,
    ) -> None:
        self.node = node
        #: The ``--overlay`` endpoint string, for the error when it cannot be listened on.
        self.listen_description = listen_description
        #: Ends the process when the overlay cannot listen: a super-node
        #: without its overlay would serve SIP with no ring behind it.
        self.stop_role = stop_role
        self.endpoint = endpoint
        self.factory = factory
        self.advertised_host = advertised_host
        self.advertised_because = advertised_because
        self.bootstrap = tuple(bootstrap)
        self.known_peers = tuple(known_peers)
        self.data_dir = data_dir
        self.found_ring = found_ring
        self.clock = clock
        self.mediated = mediated
        #: Fires once the node is in a ring (founded or joined).
        self.joined: Deferred[None] = Deferred()
        self.port: IListeningPort | None = None
        self._retry: IDelayedCall | None = None
        self._saved_peers: list[peer_cache.KnownPeer] = []
        self._save_error = ""
        self._pending_peer_save: IDelayedCall | None = None
        self._save_peers_call = LoopingCall(self._save_known_peers)
        self._save_peers_call.clock = clock
        self.save_interval_seconds = save_interval_seconds
        node.neighbour_observers.append(self._schedule_peer_save)

    def startService(self) -> Deferred[None]:
        super().startService()
        d: Deferred[IListeningPort] = self.endpoint.listen(self.factory)
        return d.addCallbacks(self._listening, self._cannot_listen)

    def _cannot_listen(self, failure: Failure) -> None:
        """
        The overlay port is taken (or not ours to take): say so at the top
        level and stop the role, rather than run on without a ring.  A
        listen failure inside a Deferred would otherwise be reported by
        nobody, and the role would serve SIP, and answer its status page,
        with no overlay at all.
        """
        self.log.critical(
            "cannot listen for overlay links on {endpoint}: {why}; free that port or choose "
            "another with --overlay (the role stops)",
            endpoint=self.listen_description or "the --overlay endpoint",
            why=failure.getErrorMessage(),
        )
        if self.stop_role is not None:
            self.stop_role()

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        host = port.getHost()
        assert isinstance(host, (IPv4Address, IPv6Address)), host
        node = self.node
        node.set_advertised_address(self.advertised_host, host.port)
        self.log.info(
            "overlay {overlay}: node {node} listening on {address} (advertised host from "
            "{because})",
            overlay=node.config.overlay_name,
            node=id_hex(node.node_id),
            address=f"{self.advertised_host}:{host.port}",
            because=self.advertised_because,
        )
        cached = [peer.endpoint for peer in self.known_peers if peer.node_id != node.node_id]
        if self.found_ring:
            if cached:
                # A restarted founder rejoins the ring it knew rather than
                # starting a second one beside it; only when none of its old
                # peers answers does it found a new ring.
                self.log.info(
                    "trying {count} peers known from {path} before founding a ring",
                    count=len(cached),
                    path=str(self.data_dir / peer_cache.FILE_NAME),
                )
                self._try_join(cached, found_if_none=True)
            else:
                self._found()
        else:
            self._try_join(list(dict.fromkeys([*self.bootstrap, *cached])))

    def _found(self) -> None:
        self.node.start_alone()
        self._in_ring()

    def _in_ring(self) -> None:
        # Saved soon after each neighbour change (a peer killed moments
        # after it joined must still find its ring again), and now and then
        # anyway, since addresses are learned without a neighbour change.
        # Started before ``joined`` fires: whoever waits on it may stop
        # this service right away, and must find the loop there to stop.
        if not self._save_peers_call.running:
            self._save_peers_call.start(self.save_interval_seconds, now=False)
        if not self.joined.called:
            self.joined.callback(None)

    def _try_join(self, endpoints: list[str], found_if_none: bool = False) -> None:
        def failed(failure: Failure) -> None:
            if not self.running:
                return
            self.node.stop()
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
                seconds=JOIN_RETRY_SECONDS,
            )
            self._retry = self.clock.callLater(JOIN_RETRY_SECONDS, self._try_join, endpoints)

        def succeeded(_: object) -> None:
            self._in_ring()
            self._save_known_peers()

        self.node.join(endpoints).addCallbacks(succeeded, failed)

    def _schedule_peer_save(self) -> None:
        if not self.running:
            # Stopping: the neighbour changes of our own Leave are not saved
            # later (stopService saved the peers before leaving).
            return
        if self._pending_peer_save is None or not self._pending_peer_save.active():
            self._pending_peer_save = self.clock.callLater(
                PEER_SAVE_DELAY_SECONDS, self._save_known_peers
            )

    def _save_known_peers(self) -> None:
        """Keep the ring members we know in the data directory, for the next start."""
        peers = [peer_cache.KnownPeer(*entry) for entry in self.node.known_peer_addresses()]
        if not peers or peers == self._saved_peers:
            return
        try:
            peer_cache.save(self.data_dir, peers)
        except DataFileError as error:
            if str(error) != self._save_error:
                self.log.warn("{why}; a restart will join through --bootstrap only", why=str(error))
            self._save_error = str(error)
            return
        self._saved_peers = peers
        self._save_error = ""

    @inlineCallbacks
    def stopService(self) -> Generator[Deferred[Any], Any, None]:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._save_peers_call.running:
            self._save_peers_call.stop()
        if self._pending_peer_save is not None and self._pending_peer_save.active():
            self._pending_peer_save.cancel()
        if self.node.state == NodeState.JOINED:
            self._save_known_peers()
        if self.mediated is not None:
            # A leaving node takes no new peers' connections.
            self.mediated.incoming.close()
        try:
            yield self.node.leave()
        except Exception:
            self.log.failure("while leaving the ring")
        self.node.stop()
        if self.port is not None:
            stopped = self.port.stopListening()
            if stopped is not None:
                yield stopped

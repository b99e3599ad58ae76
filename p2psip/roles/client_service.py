"""
The service that runs a thin client's overlay part inside twistd.

The client (:class:`~p2psip.overlay.client.OverlayClient`) is built by
``makeService``; this service does what must wait for the reactor:
attach through the ``--bootstrap`` peers and the peers cached from the
last run (retrying every few seconds while none answers), keep
``known-peers.json`` current with the attachment peer and its fallback,
and tell the SIP adaptor whenever the client attached again so that it
stores its registrations there.  On stop it closes the link.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from p2psip.overlay import peer_cache
from p2psip.overlay.attaching import ClientNodeIdInUse
from p2psip.overlay.client import OverlayClient
from p2psip.util.files import DataFileError
from p2psip.util.logs import Logger

#: Between two rounds of attempts while no peer of the ring answers.
ATTACH_RETRY_SECONDS = 5.0


class ClientOverlayService(Service):
    """Attach, keep the known peers, re-store registrations after every re-attachment."""

    log = Logger()

    def __init__(
        self,
        client: OverlayClient,
        *,
        bootstrap: Sequence[str],
        known_peers: Sequence[peer_cache.KnownPeer],
        data_dir: Path,
        clock: IReactorTime,
        give_up: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.bootstrap = tuple(bootstrap)
        self.known_peers = tuple(known_peers)
        self.data_dir = data_dir
        self.clock = clock
        #: Called when attaching can never work (our Node-ID is in use); the role stops.
        self.give_up = give_up
        #: Fires once the client is attached for the first time.
        self.attached: Deferred[None] = Deferred()
        #: Told (with no arguments) after every attachment: the SIP adaptor re-stores.
        self.reattached: list[Callable[[], None]] = []
        self._retry: IDelayedCall | None = None
        self._save: IDelayedCall | None = None
        client.attachment_observers.append(self._attached)

    def endpoints(self) -> list[str]:
        """Bootstraps first, then the peers known from the last run."""
        cached = [peer.endpoint for peer in self.known_peers]
        return list(dict.fromkeys([*self.bootstrap, *cached]))

    def startService(self) -> None:
        super().startService()
        self._attach()

    def _attach(self) -> None:
        self._retry = None
        if not self.running:
            return
        self.client.attach(self.endpoints()).addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        if not self.running:
            return
        if failure.check(ClientNodeIdInUse):
            self.log.critical("cannot attach: {why}", why=failure.getErrorMessage())
            if self.give_up is not None:
                self.give_up()
            return
        self.log.warn(
            "{why}; trying again in {seconds:g} s",
            why=failure.getErrorMessage(),
            seconds=ATTACH_RETRY_SECONDS,
        )
        self._retry = self.clock.callLater(ATTACH_RETRY_SECONDS, self._attach)

    def _attached(self, peer: int) -> None:
        if not self.attached.called:
            self.attached.callback(None)
        for observer in list(self.reattached):
            observer()
        # The fallback is learned just after attaching: save once it may be known.
        if self._save is None or not self._save.active():
            self._save = self.clock.callLater(1.0, self._save_peers)

    def _save_peers(self) -> None:
        self._save = None
        if not self.running:
            return
        peers = [
            peer_cache.KnownPeer(node_id, host, port)
            for node_id, host, port in self.client.known_peer_addresses()
        ]
        if not peers:
            return
        try:
            peer_cache.save(self.data_dir, peers)
        except DataFileError as error:
            self.log.warn("{why}; the client attaches through --bootstrap next time", why=error)

    def stopService(self) -> None:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._save is not None and self._save.active():
            self._save.cancel()
        self._save = None
        self.client.stop()


__all__ = ["ClientOverlayService", "ATTACH_RETRY_SECONDS"]

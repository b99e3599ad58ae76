"""
A client's attachment to the ring (RFC 6940 s3.2.1): the client side of
client mode.

A client is not in the ring.  It needs one peer, its *attachment peer*,
that carries all its messages and delivers to it those addressed to its
Node-ID.  That works for messages routed by Node-ID only if the peer is
the one responsible for the client's Node-ID, so the client finds that
peer as a joining peer finds its admitting peer:

1. connect to a bootstrap, a cached peer or a fallback, and say hello;
2. send an Attach to our own Node-ID through it: the peer that owns our
   id answers with its candidate; connect there (unless it is the peer
   we are talking to);
3. send the attachment peer an Attach of our own over that link, with no
   candidate: we have no listener, reach us over this link
   (:mod:`p2psip.overlay.attached_clients` is the peer's side);
4. ask, through it, for the owner of (its Node-ID + 1), its successor:
   when the attachment peer dies, that peer takes over its range, our id
   with it, and is the first one tried.

When the attachment peer's link goes (a crash closes it; a silent peer
fails its keepalive) the client attaches again at once, through the
fallback, then the cached peers and bootstraps, retrying with a growing
pause until one takes it.  Every ``update_interval`` it asks again who
owns its id and moves when a newcomer took it over.  The observers hear
of every new attachment peer: the client role stores its registrations
again there.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Iterable
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from p2psip.overlay.connectivity import Connectivity
from p2psip.overlay.errors import NotConnected, OverlayError
from p2psip.overlay.links import Link
from p2psip.overlay.membership import Event, Membership, NodeState
from p2psip.overlay.message import Destination, MessageCode
from p2psip.overlay.messaging import Answer, Messenger
from p2psip.overlay.peer_cache import KnownPeer
from p2psip.util.ids import MAX_ID, id_short
from p2psip.util.logs import Logger

#: Pauses between rounds of re-attachment attempts: the first round starts
#: at once, then 1, 2, 4 ... seconds, at most this long.
MAX_RETRY_SECONDS = 10.0


class ClientNodeIdInUse(OverlayError):
    """Our own Attach came back to a node with our Node-ID: the same key in two places."""


class Attacher:
    """Keeps a client attached to the peer responsible for its Node-ID."""

    log = Logger()

    def __init__(
        self,
        *,
        messenger: Messenger,
        connectivity: Connectivity,
        membership: Membership,
        clock: IReactorTime,
        rng: random.Random,
    ) -> None:
        self.messenger = messenger
        self.connectivity = connectivity
        self.membership = membership
        self.clock = clock
        self.random = rng
        self.node_id = messenger.node_id
        #: The attachment peer and our link to it (None while there is none).
        self.peer: int | None = None
        self.link: Link | None = None
        #: When the current attachment began (clock seconds).
        self.attached_at: float | None = None
        #: The attachment peer's successor, tried first when it goes.
        self.fallback: KnownPeer | None = None
        #: Bootstraps and cached peers, as client endpoint strings.
        self.endpoints: tuple[str, ...] = ()
        #: Told (peer Node-ID) of every new attachment peer.
        self.observers: list[Callable[[int], None]] = []
        #: Attachments since start, and how long the last re-attachment took.
        self.attachments = 0
        self.last_reattach_seconds: float | None = None
        self._lost_at: float | None = None
        self._retry: IDelayedCall | None = None
        self._retry_seconds = 0.0
        self._busy = False
        messenger.attachment = lambda: self.link if self.link and not self.link.closed else None

    # -- what the role reads ---------------------------------------------------

    def known_peers(self) -> list[KnownPeer]:
        """The attachment peer and its fallback, for the client's known-peers cache."""
        result = []
        address = self.connectivity.addresses.get(self.peer) if self.peer is not None else None
        if self.peer is not None and address is not None:
            result.append(KnownPeer(self.peer, address[0], address[1]))
        if self.fallback is not None and self.fallback.node_id != self.peer:
            result.append(self.fallback)
        return result

    # -- attaching -------------------------------------------------------------

    def attach(self, endpoints: Iterable[str]) -> Deferred[int]:
        """
        Attach through the first of ``endpoints`` that leads to our
        responsible peer; fires with its Node-ID, fails with
        :class:`NotConnected` naming what to fix.  The same endpoints are
        tried again whenever the attachment is lost.
        """
        self.endpoints = tuple(dict.fromkeys(endpoints))
        self.membership.happened(Event.ATTACH_STARTED)
        return self._attach_round(self.endpoints)

    @inlineCallbacks
    def _attach_round(self, endpoints: Iterable[str]) -> Generator[Deferred[Any], Any, int]:
        failures: list[str] = []
        self._busy = True
        try:
            for description in endpoints:
                try:
                    link = yield self.connectivity.connect_endpoint(description)
                except Exception as error:
                    failures.append(f"{description}: {error}")
                    continue
                try:
                    peer: int = yield self._attach_through(link)
                except ClientNodeIdInUse:
                    raise
                except OverlayError as error:
                    failures.append(f"{description}: {error.reason}")
                    self.connectivity.drop_link(link)
                    continue
                return peer
        finally:
            self._busy = False
        raise NotConnected(
            "could not attach through any bootstrap or known peer ("
            + "; ".join(failures or ["none configured"])
            + "); check --bootstrap and that a peer of the ring is running"
        )

    @inlineCallbacks
    def _attach_through(self, link: Link) -> Generator[Deferred[Any], Any, int]:
        """Find the owner of our Node-ID through ``link``, attach to it, learn its successor."""
        answer: Answer = yield self.messenger.request(
            Destination.node(self.node_id),
            MessageCode.ATTACH_REQ,
            self.connectivity.client_attach_request(),
            first_link=link,
        )
        owner = answer.responder
        if owner == self.node_id:
            raise ClientNodeIdInUse(
                "another node answers for this Node-ID (the same key in two places); stop it, "
                "or delete the node key in --data-dir for a new Node-ID"
            )
        # Its listener: to connect to, or (when it is the peer we reached)
        # for the status page and the known-peers cache.
        self.connectivity.remember_candidates(owner, answer.body)
        if owner == link.peer_id:
            peer_link = link
        else:
            peer_link = yield self.connectivity.ensure_link(owner)
        yield self.messenger.request(
            Destination.node(owner),
            MessageCode.ATTACH_REQ,
            self.connectivity.client_attach_request(),
            first_link=peer_link,
        )
        if not self.membership.is_client():
            # Stopped while we were attaching.
            self.connectivity.drop_link(peer_link)
            raise OverlayError("the client stopped while attaching")
        previous = self.link
        self._attached(owner, peer_link)
        for other in self.messenger.links.all_links():
            if other is not peer_link:
                self.connectivity.drop_link(other)
        if previous is not None and previous is not peer_link:
            self.connectivity.drop_link(previous)
        self._learn_fallback(owner)
        return owner

    def _attached(self, peer: int, link: Link) -> None:
        now = self.clock.seconds()
        previous = self.peer
        changed = peer != previous
        self.peer, self.link, self.attached_at = peer, link, now
        self.attachments += 1
        self._retry_seconds = 0.0
        if self._lost_at is not None:
            self.last_reattach_seconds = now - self._lost_at
            self._lost_at = None
        if self.membership.state is not NodeState.ATTACHED:
            self.membership.happened(Event.ATTACHED)
        if changed and previous is not None:
            # Requests that left through the old peer and got no answer go
            # once more through the new one (under new transaction ids).
            self.messenger.resend_after_failure(previous)
        address = self.connectivity.addresses.get(peer)
        self.log.info(
            "client {node} attached to peer {peer} at {address}{again}",
            node=id_short(self.node_id),
            peer=id_short(peer),
            address=f"{address[0]}:{address[1]}" if address else link.remote_address,
            again=""
            if self.last_reattach_seconds is None or self.attachments == 1
            else f" ({self.last_reattach_seconds:.1f} s after losing the last one)",
        )
        if changed or self.attachments > 1:
            for observer in list(self.observers):
                observer(peer)

    def _learn_fallback(self, peer: int) -> None:
        """Ask for the owner of (peer + 1): the attachment peer's successor."""
        target = (peer + 1) & MAX_ID
        d = self.messenger.request(
            Destination.node(target),
            MessageCode.ATTACH_REQ,
            self.connectivity.client_attach_request(),
        )

        def answered(answer: Answer) -> None:
            if answer.responder in (peer, self.node_id) or not answer.body.candidates:
                return
            self.connectivity.remember_candidates(answer.responder, answer.body)
            host, port = self.connectivity.addresses[answer.responder]
            self.fallback = KnownPeer(answer.responder, host, port)

        d.addCallbacks(
            answered,
            lambda failure: self.log.debug(
                "no fallback peer learned: {why}", why=failure.getErrorMessage()
            ),
        )

    # -- losing the attachment peer ----------------------------------------------

    def peer_failed(self, peer: int) -> None:
        """A peer's last link is gone: if it was our attachment peer, attach again."""
        if peer != self.peer or self.membership.state is not NodeState.ATTACHED:
            return
        self.log.warn(
            "lost attachment peer {peer}; attaching to another",
            peer=id_short(peer),
        )
        self.link = None
        self._lost_at = self.clock.seconds()
        self.membership.happened(Event.ATTACH_STARTED)
        self._reattach()

    def _reattach_endpoints(self) -> list[str]:
        """The fallback first, then the bootstraps and cached peers (never the dead peer first)."""
        first = []
        if self.fallback is not None and self.fallback.node_id != self.peer:
            first.append(self.fallback.endpoint)
        return list(dict.fromkeys([*first, *self.endpoints]))

    def _reattach(self) -> None:
        self._retry = None
        if self.membership.state is not NodeState.ATTACHING:
            return
        if self._busy:
            # A move (or an attempt) is under way; look again once it is done.
            self._retry = self.clock.callLater(1.0, self._reattach)
            return
        d = self._attach_round(self._reattach_endpoints())

        def failed(failure: Any) -> None:
            if self.membership.state is not NodeState.ATTACHING:
                return
            self._retry_seconds = min(max(1.0, self._retry_seconds * 2), MAX_RETRY_SECONDS)
            pause = self._retry_seconds * (0.75 + 0.5 * self.random.random())
            self.log.warn(
                "{why}; trying again in {pause:.1f} s", why=failure.getErrorMessage(), pause=pause
            )
            self._retry = self.clock.callLater(pause, self._reattach)

        d.addErrback(failed)

    # -- keeping the right peer -----------------------------------------------------

    def check(self) -> None:
        """
        Ask who owns our Node-ID now and move there if it is not our
        attachment peer (a peer joined between its predecessor and us).
        """
        link = self.link
        if self.membership.state is not NodeState.ATTACHED or link is None or self._busy:
            return
        d = self.messenger.request(
            Destination.node(self.node_id),
            MessageCode.ATTACH_REQ,
            self.connectivity.client_attach_request(),
            first_link=link,
        )

        def answered(answer: Answer) -> Deferred[int] | None:
            if answer.responder in (self.peer, self.node_id) or self._busy:
                if self.fallback is None and self.peer is not None:
                    self._learn_fallback(self.peer)
                return None
            self.log.info(
                "peer {owner} now owns our Node-ID; moving there from {peer}",
                owner=id_short(answer.responder),
                peer=id_short(self.peer or 0),
            )
            self._busy = True
            moved: Deferred[int] = self._attach_through(link)

            def done(result: Any) -> Any:
                self._busy = False
                return result

            return moved.addBoth(done)

        d.addCallback(answered).addErrback(
            lambda failure: self.log.info(
                "checking our attachment peer failed: {why}", why=failure.getErrorMessage()
            )
        )

    def stop(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self.link = None

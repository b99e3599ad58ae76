"""
Another peer's routing tables, asked for over the ring.

CHORD-RELOAD has a way to learn what a peer's tables hold: a RouteQuery
with ``send_update`` set asks the peer to send the requester an Update at
once (RFC 6940 s9.7.4.2), and an Update of type ``full`` carries the
sender's predecessors, successors and fingers (s10.4).  The ring page uses
it to draw the fingers of a member the operator picks; nothing in the
node's own routing depends on it.

:class:`PeerTablesQuery` is the asking side: :meth:`~PeerTablesQuery.ask`
sends the RouteQuery and waits, on the injected clock, for the full Update
the peer sends back (the maintenance part hands every full Update to
:meth:`~PeerTablesQuery.update_received`).  Answers are kept for a short
while so a page polling every few seconds asks the ring once per interval,
and at most :data:`MAX_PENDING_QUERIES` peers are asked at once.  The
answering side (a bounded rate of full Updates per requester) is in
:mod:`p2psip.overlay.chord`.
"""

from __future__ import annotations

from attrs import frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from p2psip.overlay import bodies
from p2psip.overlay.errors import OverlayError, RequestTimeout
from p2psip.overlay.message import Destination, MessageCode
from p2psip.overlay.messaging import Answer, Messenger
from p2psip.util.ids import id_hex, id_short

#: Peers whose tables may be asked for at the same time.
MAX_PENDING_QUERIES = 16
#: Answers kept (the most recent), so repeated asks cost nothing.
MAX_KEPT_ANSWERS = 256
#: How old a kept answer may be and still be given: just under the ring
#: page's refresh, so each refresh sees tables at most one refresh old.
MAX_ANSWER_AGE_SECONDS = 4.0


@frozen
class PeerTables:
    """What a peer's full Update said of its tables, and when it arrived."""

    peer: int
    predecessors: tuple[int, ...]
    successors: tuple[int, ...]
    fingers: tuple[int, ...]
    uptime_seconds: int
    received_at: float


class NoSuchMember(OverlayError):
    """The Node-ID asked for is no member's: another peer answered for it."""


class TooManyQueries(OverlayError):
    """More peers are being asked for their tables than :data:`MAX_PENDING_QUERIES`."""


class PeerTablesQuery:
    """Ask peers for their tables (RouteQuery with ``send_update``) and collect the Updates."""

    def __init__(
        self,
        messenger: Messenger,
        clock: IReactorTime,
        timeout_seconds: float,
        max_age_seconds: float = MAX_ANSWER_AGE_SECONDS,
    ) -> None:
        self.messenger = messenger
        self.clock = clock
        self.timeout_seconds = timeout_seconds
        self.max_age_seconds = max_age_seconds
        #: The latest full Update of each peer (at most MAX_KEPT_ANSWERS, oldest dropped).
        self.latest: dict[int, PeerTables] = {}
        self._waiting: dict[int, tuple[list[Deferred[PeerTables]], IDelayedCall]] = {}

    def ask(self, peer: int) -> Deferred[PeerTables]:
        """
        ``peer``'s tables: a recent answer if one is kept, else ask it.

        Fails with :class:`RequestTimeout` when no full Update comes within
        the timeout (a peer that ignores ``send_update``, or is gone), with
        the RouteQuery's error when that fails, with :class:`NoSuchMember`
        when another peer answers for that Node-ID, and with
        :class:`TooManyQueries` past the limit of peers asked at once.
        """
        kept = self.latest.get(peer)
        if kept is not None and self.clock.seconds() - kept.received_at <= self.max_age_seconds:
            return succeed(kept)
        result: Deferred[PeerTables] = Deferred()
        if peer in self._waiting:
            self._waiting[peer][0].append(result)
            return result
        if len(self._waiting) >= MAX_PENDING_QUERIES:
            return fail(
                TooManyQueries(
                    f"already asking {len(self._waiting)} peers for their tables; try again"
                )
            )
        timer = self.clock.callLater(self.timeout_seconds, self._timed_out, peer)
        self._waiting[peer] = ([result], timer)
        query = bodies.RouteQueryReq(send_update=True, destination=Destination.node(peer))
        sent = self.messenger.request(
            Destination.node(peer), MessageCode.ROUTE_QUERY_REQ, query.encode()
        )
        sent.addCallbacks(self._answered, self._query_failed, (peer,), errbackArgs=(peer,))
        return result

    def update_received(self, signer: int, update: bodies.UpdateReq) -> None:
        """A full Update arrived from ``signer`` (asked for or not): keep it, answer the waiters."""
        tables = PeerTables(
            peer=signer,
            predecessors=update.predecessors,
            successors=update.successors,
            fingers=update.fingers,
            uptime_seconds=update.uptime,
            received_at=self.clock.seconds(),
        )
        self.latest.pop(signer, None)
        self.latest[signer] = tables
        while len(self.latest) > MAX_KEPT_ANSWERS:
            del self.latest[next(iter(self.latest))]
        for waiter in self._stop_waiting(signer):
            waiter.callback(tables)

    def stop(self) -> None:
        """Fail every outstanding ask (the node stops)."""
        for peer in list(self._waiting):
            self._fail(peer, Failure(OverlayError("the node stopped")))

    def _answered(self, answer: Answer, peer: int) -> None:
        """
        The RouteQuery's answer names a next hop; the tables come in the
        Update.  An answer from another node means no member has that
        Node-ID (its owner took the query): say so now, not at the timeout.
        """
        if answer.responder != peer:
            self._fail(
                peer,
                Failure(
                    NoSuchMember(
                        f"no member has Node-ID {id_hex(peer)}; "
                        f"{id_short(answer.responder)} owns that id"
                    )
                ),
            )

    def _query_failed(self, failure: Failure, peer: int) -> None:
        self._fail(peer, failure)

    def _timed_out(self, peer: int) -> None:
        self._fail(
            peer,
            Failure(
                RequestTimeout(
                    f"peer {id_short(peer)} sent no Update with its tables within "
                    f"{self.timeout_seconds:g} s of a RouteQuery asking for one"
                )
            ),
        )

    def _fail(self, peer: int, failure: Failure) -> None:
        for waiter in self._stop_waiting(peer):
            waiter.errback(failure)

    def _stop_waiting(self, peer: int) -> list[Deferred[PeerTables]]:
        """The callers waiting for ``peer``'s tables (none if nobody is), its timer cancelled."""
        waiters, timer = self._waiting.pop(peer, ([], None))
        if timer is not None and timer.active():
            timer.cancel()
        return waiters

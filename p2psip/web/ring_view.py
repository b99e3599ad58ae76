"""
What the ring page draws, as JSON: the members, their arcs, this node's
links by path, and any member's tables.

* :func:`walk_ring` finds every member in ring order by asking for the
  owner of (member + 1), one member after another (``/api/ring``,
  ``p2psip ring``).
* :class:`RingWalks` shares one walk among the callers of a few seconds:
  a walk costs one Attach per member, and a page left open in several
  tabs, or a caller polling in a loop, must not multiply that.
* :func:`ring_view` turns a walk into the picture's data
  (``/api/ring-view``): each member with the arc it is responsible for
  (from its predecessor, exclusive, to itself: CHORD-RELOAD's rule) and
  its share of the id space, and this node's links with how each was made
  (``connect``, or the mediator's ``direct``, ``simultaneous-open``,
  ``low-ttl``, ``relayed``; see :mod:`p2psip.overlay.mediated`).
* :func:`tables_json` is a member's predecessors, successors and fingers
  (``/api/peer-tables``): this node's own, or what another member sent
  in a full Update (:mod:`p2psip.overlay.peer_tables`).

Node-IDs are 32 hex digits, the way ``/status`` writes them.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from p2psip.overlay.operations import OverlayOperations
from p2psip.overlay.peer_tables import PeerTables
from p2psip.util.ids import MAX_ID, RING_SIZE, clockwise, id_hex

#: The ring walk stops after this many peers (a ring that never closes).
MAX_RING_WALK = 4096
#: A walk is shared by the callers of this many seconds (the page refreshes every 5).
WALK_MAX_AGE_SECONDS = 4.0


@inlineCallbacks
def walk_ring(node: OverlayOperations) -> Generator[Deferred[Any], Any, dict[str, Any]]:
    """
    Every peer of the ring in order, found by asking for the owner of
    (peer + 1) from one peer to the next.

    A ring member starts from itself; a client, which is not in the ring,
    starts from the owner of its own Node-ID (its attachment peer).
    """
    nodes = []
    if node.membership.is_client():
        first, (host, port) = yield node.find_owner(node.node_id)
        nodes.append({"node_id": id_hex(first), "address": f"{host}:{port}"})
    else:
        first = node.node_id
        nodes.append(
            {
                "node_id": id_hex(node.node_id),
                "address": f"{node.advertised_host}:{node.advertised_port}",
            }
        )
    current = first
    complete = False
    for _ in range(MAX_RING_WALK):
        owner, (host, port) = yield node.find_owner((current + 1) & MAX_ID)
        if owner == first:
            complete = True
            break
        nodes.append({"node_id": id_hex(owner), "address": f"{host}:{port}"})
        current = owner
    return {"nodes": nodes, "complete": complete, "count": len(nodes)}


class RingWalks:
    """
    The latest ring walk, walked again once it is older than ``max_age_seconds``.

    Callers that come while a walk is under way wait for that one; a
    failed walk is not kept, so the next caller tries again.
    """

    def __init__(
        self,
        node: OverlayOperations,
        clock: IReactorTime,
        max_age_seconds: float = WALK_MAX_AGE_SECONDS,
    ) -> None:
        self.node = node
        self.clock = clock
        self.max_age_seconds = max_age_seconds
        self._latest: tuple[float, dict[str, Any]] | None = None
        self._waiting: list[Deferred[dict[str, Any]]] | None = None

    def walk(self) -> Deferred[dict[str, Any]]:
        """A walk at most ``max_age_seconds`` old (the same object for every caller)."""
        if self._latest is not None:
            walked_at, walked = self._latest
            if self.clock.seconds() - walked_at <= self.max_age_seconds:
                return succeed(walked)
        result: Deferred[dict[str, Any]] = Deferred()
        if self._waiting is not None:
            self._waiting.append(result)
            return result
        self._waiting = [result]
        walking: Deferred[dict[str, Any]] = walk_ring(self.node)
        walking.addCallbacks(self._walked, self._failed)
        return result

    def _walked(self, walked: dict[str, Any]) -> None:
        self._latest = (self.clock.seconds(), walked)
        waiting, self._waiting = self._waiting or [], None
        for waiter in waiting:
            waiter.callback(walked)

    def _failed(self, failure: Failure) -> None:
        waiting, self._waiting = self._waiting or [], None
        for waiter in waiting:
            waiter.errback(failure)


def ring_view(node: OverlayOperations, walked: dict[str, Any]) -> dict[str, Any]:
    """
    The ring picture's data from a walk (:func:`walk_ring`'s answer) and
    this node's links.

    ``members`` are in Node-ID order; each has ``arc_from`` (its
    predecessor's Node-ID: it is responsible for the ids after that, up
    to and including its own) and ``share`` (that arc's fraction of the
    id space).  An incomplete walk still gives arcs between the members
    it found.
    """
    own = id_hex(node.node_id)
    found = {entry["node_id"]: entry["address"] for entry in walked["nodes"]}
    ordered = sorted(found, key=lambda hex_id: int(hex_id, 16))
    links_by_peer: dict[str, list[dict[str, Any]]] = {}
    links = []
    for link in node.all_links():
        described = link.describe()
        if described["peer"] is None:
            continue  # not identified yet: no place on the ring
        entry = {
            "peer": described["peer"],
            "path": described["path"],
            "direction": described["direction"],
            "transport": described["transport"],
            "rtt_ms": described["rtt_ms"],
            "member": described["peer"] in found,
        }
        links.append(entry)
        links_by_peer.setdefault(described["peer"], []).append(entry)
    members = []
    for index, hex_id in enumerate(ordered):
        predecessor = ordered[index - 1]
        span = clockwise(int(predecessor, 16), int(hex_id, 16)) or RING_SIZE
        members.append(
            {
                "node_id": hex_id,
                "address": found[hex_id],
                "arc_from": predecessor,
                "share": span / RING_SIZE,
                "this": hex_id == own,
                "paths": sorted({link["path"] for link in links_by_peer.get(hex_id, [])}),
            }
        )
    topology = node.topology
    return {
        "node_id": own,
        "complete": bool(walked["complete"]),
        "count": len(members),
        "members": members,
        "links": links,
        "successors": [id_hex(peer) for peer in topology.successors],
        "predecessors": [id_hex(peer) for peer in topology.predecessors],
    }


def tables_json(tables: PeerTables, now: float) -> dict[str, Any]:
    """A member's tables for ``/api/peer-tables``; ``age_seconds`` is how old the report is."""
    return {
        "node_id": id_hex(tables.peer),
        "predecessors": [id_hex(peer) for peer in tables.predecessors],
        "successors": [id_hex(peer) for peer in tables.successors],
        "fingers": [id_hex(peer) for peer in tables.fingers],
        "uptime_seconds": tables.uptime_seconds,
        "age_seconds": round(max(0.0, now - tables.received_at), 3),
    }

"""
CHORD-RELOAD routing state (RFC 6940 section 10), without any I/O.

A peer keeps a successor list and a predecessor list (its neighbour table)
and a finger table.  This module answers the questions the node asks
while routing and repairing the ring:

* Which peer is responsible for an id?  A peer with predecessor P owns the
  half-open interval (P, self] (RFC 6940 s10.1).
* What is the next hop towards an id?  The closest peer we know that
  precedes the id, which gives the O(log N) hops of Chord.
* How do the neighbour lists change when peers appear or disappear?

Ids are ints; interval arithmetic comes from :mod:`p2psip.util.ids`.
Which of the known peers we actually hold a connection to is the link
layer's business, so the routing questions take an optional ``usable``
predicate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from p2psip.util.ids import NODE_ID_BITS, between, between_right_inclusive, clockwise, finger_target

#: RFC 6940 s10.3: "each peer keeps at least three successors"; a few more
#: survive the simultaneous loss of several neighbours.
DEFAULT_SUCCESSORS = 4
DEFAULT_PREDECESSORS = 4


class ChordTopology:
    """Neighbour and finger tables of one peer on the ring."""

    def __init__(
        self,
        own_id: int,
        successor_count: int = DEFAULT_SUCCESSORS,
        predecessor_count: int = DEFAULT_PREDECESSORS,
    ) -> None:
        if successor_count < 1 or predecessor_count < 1:
            raise ValueError("the ring needs at least one successor and one predecessor")
        self.own_id = own_id
        self.successor_count = successor_count
        self.predecessor_count = predecessor_count
        self.successors: list[int] = []
        self.predecessors: list[int] = []
        #: finger index -> peer: the first peer at or after own_id + 2**index
        self.fingers: dict[int, int] = {}

    # -- questions -----------------------------------------------------

    @property
    def successor(self) -> int | None:
        return self.successors[0] if self.successors else None

    @property
    def predecessor(self) -> int | None:
        return self.predecessors[0] if self.predecessors else None

    def is_alone(self) -> bool:
        """True for the first peer of a ring, which owns every id."""
        return not self.successors and not self.predecessors

    def neighbours(self) -> set[int]:
        return set(self.successors) | set(self.predecessors)

    def known_peers(self) -> set[int]:
        return self.neighbours() | set(self.fingers.values())

    def is_responsible(self, target: int) -> bool:
        """Whether this peer owns ``target``: it lies in (predecessor, self]."""
        if self.predecessors:
            return between_right_inclusive(target, self.predecessors[0], self.own_id)
        # Without a predecessor we only own the ring while we are alone in
        # it; a peer that has successors but no predecessor is still joining.
        return not self.successors

    def may_be_responsible(self, target: int, candidate: int) -> bool:
        """
        Whether ``candidate`` can own ``target`` as far as our tables tell.

        Chord's rule: the owner of an id is the first node at or after it.
        So ``candidate`` may own ``target`` unless a node we know (ourselves,
        a neighbour or a finger) lies strictly between ``target`` and it:
        that node would come first.  Used to refuse answers, and replicas,
        from nodes that claim a range that is not theirs.
        """
        return self.closer_known_node(target, candidate) is None

    def closer_known_node(self, target: int, candidate: int) -> int | None:
        """A node we know that lies strictly between ``target`` and ``candidate``, if any."""
        if candidate == target:
            return None
        for peer in (self.own_id, *self.successors, *self.predecessors, *self.fingers.values()):
            if peer != candidate and between(peer, target, candidate):
                return peer
        return None

    def responsible_neighbour(self, target: int) -> int | None:
        """
        The neighbour that owns ``target`` if our neighbour table tells.

        Used for replication targets and for answering without routing.
        """
        if self.is_responsible(target):
            return self.own_id
        previous = self.own_id
        for peer in self.successors:
            if between_right_inclusive(target, previous, peer):
                return peer
            previous = peer
        return None

    def next_hop(
        self, target: int, usable: Callable[[int], bool] = lambda peer: True
    ) -> int | None:
        """
        The known peer to forward a message for ``target`` to.

        Returns None when this peer owns ``target`` (deliver locally) or
        knows no usable peer at all.  A message is never routed backwards:
        only peers strictly between us and the target qualify, except the
        immediate owner of the target (our successor when the target lies
        in (self, successor]).
        """
        if target == self.own_id or self.is_responsible(target):
            return None
        for peer in self.successors:
            # Successors are in clockwise order, so the first one at or
            # after the target is its owner (or, while the owner's link is
            # down, the peer that takes over from it).
            if usable(peer) and between_right_inclusive(target, self.own_id, peer):
                return peer
        # A target just behind us belongs to one of our predecessors: send it
        # there directly.  Without this, a peer whose own successor list is
        # stale (it has not heard of our newest predecessor yet) and this
        # peer would bounce the message between them.
        later = self.own_id
        for peer in self.predecessors:
            if between_right_inclusive(target, peer, later):
                if usable(later) and later != self.own_id:
                    return later
                break
            later = peer
        best: int | None = None
        best_distance = 0
        for peer in self.known_peers():
            if not usable(peer) or not between(peer, self.own_id, target):
                continue
            distance = clockwise(self.own_id, peer)
            if distance > best_distance:
                best, best_distance = peer, distance
        if best is not None:
            return best
        for peer in self.successors:
            if usable(peer):
                return peer
        return None

    # -- changes -------------------------------------------------------

    def add_peers(self, peers: Iterable[int]) -> bool:
        """
        Merge peers into the neighbour lists; True when the lists changed.

        Successors are the ``successor_count`` peers closest clockwise,
        predecessors the ``predecessor_count`` closest counter-clockwise.
        In a small ring the same peer may be both.
        """
        candidates = set(self.successors) | set(self.predecessors)
        candidates.update(p for p in peers if p != self.own_id)
        successors = sorted(candidates, key=lambda p: clockwise(self.own_id, p))[
            : self.successor_count
        ]
        predecessors = sorted(candidates, key=lambda p: clockwise(p, self.own_id))[
            : self.predecessor_count
        ]
        changed = successors != self.successors or predecessors != self.predecessors
        self.successors, self.predecessors = successors, predecessors
        return changed

    def best_of(self, peers: Iterable[int]) -> list[int]:
        """
        Those of ``peers`` that would be neighbours if all of them were added, in ring order.

        At most ``successor_count + predecessor_count`` peers: what a table
        can hold bounds how many peers a list we are told about can make us
        contact, however long the list.
        """
        probe = ChordTopology(self.own_id, self.successor_count, self.predecessor_count)
        probe.successors = list(self.successors)
        probe.predecessors = list(self.predecessors)
        offered = set(peers) - self.neighbours() - {self.own_id}
        probe.add_peers(offered)
        chosen = [p for p in (*probe.successors, *probe.predecessors) if p in offered]
        return list(dict.fromkeys(chosen))

    def remove_peer(self, peer: int) -> bool:
        """Forget a failed or departed peer everywhere; True if it was a neighbour."""
        was_neighbour = peer in self.successors or peer in self.predecessors
        if peer in self.successors:
            self.successors.remove(peer)
        if peer in self.predecessors:
            self.predecessors.remove(peer)
        for index in [i for i, p in self.fingers.items() if p == peer]:
            del self.fingers[index]
        return was_neighbour

    def set_finger(self, index: int, peer: int) -> None:
        if peer != self.own_id:
            self.fingers[index] = peer

    def finger_indices_to_repair(self) -> list[int]:
        """
        Finger slots worth looking up, largest span first.

        Slots whose target falls before our last successor are covered by
        the successor list already, so a ring of N peers needs only about
        log2(N) lookups per round instead of 128.
        """
        indices: list[int] = []
        horizon = clockwise(self.own_id, self.successors[-1]) if self.successors else 0
        for index in range(NODE_ID_BITS - 1, -1, -1):
            if clockwise(self.own_id, finger_target(self.own_id, index)) <= horizon:
                break
            indices.append(index)
        return indices

    def finger_target(self, index: int) -> int:
        return finger_target(self.own_id, index)

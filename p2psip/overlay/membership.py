"""
Where this node stands in the ring: a small typed state machine.

::

    STOPPED --founded--> ALONE --peer_joined--> JOINED
    STOPPED --join_started--> JOINING --range_received--> ADMITTED --join_completed--> JOINED
    ALONE, JOINED --leave_started--> LEAVING
    STOPPED, ATTACHED --attach_started--> ATTACHING --attached--> ATTACHED
    any --stopped--> STOPPED

A node answers for a range of the ring (delivers Fetches, Stores and
Attaches for ids it owns) only while it is ALONE, ADMITTED or JOINED: a
JOINING node has not received its range from the admitting peer yet
(RFC 6940 s10.5), so answering "not found" there would report stored
values as missing.  ADMITTED is the moment between the admitting peer's
Update (the range is ours, its data handed over) and the end of linking
to the rest of the neighbourhood.

Every part of the node reads the state from here; the transitions are
the only way to change it, and a transition the table does not list is a
bug (:class:`InvalidTransition`).

ATTACHING and ATTACHED are a client's (RFC 6940 s3.2.1): it never enters
the ring, so it answers for no range and takes part in no maintenance,
but it is active (losing its attachment peer is a failure to act on).
"""

from __future__ import annotations

import enum
from collections.abc import Callable


class NodeState(str, enum.Enum):
    """The node's place in the ring; the value is what ``/status`` shows."""

    STOPPED = "stopped"
    ALONE = "alone"
    JOINING = "joining"
    ADMITTED = "admitted"
    JOINED = "joined"
    LEAVING = "leaving"
    #: A client looking for (or moving to) its attachment peer.
    ATTACHING = "attaching"
    #: A client whose messages go through its attachment peer.
    ATTACHED = "attached"


class Event(enum.Enum):
    """What happened to the node (inputs of the machine, past tense)."""

    FOUNDED = "founded"
    JOIN_STARTED = "join_started"
    RANGE_RECEIVED = "range_received"
    JOIN_COMPLETED = "join_completed"
    PEER_JOINED = "peer_joined"
    LEAVE_STARTED = "leave_started"
    ATTACH_STARTED = "attach_started"
    ATTACHED = "attached"
    STOPPED = "stopped"


_TRANSITIONS: dict[tuple[NodeState, Event], NodeState] = {
    (NodeState.STOPPED, Event.FOUNDED): NodeState.ALONE,
    (NodeState.STOPPED, Event.JOIN_STARTED): NodeState.JOINING,
    (NodeState.JOINING, Event.RANGE_RECEIVED): NodeState.ADMITTED,
    (NodeState.ADMITTED, Event.JOIN_COMPLETED): NodeState.JOINED,
    (NodeState.ALONE, Event.PEER_JOINED): NodeState.JOINED,
    # A second peer in a ring that is already ours changes nothing.
    (NodeState.JOINED, Event.PEER_JOINED): NodeState.JOINED,
    (NodeState.ALONE, Event.LEAVE_STARTED): NodeState.LEAVING,
    (NodeState.JOINED, Event.LEAVE_STARTED): NodeState.LEAVING,
    (NodeState.STOPPED, Event.ATTACH_STARTED): NodeState.ATTACHING,
    (NodeState.ATTACHING, Event.ATTACH_STARTED): NodeState.ATTACHING,
    (NodeState.ATTACHED, Event.ATTACH_STARTED): NodeState.ATTACHING,
    (NodeState.ATTACHING, Event.ATTACHED): NodeState.ATTACHED,
    **{(state, Event.STOPPED): NodeState.STOPPED for state in NodeState},
}


class InvalidTransition(RuntimeError):
    """An event that the current state does not accept: a bug in the caller."""


class Membership:
    """The current :class:`NodeState` and the questions the other parts ask of it."""

    def __init__(self) -> None:
        self.state = NodeState.STOPPED
        #: Called with (old, new) after every change of state.
        self.observers: list[Callable[[NodeState, NodeState], None]] = []

    def happened(self, event: Event) -> NodeState:
        """Apply ``event``; returns the new state."""
        try:
            new = _TRANSITIONS[(self.state, event)]
        except KeyError:
            raise InvalidTransition(f"{event.value} while {self.state.value}") from None
        old, self.state = self.state, new
        if new is not old:
            for observer in list(self.observers):
                observer(old, new)
        return new

    def in_ring(self) -> bool:
        """Whether we answer for our range of the ring."""
        return self.state in (NodeState.ALONE, NodeState.ADMITTED, NodeState.JOINED)

    def is_member(self) -> bool:
        """Whether we take part in maintenance (send Updates, admit peers, repair fingers)."""
        return self.state in (NodeState.ALONE, NodeState.JOINED)

    def is_joining(self) -> bool:
        return self.state in (NodeState.JOINING, NodeState.ADMITTED)

    def reaches_ring(self) -> bool:
        """Whether requests can go into the ring: ours as a member, or a client's through its peer."""
        return self.in_ring() or self.state is NodeState.ATTACHED

    def is_client(self) -> bool:
        """Whether this node is a client (attaching or attached), never a ring member."""
        return self.state in (NodeState.ATTACHING, NodeState.ATTACHED)

    def is_active(self) -> bool:
        """Not stopped or stopping: losing a link is then worth reporting as a failure."""
        return self.state not in (NodeState.STOPPED, NodeState.LEAVING)

"""The node's state machine: the transitions the table allows, and nothing else."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.membership import Event, InvalidTransition, Membership, NodeState


class MembershipTests(SynchronousTestCase):
    def run_events(self, *events: Event) -> tuple[Membership, list[tuple[NodeState, NodeState]]]:
        membership = Membership()
        changes: list[tuple[NodeState, NodeState]] = []
        membership.observers.append(lambda old, new: changes.append((old, new)))
        for event in events:
            membership.happened(event)
        return membership, changes

    def test_join_path(self) -> None:
        """Joining goes JOINING, ADMITTED (range received), JOINED; observers see each change."""
        membership, changes = self.run_events(
            Event.JOIN_STARTED, Event.RANGE_RECEIVED, Event.JOIN_COMPLETED
        )
        self.assertEqual(
            changes,
            [
                (NodeState.STOPPED, NodeState.JOINING),
                (NodeState.JOINING, NodeState.ADMITTED),
                (NodeState.ADMITTED, NodeState.JOINED),
            ],
        )
        self.assertTrue(membership.is_member())

    def test_founder_path(self) -> None:
        """A founder is ALONE until a peer joins; a second peer changes nothing."""
        membership, changes = self.run_events(Event.FOUNDED, Event.PEER_JOINED, Event.PEER_JOINED)
        self.assertEqual(membership.state, NodeState.JOINED)
        self.assertEqual(len(changes), 2)

    def test_who_answers_for_a_range(self) -> None:
        """Only ALONE, ADMITTED and JOINED nodes answer for their range."""
        answers = {}
        for events in (
            (),
            (Event.FOUNDED,),
            (Event.JOIN_STARTED,),
            (Event.JOIN_STARTED, Event.RANGE_RECEIVED),
            (Event.FOUNDED, Event.LEAVE_STARTED),
        ):
            membership, _ = self.run_events(*events)
            answers[membership.state] = membership.in_ring()
        self.assertEqual(
            answers,
            {
                NodeState.STOPPED: False,
                NodeState.ALONE: True,
                NodeState.JOINING: False,
                NodeState.ADMITTED: True,
                NodeState.LEAVING: False,
            },
        )

    def test_invalid_transitions_are_bugs(self) -> None:
        """An event the current state does not accept raises, naming both."""
        membership, _ = self.run_events(Event.JOIN_STARTED)
        error = self.assertRaises(InvalidTransition, membership.happened, Event.LEAVE_STARTED)
        self.assertEqual(str(error), "leave_started while joining")
        self.assertEqual(membership.state, NodeState.JOINING)

    def test_stop_from_anywhere(self) -> None:
        """Every state can stop."""
        for state_events in (
            (),
            (Event.FOUNDED,),
            (Event.JOIN_STARTED,),
            (Event.FOUNDED, Event.LEAVE_STARTED),
        ):
            membership, _ = self.run_events(*state_events, Event.STOPPED)
            self.assertEqual(membership.state, NodeState.STOPPED)

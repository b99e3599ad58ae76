"""
Dead and stuck peers: links closed when messages stay unacknowledged,
bounded unacknowledged data per link, unanswered requests sent again, and
a peer restarted within seconds getting back in.
"""

from __future__ import annotations

from typing import Any

from attrs import evolve

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay import links as links_module
from p2psip.overlay.framing import AckFrame, encode_frame
from p2psip.overlay.links import FramedStreamLink, Link
from p2psip.overlay.message import (
    Destination,
    MessageCode,
    peek_code,
    peek_header,
    replace_header,
)
from p2psip.overlay.messaging import Reply
from p2psip.overlay.membership import Event
from p2psip.overlay.bodies import ChordUpdateType, PingReq, UpdateReq
from p2psip.overlay.transactions import TransactionTable
from tests.overlay.parts import MessengerUnderTest, RecordingLink, sorted_identities
from tests.overlay.ringsim import RingSimulation

PING = PingReq().encode()


class Listener:
    """What a FramedStreamLink reports to, recorded."""

    def __init__(self) -> None:
        self.lost: list[Link] = []

    def link_established(self, link: Link) -> None:
        pass

    def message_received(self, link: Link, data: bytes) -> None:
        pass

    def link_lost(self, link: Link) -> None:
        self.lost.append(link)

    def link_for(self, peer: int) -> Any:
        return None


class UnacknowledgedFramesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.link = FramedStreamLink(Listener(), self.clock, 65536, False)
        self.transport = StringTransport()
        self.link.makeConnection(self.transport)

    def test_oldest_unacknowledged_send_is_reported(self) -> None:
        """unacknowledged_since is the oldest frame not acked; an ack of it moves it on."""
        self.assertIsNone(self.link.unacknowledged_since())
        self.link.send(b"one")
        self.clock.advance(2)
        self.link.send(b"two")
        self.assertEqual(self.link.unacknowledged_since(), 0.0)
        self.link.dataReceived(encode_frame(AckFrame(1, 0)))
        self.assertEqual(self.link.unacknowledged_since(), 2.0)
        self.link.dataReceived(encode_frame(AckFrame(2, 0)))
        self.assertIsNone(self.link.unacknowledged_since())

    def test_peer_that_does_not_read_gets_its_link_closed(self) -> None:
        """Past the bound of unacknowledged frames the link closes instead of buffering more."""
        self.patch(links_module, "MAX_UNACKED_FRAMES", 10)
        for _ in range(10):
            self.link.send(b"x")
        self.assertFalse(self.transport.disconnecting)
        written = len(self.transport.value())
        self.link.send(b"one too many")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(len(self.transport.value()), written)

    def test_bytes_are_bounded_too(self) -> None:
        """Unacknowledged bytes past the bound close the link as well."""
        self.patch(links_module, "MAX_UNACKED_BYTES", 1000)
        self.link.send(b"x" * 600)
        self.link.send(b"x" * 600)
        self.assertTrue(self.transport.disconnecting)


class AckTimeoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sim = RingSimulation(seed=31)
        self.addCleanup(self.sim.stop_all)
        self.first = self.sim.found()
        self.second = self.sim.join()
        self.third = self.sim.join()
        self.sim.run_until(self.sim.consistent, 60)

    def test_dead_peer_found_soon_after_a_message_to_it(self) -> None:
        """A peer that lost power is reported within the ack timeout of the first message sent to it."""
        failures: list[int] = []
        self.first.connectivity.failure_observers.append(failures.append)
        self.sim.crash(self.second)
        self.first.lookup_id(self.second.node_id).addErrback(lambda _: None)
        self.sim.run(self.sim.config.link_ack_timeout_seconds + 2)
        self.assertEqual(failures, [self.second.node_id])
        self.assertFalse(self.first.has_link(self.second.node_id))

    def test_suspected_dead_peer_closed_at_the_short_deadline(self) -> None:
        """
        A peer another one already acts as if dead (suspected) is pinged,
        and its link closed once the Ping goes unacknowledged for
        suspect_ack_timeout_seconds, well before the ack timeout.
        """
        failures: list[int] = []
        self.first.connectivity.failure_observers.append(failures.append)
        self.sim.crash(self.second)
        self.first.connectivity.suspect(self.second.node_id)
        config = self.sim.config
        self.assertLess(config.suspect_ack_timeout_seconds, config.link_ack_timeout_seconds)
        self.sim.run(config.suspect_ack_timeout_seconds + 0.1)
        self.assertEqual(failures, [self.second.node_id])
        self.assertEqual(self.first.counters["suspects_closed_early"], 1)

    def test_one_deadline_per_suspect(self) -> None:
        """A peer suspected again and again (forged answers naming it) gets one timer, and stop cancels it."""
        before = len(self.sim.clock.getDelayedCalls())
        for _ in range(100):
            self.first.connectivity.suspect(self.second.node_id)
        self.assertEqual(len(self.first.connectivity._suspect_checks), 1)
        self.assertLessEqual(
            len(self.sim.clock.getDelayedCalls()), before + 3
        )  # deadline, Ping timers
        self.first.connectivity.close_all()
        self.assertEqual(self.first.connectivity._suspect_checks, {})

    def test_suspected_live_peer_is_kept(self) -> None:
        """A suspect that answers the Ping keeps its link."""
        failures: list[int] = []
        self.first.connectivity.failure_observers.append(failures.append)
        self.first.connectivity.suspect(self.second.node_id)
        self.sim.run(self.sim.config.link_ack_timeout_seconds + 2)
        self.assertEqual(failures, [])
        self.assertTrue(self.first.has_link(self.second.node_id))

    def test_busy_peer_that_goes_on_sending_is_kept(self) -> None:
        """A peer slow to acknowledge but still sending keeps its link; silent since, it loses it."""
        failures: list[int] = []
        self.first.connectivity.failure_observers.append(failures.append)
        [link] = self.first.links_to(self.second.node_id)
        now = self.sim.clock.seconds()
        self.patch(link, "unacknowledged_since", lambda: now - 10)
        link.last_received_at = now
        self.first.connectivity.check_acks()
        self.assertEqual(failures, [])
        link.last_received_at = now - 11
        self.first.connectivity.check_acks()
        self.assertEqual(failures, [self.second.node_id])

    def test_a_dead_peers_other_silent_links_close_with_the_first(self) -> None:
        """A second link to the peer, as silent, closes too: the peer is failed at once."""
        failures: list[int] = []
        self.first.connectivity.failure_observers.append(failures.append)
        [link] = self.first.links_to(self.second.node_id)
        second_link = RecordingLink(self.sim.clock)
        self.first.connectivity.links.added(second_link)
        self.first.connectivity.links.identify(second_link, self.second.node_id)
        now = self.sim.clock.seconds()
        self.patch(link, "unacknowledged_since", lambda: now - 10)
        link.last_received_at = second_link.last_received_at = now - 11
        self.first.connectivity.check_acks()
        self.assertEqual(failures, [self.second.node_id])
        self.assertTrue(second_link.closed)
        self.assertEqual(self.first.links_to(self.second.node_id), [])

    def test_a_link_that_heard_from_the_peer_since_is_kept(self) -> None:
        """A second link that carried something from the peer after the stuck message stays open."""
        failures: list[int] = []
        self.first.connectivity.failure_observers.append(failures.append)
        [link] = self.first.links_to(self.second.node_id)
        second_link = RecordingLink(self.sim.clock)
        self.first.connectivity.links.added(second_link)
        self.first.connectivity.links.identify(second_link, self.second.node_id)
        now = self.sim.clock.seconds()
        self.patch(link, "unacknowledged_since", lambda: now - 10)
        link.last_received_at = now - 11
        second_link.last_received_at = now
        self.first.connectivity.check_acks()
        self.assertEqual(failures, [])
        self.assertEqual(self.first.links_to(self.second.node_id), [second_link])

    def test_own_stall_is_no_evidence(self) -> None:
        """After our own loop stalled past the check interval, one round passes without judging anyone."""
        failures: list[int] = []
        self.first.connectivity.failure_observers.append(failures.append)
        [link] = self.first.links_to(self.second.node_id)
        self.first.connectivity.check_acks()
        self.sim.clock.rightNow += 20.0  # a stall: no timer ran, nothing was read
        now = self.sim.clock.seconds()
        self.patch(link, "unacknowledged_since", lambda: now - 15)
        link.last_received_at = now - 16
        self.first.connectivity.check_acks()
        self.assertEqual(failures, [])
        self.first.connectivity.check_acks()
        self.assertEqual(failures, [self.second.node_id])

    def test_quick_restart_gets_back_in(self) -> None:
        """A peer restarted two seconds after a power cut rejoins: its old link is challenged, not taken as a twin."""
        victim = self.second
        endpoints = [self.sim.endpoint(self.first)]
        self.sim.crash(victim)
        self.sim.run(2)
        again = self.sim.restart(victim, endpoints)
        self.sim.run_until(self.sim.consistent, 120)
        self.assertIn(again, self.sim.live())


class ResendUnansweredTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.before, self.me, self.after, self.far = sorted_identities(4)
        self.node = MessengerUnderTest(self.me)
        self.node.topology.add_peers([self.before.node_id, self.after.node_id])
        self.node.membership.happened(Event.PEER_JOINED)
        self.link = self.node.link_to(self.after)

    def test_unanswered_lookup_is_sent_again_halfway(self) -> None:
        """A routed request with no answer halfway through its timeout goes again under a new id."""
        self.node.messenger.request(
            Destination.resource(self.far.node_id), MessageCode.PING_REQ, PING
        ).addErrback(lambda _: None)
        timeout = self.node.messenger.config.request_timeout_seconds
        self.node.clock.advance(timeout / 2)
        first, second = self.link.sent
        self.assertNotEqual(peek_header(first).transaction_id, peek_header(second).transaction_id)
        self.node.clock.advance(timeout / 2)
        self.assertEqual(len(self.link.sent), 2)
        self.assertEqual(len(self.node.messenger.transactions), 0)

    def test_halfway_copy_leaves_over_another_first_hop(self) -> None:
        """With a second usable first hop, the copy avoids the one the first went over."""
        other = self.node.link_to(self.before)
        self.node.messenger.request(
            Destination.resource(self.far.node_id), MessageCode.PING_REQ, PING
        ).addErrback(lambda _: None)
        self.node.clock.advance(self.node.messenger.config.request_timeout_seconds / 2)
        self.assertEqual((len(self.link.sent), len(other.sent)), (1, 1))
        self.node.clock.advance(self.node.messenger.config.request_timeout_seconds / 2)

    def test_requests_over_a_chosen_link_and_joins_are_not(self) -> None:
        """A keepalive over a chosen link and a routed Join are sent once only."""
        self.node.messenger.request(
            Destination.node(self.after.node_id), MessageCode.PING_REQ, PING, first_link=self.link
        ).addErrback(lambda _: None)
        self.node.messenger.request(
            Destination.resource(self.far.node_id), MessageCode.JOIN_REQ, PING
        ).addErrback(lambda _: None)
        self.node.clock.advance(self.node.messenger.config.request_timeout_seconds)
        self.assertEqual(len(self.link.sent), 2)


class RerouteTests(SynchronousTestCase):
    def test_requests_a_dead_peer_never_took_go_round_it(self) -> None:
        """Requests left unacknowledged on a closed link are routed again by another peer; answers are not."""
        before, me, after, far = sorted_identities(4)
        node = MessengerUnderTest(me)
        node.topology.add_peers([before.node_id, after.node_id])
        node.membership.happened(Event.PEER_JOINED)
        other = node.link_to(before)
        request = node.messenger.encode(
            MessageCode.PING_REQ, PING, (Destination.resource(far.node_id),), 0x77
        )
        answer = node.messenger.encode(
            MessageCode.PING_ANS, PING, (Destination.node(far.node_id),), 0x78
        )
        node.messenger.reroute([request, answer], after.node_id)
        self.assertEqual(other.sent, [request])
        self.assertEqual(node.counters["messages_rerouted"], 1)

    def test_request_for_a_dead_predecessors_range_is_answered_here(self) -> None:
        """
        A request we forwarded to our predecessor, which died, is answered
        by us once its range is ours, back over the link it came in on.
        """
        far, dead, me, sender = sorted_identities(4)
        node = MessengerUnderTest(me)
        node.topology.add_peers([far.node_id, dead.node_id, sender.node_id])
        node.membership.happened(Event.PEER_JOINED)
        node.messenger.handle(MessageCode.PING_REQ, lambda *_: Reply(MessageCode.PING_ANS, b""))
        back = node.link_to(sender)
        requester = MessengerUnderTest(sender).messenger
        txid = requester.transactions.new_transaction_id()
        request = requester.encode(
            MessageCode.PING_REQ, PING, (Destination.resource(dead.node_id - 1),), txid
        )
        header = peek_header(request)
        forwarded = replace_header(
            request,
            evolve(header, ttl=header.ttl - 1, via_list=(Destination.node(sender.node_id),)),
        )
        # The ack watch closes the dead peer's link, the tables forget it, then it reroutes.
        node.topology.remove_peer(dead.node_id)
        node.messenger.reroute([forwarded], dead.node_id)
        (answer,) = back.sent
        answer_header, code = peek_code(answer)
        self.assertEqual(code, MessageCode.PING_ANS)
        self.assertEqual(answer_header.transaction_id, txid)
        self.assertEqual(answer_header.destination_list, (Destination.node(sender.node_id),))
        self.assertEqual(node.counters["stranded_requests_taken_over"], 1)


class FalseAlarmTests(SynchronousTestCase):
    def test_peers_that_took_each_other_for_dead_find_each_other_again(self) -> None:
        """Two peers that each declared the other failed (and closed their links) form one ring again."""
        sim = RingSimulation(seed=41)
        self.addCleanup(sim.stop_all)
        first = sim.found()
        second = sim.join()
        sim.run_until(sim.consistent, 60)
        for node, other in ((first, second), (second, first)):
            for link in node.links_to(other.node_id):
                node.connectivity.drop_link(link)
            node.chord.peer_failed(other.node_id)
        self.assertTrue(first.topology.is_alone() and second.topology.is_alone())
        waited = sim.run_until(sim.consistent, 600)
        self.assertLessEqual(waited, 3 * sim.config.failed_peer_memory_seconds)


class SkippedPeerTests(SynchronousTestCase):
    def test_peer_a_neighbour_skips_is_pinged(self) -> None:
        """An Update whose first successor lies beyond peers we list between us makes us ping them."""
        sim = RingSimulation(seed=43)
        self.addCleanup(sim.stop_all)
        sim.grow(5)
        sim.run_until(sim.consistent, 120)
        node = sim.live()[0]
        first, second, third = node.topology.predecessors[:3]
        # The third peer before us reports us as its first successor: it
        # has taken the two between us for failed.
        update = UpdateReq(0, ChordUpdateType.NEIGHBORS, (), (node.node_id,), ())
        pinged: list[int] = []
        suspected: list[bool] = []

        def ping_now(link: Any, peer: int, suspected_now: bool = False) -> None:
            pinged.append(peer)
            suspected.append(suspected_now)

        self.patch(
            node.connectivity,
            "ping_now",
            lambda link, peer, suspected=False: ping_now(link, peer, suspected),
        )
        node.chord._check_skipped_peers(third, update)
        self.assertEqual(sorted(pinged), sorted([first, second]))
        self.assertEqual(suspected, [True, True])  # the short deadline: a neighbour skipped them


class RenumberedRequestTests(SynchronousTestCase):
    def test_answer_to_the_first_id_still_completes_a_resent_request(self) -> None:
        """
        Under churn the first copy of a resent request is often the one
        answered (a hop routed it round a dead peer): its answer, to the
        id it was first sent under, completes the request.
        """
        clock = Clock()
        table = TransactionTable(clock, 15.0)
        pending = table.add(table.new_transaction_id(), 0, b"first", "PING_REQ to x")
        first_id = pending.transaction_id
        table.renumber(pending, lambda new_id: b"second")
        self.assertNotEqual(pending.transaction_id, first_id)
        self.assertEqual((len(table), table.find(first_id)), (1, pending))
        self.assertIs(table.complete(first_id), pending)
        self.assertEqual((len(table), table.find(pending.transaction_id)), (0, None))
        clock.advance(15.0)  # no timeout fires for a completed request
        self.assertFalse(pending.deferred.called)

    def test_a_resent_request_times_out_once(self) -> None:
        clock = Clock()
        table = TransactionTable(clock, 15.0)
        pending = table.add(table.new_transaction_id(), 0, b"first", "PING_REQ to x")
        table.renumber(pending, lambda new_id: b"second")
        failures: list[object] = []
        pending.deferred.addErrback(failures.append)
        clock.advance(15.0)
        self.assertEqual((len(failures), len(table)), (1, 0))

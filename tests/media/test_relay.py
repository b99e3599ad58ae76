"""The relay's sans-IO parts: legs, latching, loss counting, the port pool and sessions."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from p2psip.media.relay import Leg, PortPool, PortsExhausted, SequenceTracker, pair_sides
from p2psip.media.sdp import parse_sdp
from p2psip.media.sessions import RelaySessions, SessionRefused
from tests.media.fakes import RecordingOpener


def rtp(sequence: int, payload: bytes = b"\x00" * 160) -> bytes:
    """An RTP packet (version 2, PCMU) with ``sequence``."""
    return struct.pack("!BBHII", 0x80, 0, sequence & 0xFFFF, sequence * 160, 0x1234) + payload


class LegTests(SynchronousTestCase):
    def setUp(self) -> None:
        stream = pair_sides("audio", 40000, 40002)
        self.caller, self.callee = stream.caller.rtp, stream.callee.rtp
        self.caller.expect(("10.0.0.5", 4000), frozenset({"10.0.0.5", "203.0.113.9"}))
        self.callee.expect(("198.51.100.20", 6000), frozenset({"198.51.100.20"}))

    def test_forwards_to_the_partners_party(self) -> None:
        """A packet from the caller goes to the callee's SDP address, and back."""
        self.assertEqual(
            self.caller.received(rtp(1), ("203.0.113.9", 31000)), ("198.51.100.20", 6000)
        )
        self.assertEqual(
            self.callee.received(rtp(1), ("198.51.100.20", 6000)), ("203.0.113.9", 31000)
        )

    def test_latches_onto_the_real_sender(self) -> None:
        """The first packet from the signalling host latches the leg to its NAT-mapped port (RFC 4961)."""
        self.caller.received(rtp(1), ("203.0.113.9", 31000))
        self.assertTrue(self.caller.latched)
        self.assertEqual(self.caller.peer, ("203.0.113.9", 31000))

    def test_strangers_dropped(self) -> None:
        """Before latching, unknown hosts are dropped; after it, every other source is."""
        self.assertIsNone(self.caller.received(rtp(1), ("192.0.2.66", 4000)))
        self.caller.received(rtp(2), ("203.0.113.9", 31000))
        self.assertIsNone(self.caller.received(rtp(3), ("203.0.113.9", 31002)))
        self.assertEqual((self.caller.strangers, self.caller.packets), (2, 1))

    def test_new_sdp_unlatches_and_same_sdp_keeps_latch(self) -> None:
        """The same SDP again keeps the latch; a new address from the party lets it latch afresh."""
        self.caller.received(rtp(1), ("203.0.113.9", 31000))
        self.caller.expect(("10.0.0.5", 4000), frozenset({"10.0.0.5", "203.0.113.9"}))
        self.assertTrue(self.caller.latched)
        self.caller.expect(("10.0.0.6", 4000), frozenset({"10.0.0.6", "203.0.113.9"}))
        self.assertFalse(self.caller.latched)

    def test_unknown_partner_is_unroutable(self) -> None:
        """Media before the other party's SDP is counted and dropped."""
        leg = Leg(40000, True, partner=Leg(40002, True))
        self.assertIsNone(leg.received(rtp(1), ("192.0.2.1", 1)))
        self.assertEqual(leg.unroutable, 1)


class SequenceTests(SynchronousTestCase):
    def test_loss_and_wrap(self) -> None:
        """Gaps count as loss across the 16-bit wrap; duplicates and reordering do not."""
        tracker = SequenceTracker()
        for sequence in [65533, 65534, 65535, 1, 2, 2, 0, 5]:
            tracker.saw(sequence)
        # expected 65533..65541 (9), received 8 (the duplicate counts): 3 and 4 missing.
        self.assertEqual((tracker.expected, tracker.lost), (9, 1))

    def test_restart_is_no_loss(self) -> None:
        """A big jump (a sender restart) starts counting over."""
        tracker = SequenceTracker()
        for sequence in [10, 11, 30000, 30001]:
            tracker.saw(sequence)
        self.assertEqual(tracker.lost, 0)


class PortPoolTests(SynchronousTestCase):
    def test_even_pairs_and_exhaustion(self) -> None:
        """Even RTP ports from the range, until none are left; released ones come back last."""
        pool = PortPool(40001, 40007)
        self.assertEqual([pool.allocate() for _ in range(3)], [40002, 40004, 40006])
        self.assertRaises(PortsExhausted, pool.allocate)
        pool.release(40002)
        self.assertEqual((pool.allocate(), pool.in_use), (40002, 3))

    def test_range_without_a_pair(self) -> None:
        """A range with no even/odd pair is refused."""
        self.assertRaises(ValueError, PortPool, 40001, 40002)


OFFER = parse_sdp(b"v=0\r\nc=IN IP4 10.0.0.5\r\nm=audio 4000 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\n")


class SessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.opener = RecordingOpener()
        self.sessions = RelaySessions(
            PortPool(40000, 40007), self.opener, idle_timeout_seconds=60, sessions_per_source=2
        )

    def test_streams_get_ports_and_are_freed(self) -> None:
        """An enabled stream takes two pairs (four sockets); ending the session frees them."""
        session = self.sessions.create("call-1", "tag", "203.0.113.9", 0)
        ports = self.sessions.sdp_from(session, True, OFFER, "203.0.113.9")
        self.assertEqual([p and (p.rtp, p.rtcp) for p in ports], [(40002, 40003), None])
        self.assertEqual(self.sessions.pool.in_use, 2)
        self.sessions.end("call-1", "bye")
        self.assertEqual((self.sessions.pool.in_use, self.opener.open_count), (0, 0))
        self.assertEqual(self.sessions.ended["bye"], 1)

    def test_loopback_media_from_elsewhere_is_not_sent_to(self) -> None:
        """
        A party signalling from another host that names 127.0.0.1 (a local
        service's port) gets nothing sent there: its leg waits for its own
        packets to latch it.
        """
        offer = parse_sdp(b"v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 6379 RTP/AVP 0\r\n")
        session = self.sessions.create("call-1", "tag", "203.0.113.9", 0)
        self.sessions.sdp_from(session, True, offer, "203.0.113.9")
        caller = session.streams[0].caller.rtp
        self.assertIsNone(caller.peer)
        self.assertEqual(caller.latch_hosts, frozenset({"203.0.113.9"}))
        self.assertIsNone(caller.received(rtp(1), ("127.0.0.1", 6379)))
        caller.received(rtp(2), ("203.0.113.9", 31000))
        self.assertEqual(caller.peer, ("203.0.113.9", 31000))

    def test_loopback_media_of_an_unknown_party(self) -> None:
        """Heard through another super-node: loopback only when the relay itself serves loopback."""
        offer = parse_sdp(b"v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n")
        public = self.sessions.create("public", "tag", "203.0.113.9", 0)
        self.sessions.sdp_from(public, True, offer, None)
        self.assertIsNone(public.streams[0].caller.rtp.peer)
        development = self.sessions.create("development", "tag", "127.0.0.1", 0)
        self.sessions.sdp_from(development, True, offer, None, loopback_media=True)
        self.assertEqual(development.streams[0].caller.rtp.peer, ("127.0.0.1", 4000))

    def test_loopback_media_of_a_phone_on_this_host(self) -> None:
        """A phone signalling from loopback may receive media on loopback."""
        offer = parse_sdp(b"v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n")
        session = self.sessions.create("call-1", "tag", "127.0.0.1", 0)
        self.sessions.sdp_from(session, True, offer, "127.0.0.1")
        self.assertEqual(session.streams[0].caller.rtp.peer, ("127.0.0.1", 4000))

    def test_idle_sessions_expire(self) -> None:
        """An answered call silent for the idle timeout is ended; one with packets is kept."""
        quiet = self.sessions.create("quiet", "t", "203.0.113.9", 0)
        busy = self.sessions.create("busy", "t", "203.0.113.8", 0)
        for session in (quiet, busy):
            self.sessions.sdp_from(session, True, OFFER, None)
            session.answered = True
        busy.streams[0].caller.rtp.received(rtp(1), ("10.0.0.5", 4000))
        self.sessions.sweep(59)
        busy.streams[0].caller.rtp.received(rtp(2), ("10.0.0.5", 4000))
        expired = self.sessions.sweep(61)
        self.assertEqual([s.key for s in expired], ["quiet"])
        self.assertEqual(self.sessions.pool.in_use, 2)

    def test_unanswered_calls_get_the_setup_timeout(self) -> None:
        """A ringing call is not idle before the set-up timeout."""
        self.sessions.create("ringing", "t", "203.0.113.9", 0)
        self.assertEqual(self.sessions.sweep(100), [])
        self.assertEqual(len(self.sessions.sweep(self.sessions.setup_timeout_seconds)), 1)

    def test_share_per_source_and_port_exhaustion(self) -> None:
        """One source holds at most its share; the pool running dry refuses the stream."""
        first = self.sessions.create("a", "t", "203.0.113.9", 0)
        self.sessions.create("b", "t", "203.0.113.9", 0)
        self.assertRaises(SessionRefused, self.sessions.create, "c", "t", "203.0.113.9", 0)
        self.sessions.sdp_from(first, True, OFFER, None)
        other = self.sessions.create("d", "t", "203.0.113.7", 0)
        self.sessions.sdp_from(other, True, OFFER, None)
        third = self.sessions.create("e", "t", "203.0.113.6", 0)
        self.assertRaises(SessionRefused, self.sessions.sdp_from, third, True, OFFER, None)
        self.assertEqual((self.sessions.refused, self.sessions.pool.in_use), (2, 4))

    def test_bind_failure_quarantines(self) -> None:
        """Ports the system will not bind are taken out of the pool and the stream refused."""
        self.opener.fail = True
        session = self.sessions.create("a", "t", "203.0.113.9", 0)
        self.assertRaises(SessionRefused, self.sessions.sdp_from, session, True, OFFER, None)
        self.assertEqual(self.sessions.pool.capacity, 0)

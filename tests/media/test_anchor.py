"""Which calls are relayed, and the SDP of each message of a dialog (p2psip.media.anchor)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.media.anchor import RELAY_HEADER, MediaAnchor, MediaPolicy
from p2psip.media.relay import PortPool
from p2psip.media.sdp import parse_sdp
from p2psip.media.sessions import RelaySessions
from p2psip.sip.errors import SipParseError
from p2psip.sip.transaction import Hop
from p2psip.sip.uri import parse_uri
from p2psip.usages.media_relay import MediaRelayEntry
from tests.media.fakes import RecordingOpener
from tests.media.messages import CALLEE_TAG, CALLER_TAG, request, response, sdp

RELAY = "198.51.100.7"
#: The caller's phone as the super-node sees it, and the phone's own view (a NAT between).
SOURCE = Hop("UDP", "203.0.113.9", 31000)
NATED_VIA = "SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bKa1;received=203.0.113.9;rport=31000"
PLAIN_VIA = "SIP/2.0/UDP 203.0.113.9:31000;branch=z9hG4bKa1"
#: The target of a call leaving for another super-node, and one delivered to a phone here.
TO_NODE = [(parse_uri("sip:bob@p2psip.test;p2psip-node=00ff"), Hop("UDP", "198.51.100.2", 5060))]
TO_NATED_PHONE = [(parse_uri("sip:bob@192.168.1.30:5060"), Hop("UDP", "203.0.113.40", 40123))]


def media_of(body: bytes) -> list[tuple[str, int] | None]:
    description = parse_sdp(body)
    return [description.rtp_destination(stream) for stream in description.streams]


class AnchorTests(SynchronousTestCase):
    def make(self, policy: MediaPolicy) -> MediaAnchor:
        self.clock = Clock()
        self.opener = RecordingOpener()
        self.sessions = RelaySessions(PortPool(40000, 40099), self.opener)
        return MediaAnchor(self.sessions, policy, RELAY, self.clock)

    def test_never_leaves_bodies_alone(self) -> None:
        """With media-relay never no session is made and nothing is rewritten."""
        anchor = self.make(MediaPolicy.NEVER)
        invite = request("INVITE", sdp("192.168.1.20", 4000), via=NATED_VIA)
        self.assertIsNone(anchor.request_forwarding(invite, SOURCE, TO_NODE))
        self.assertEqual(len(self.sessions), 0)

    def test_nat_only_needs_evidence(self) -> None:
        """nat-only relays a NATed caller (Via received/rport, private c=), not a public one."""
        anchor = self.make(MediaPolicy.NAT_ONLY)
        public = request("INVITE", sdp("203.0.113.9", 4000), via=PLAIN_VIA)
        self.assertIsNone(anchor.request_forwarding(public, SOURCE, TO_NODE))
        by_via = request("INVITE", sdp("203.0.113.9", 4000), via=NATED_VIA, call_id="c2")
        self.assertIsNotNone(anchor.request_forwarding(by_via, SOURCE, TO_NODE))
        by_sdp = request("INVITE", sdp("10.1.1.1", 4000), via=PLAIN_VIA, call_id="c3")
        self.assertIsNotNone(anchor.request_forwarding(by_sdp, SOURCE, TO_NODE))
        self.assertEqual(len(self.sessions), 2)

    def test_nat_only_callee_here(self) -> None:
        """A call arriving from another super-node is relayed for a NATed callee served here."""
        anchor = self.make(MediaPolicy.NAT_ONLY)
        uri = "sip:bob@p2psip.test;p2psip-node=0001"
        invite = request("INVITE", sdp("203.0.113.9", 4000), uri=uri, via=PLAIN_VIA)
        self.assertIsNone(anchor.request_forwarding(invite, SOURCE, TO_NODE))
        self.assertIsNotNone(anchor.request_forwarding(invite, SOURCE, TO_NATED_PHONE))

    def test_a_whole_call(self) -> None:
        """Offer, 183, 200, re-INVITE, UPDATE and BYE: each party is shown the relay, ports freed."""
        anchor = self.make(MediaPolicy.ALWAYS)
        invite = request("INVITE", sdp("192.168.1.20", 4000, video_port=0), via=NATED_VIA)
        offer = anchor.request_forwarding(invite, SOURCE, TO_NODE)
        assert offer is not None
        [caller_side, disabled] = media_of(offer)
        self.assertEqual((caller_side and caller_side[0], disabled), (RELAY, None))
        early = response(invite, 183, sdp("198.51.100.20", 6000))
        anchor.response_forwarding(early)
        [callee_side] = media_of(early.body)
        self.assertEqual(callee_side and callee_side[0], RELAY)
        self.assertNotEqual(callee_side, caller_side)
        answer = response(invite, 200, sdp("198.51.100.20", 6000))
        anchor.response_forwarding(answer)
        self.assertEqual(media_of(answer.body), [callee_side])
        session = self.sessions.get("call-1")
        assert session is not None
        self.assertTrue(session.answered)
        # The callee re-INVITEs with video added: the caller sees the relay for both streams.
        reinvite = request(
            "INVITE",
            sdp("198.51.100.20", 6000, video_port=6002),
            from_tag=CALLEE_TAG,
            to_tag=CALLER_TAG,
            cseq=1,
        )
        rewritten = anchor.request_forwarding(reinvite, Hop("UDP", "198.51.100.2", 5060), [])
        assert rewritten is not None
        audio, video = media_of(rewritten)
        self.assertEqual(audio, callee_side)
        self.assertEqual(video and video[0], RELAY)
        reply = response(reinvite, 200, sdp("192.168.1.20", 4000, video_port=4002))
        anchor.response_forwarding(reply)
        self.assertEqual(media_of(reply.body)[0], caller_side)
        update = request("UPDATE", sdp("192.168.1.21", 4000), to_tag=CALLEE_TAG, cseq=3)
        moved = anchor.request_forwarding(update, SOURCE, [])
        assert moved is not None
        self.assertEqual(media_of(moved), [caller_side])
        self.assertEqual(session.streams[0].caller.rtp.peer, ("192.168.1.21", 4000))
        self.assertEqual(self.sessions.pool.in_use, 4)
        anchor.request_forwarding(request("BYE", to_tag=CALLEE_TAG, cseq=4), SOURCE, [])
        self.assertEqual((len(self.sessions), self.sessions.pool.in_use), (0, 0))
        self.assertEqual(self.opener.open_count, 0)

    def test_late_offer(self) -> None:
        """INVITE without SDP: the offer comes in the 200 and the answer in the ACK."""
        anchor = self.make(MediaPolicy.ALWAYS)
        invite = request("INVITE", via=NATED_VIA)
        self.assertIsNone(anchor.request_forwarding(invite, SOURCE, TO_NODE))
        ok = response(invite, 200, sdp("198.51.100.20", 6000))
        anchor.response_forwarding(ok)
        [callee_side] = media_of(ok.body)
        ack = request("ACK", sdp("192.168.1.20", 4000), to_tag=CALLEE_TAG)
        anchor.ack_forwarding(ack)
        [caller_side] = media_of(ack.body)
        self.assertEqual({callee_side and callee_side[0], caller_side and caller_side[0]}, {RELAY})
        session = self.sessions.get("call-1")
        assert session is not None
        self.assertEqual(session.streams[0].caller.rtp.signalled, ("192.168.1.20", 4000))

    def test_failure_and_cancel_free_ports(self) -> None:
        """A final failure of the first INVITE, or a CANCEL before the answer, ends the session."""
        anchor = self.make(MediaPolicy.ALWAYS)
        invite = request("INVITE", sdp("192.168.1.20", 4000), via=NATED_VIA)
        anchor.request_forwarding(invite, SOURCE, TO_NODE)
        anchor.response_forwarding(response(invite, 486))
        other = request("INVITE", sdp("192.168.1.20", 4000), via=NATED_VIA, call_id="c2")
        anchor.request_forwarding(other, SOURCE, TO_NODE)
        anchor.call_cancelled(other)
        self.assertEqual((len(self.sessions), self.sessions.pool.in_use), (0, 0))
        self.assertEqual(dict(self.sessions.ended), {"failed": 1, "cancel": 1})

    def test_hostile_sdp_is_refused(self) -> None:
        """A body that is no SDP is 400, one the relay cannot serve 488; no session is left."""
        anchor = self.make(MediaPolicy.ALWAYS)
        for body, status in (
            (b"v=0\r\nthis is not sdp\r\n", 400),
            (b"v=0\r\nc=IN IP6 2001:db8::1\r\nm=audio 4000 RTP/AVP 0\r\n", 488),
            (b"v=0\r\nc=IN IP4 224.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n", 488),
        ):
            invite = request("INVITE", body, via=NATED_VIA)
            with self.assertRaises(SipParseError) as caught:
                anchor.request_forwarding(invite, SOURCE, TO_NODE)
            self.assertEqual(caught.exception.status, status)
        self.assertEqual((len(self.sessions), self.sessions.pool.in_use), (0, 0))

    def test_hostile_sdp_in_a_response_passes(self) -> None:
        """An unreadable answer cannot be refused: it goes on as it was, and is counted."""
        anchor = self.make(MediaPolicy.ALWAYS)
        invite = request("INVITE", sdp("192.168.1.20", 4000), via=NATED_VIA)
        anchor.request_forwarding(invite, SOURCE, TO_NODE)
        bad = response(invite, 200, b"v=0\r\ngarbage\r\n")
        anchor.response_forwarding(bad)
        self.assertEqual((bad.body, anchor.unreadable_sdp), (b"v=0\r\ngarbage\r\n", 1))

    def test_unrelayable_answer_points_no_leg(self) -> None:
        """
        An answer the relay cannot serve (its RTCP at an IPv6 address) passes
        as it was, and no leg is pointed at it: sending there from the IPv4
        relay would raise for every datagram.
        """
        anchor = self.make(MediaPolicy.ALWAYS)
        invite = request("INVITE", sdp("192.168.1.20", 4000), via=NATED_VIA)
        anchor.request_forwarding(invite, SOURCE, TO_NODE)
        body = (
            b"v=0\r\nc=IN IP4 203.0.113.40\r\nm=audio 5000 RTP/AVP 0\r\n"
            b"a=rtcp:5001 IN IP6 2001:db8::9\r\n"
        )
        answer = response(invite, 200, body)
        anchor.response_forwarding(answer)
        self.assertEqual((answer.body, anchor.unreadable_sdp), (body, 1))
        session = self.sessions.get(invite.call_id)
        assert session is not None
        callee = session.streams[0].callee
        self.assertEqual((callee.rtp.signalled, callee.rtcp.signalled), (None, None))

    def test_no_ports_is_503(self) -> None:
        """With the port range used up the INVITE is refused with 503."""
        anchor = self.make(MediaPolicy.ALWAYS)
        self.sessions.pool = PortPool(40000, 40003)
        invite = request("INVITE", sdp("192.168.1.20", 4000), via=NATED_VIA)
        anchor.request_forwarding(invite, SOURCE, TO_NODE)
        second = request("INVITE", sdp("192.168.1.20", 4000), via=NATED_VIA, call_id="c2")
        with self.assertRaises(SipParseError) as caught:
            anchor.request_forwarding(second, SOURCE, TO_NODE)
        self.assertEqual((caught.exception.status, len(self.sessions)), (503, 1))


class KnownRelays:
    """A RelayDirectory stand-in with one relay listed at 198.51.100.30:5060."""

    def reachable(self) -> list[tuple[MediaRelayEntry, tuple[str, int]]]:
        return [(MediaRelayEntry(0xCC, "198.51.100.31", 100), ("198.51.100.30", 5060))]


class DetourTests(SynchronousTestCase):
    def make(self, directory: object | None, local_node_id: int = 0xAA) -> MediaAnchor:
        self.sessions = RelaySessions(PortPool(0, 0), RecordingOpener())
        return MediaAnchor(
            self.sessions,
            MediaPolicy.ALWAYS,
            RELAY,
            Clock(),
            local_node_id=local_node_id,
            directory=directory,  # type: ignore[arg-type]
        )

    def test_no_ports_goes_through_a_listed_relay(self) -> None:
        """Without ports of its own, the call is marked for the listed relay and routed to it."""
        anchor = self.make(KnownRelays())
        invite = request("INVITE", sdp("192.168.1.20", 4000), via=NATED_VIA)
        self.assertIsNone(anchor.request_forwarding(invite, SOURCE, TO_NODE))
        node = f"{0xCC:032x}"
        self.assertEqual(invite.headers.get(RELAY_HEADER), node)
        self.assertEqual(
            anchor.detour(invite),
            (f"<sip:198.51.100.30:5060;lr;p2psip-node={node}>", Hop("UDP", "198.51.100.30", 5060)),
        )
        self.assertEqual((len(self.sessions), anchor.detoured), (0, 1))

    def test_no_ports_and_no_relay_is_503(self) -> None:
        """With nothing listed the INVITE is refused with 503 and nothing is left behind."""
        anchor = self.make(None)
        invite = request("INVITE", sdp("192.168.1.20", 4000), via=NATED_VIA)
        with self.assertRaises(SipParseError) as caught:
            anchor.request_forwarding(invite, SOURCE, TO_NODE)
        self.assertEqual((caught.exception.status, len(self.sessions)), (503, 0))

    def test_the_named_relay_relays_and_no_other(self) -> None:
        """A call marked for a relay is relayed by that node only, whatever its own evidence."""
        mark = [(RELAY_HEADER, f"{0xCC:032x}")]
        uri = "sip:bob@p2psip.test;p2psip-node=00bb"
        sessions = RelaySessions(PortPool(40000, 40099), RecordingOpener())
        named = MediaAnchor(sessions, MediaPolicy.NAT_ONLY, RELAY, Clock(), local_node_id=0xCC)
        invite = request("INVITE", sdp("198.51.100.20", 4000), uri=uri, via=PLAIN_VIA)
        for name, value in mark:
            invite.headers.set(name, value)
        self.assertIsNotNone(named.request_forwarding(invite, SOURCE, TO_NODE))
        other = self.make(KnownRelays(), local_node_id=0xAA)
        again = request("INVITE", sdp("198.51.100.20", 4000), via=PLAIN_VIA)
        for name, value in mark:
            again.headers.set(name, value)
        self.assertIsNone(other.request_forwarding(again, SOURCE, TO_NATED_PHONE))
        self.assertIsNone(other.detour(again))

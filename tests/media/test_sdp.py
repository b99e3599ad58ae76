"""SDP parsing and rewriting (p2psip.media.sdp), hostile input included."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from p2psip.media.sdp import (
    MAX_SDP_BYTES,
    RelayPorts,
    SdpError,
    is_private_address,
    parse_sdp,
    refuse_unrelayable,
    rewrite_sdp,
)

#: Bodies as phones, SIPp, browsers and fax gateways send them (also the seeds of fuzz/sdp.py).
SAMPLES = Path(__file__).resolve().parent / "sdp_samples"

AUDIO_VIDEO = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.168.1.20\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.168.1.20\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=rtcp:49300 IN IP4 192.168.1.21\r\n"
    b"a=candidate:1 1 UDP 2130706431 192.168.1.20 49170 typ host\r\n"
    b"m=video 0 RTP/AVP 96\r\n"
    b"m=video 51372 RTP/AVP 97\r\n"
    b"c=IN IP4 192.168.1.22\r\n"
    b"a=rtcp-mux\r\n"
)


class ParseTests(SynchronousTestCase):
    def test_streams(self) -> None:
        """Every m= section is read: ports, per-stream c=, a=rtcp, rtcp-mux and disabled streams."""
        description = parse_sdp(AUDIO_VIDEO)
        audio, declined, video = description.streams
        self.assertEqual(description.rtp_destination(audio), ("192.168.1.20", 49170))
        self.assertEqual(description.rtcp_destination(audio), ("192.168.1.21", 49300))
        self.assertFalse(declined.enabled)
        self.assertIsNone(description.rtp_destination(declined))
        self.assertEqual(description.rtp_destination(video), ("192.168.1.22", 51372))
        self.assertEqual(description.rtcp_destination(video), ("192.168.1.22", 51372))

    def test_rtcp_defaults_to_next_port(self) -> None:
        """Without a=rtcp, RTCP goes to the RTP port plus one (RFC 3550 s11)."""
        description = parse_sdp(b"v=0\nc=IN IP4 203.0.113.5\nm=audio 4000 RTP/AVP 0\n")
        self.assertEqual(
            description.rtcp_destination(description.streams[0]), ("203.0.113.5", 4001)
        )

    def test_hold_address_gets_nothing(self) -> None:
        """c=IN IP4 0.0.0.0 (hold, RFC 2543 style) names no destination."""
        description = parse_sdp(b"v=0\nc=IN IP4 0.0.0.0\nm=audio 4000 RTP/AVP 0\n")
        self.assertIsNone(description.rtp_destination(description.streams[0]))

    def test_ipv6_is_read(self) -> None:
        """An IPv6 c= line parses (it is refused only when it would be relayed)."""
        description = parse_sdp(b"v=0\nc=IN IP6 2001:db8::1\nm=audio 4000 RTP/AVP 0\n")
        self.assertEqual(description.rtp_destination(description.streams[0]), ("2001:db8::1", 4000))

    def test_private_addresses(self) -> None:
        """RFC 1918, RFC 6598 and link-local addresses are private; loopback and public ones are not."""
        self.assertEqual(
            [
                is_private_address(a)
                for a in ("10.1.2.3", "100.64.0.9", "169.254.1.1", "127.0.0.1", "198.51.100.7")
            ],
            [True, True, True, False, False],
        )


class HostileInputTests(SynchronousTestCase):
    def assertRefused(self, body: bytes, status: int) -> None:
        with self.assertRaises(SdpError) as caught:
            parse_sdp(body)
        self.assertEqual(caught.exception.status, status, caught.exception.reason)

    def test_not_sdp(self) -> None:
        """Bodies that are no SDP get 400."""
        for body in (
            b"",
            b"hello",
            b"v=1\r\n",
            b"v=0\r\nmalformed\r\n",
            b"v=0\r\nm=audio\r\n",
            b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 99999 RTP/AVP 0\r\n",
            b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio -1 RTP/AVP 0\r\n",
            b"v=0\r\nm=audio 4000 RTP/AVP 0\r\n",  # no c= at all
            b"v=0\r\nc=IN IP4 2001:db8::1\r\nm=audio 4000 RTP/AVP 0\r\n",
            b"v=0\r\nc=IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\n",
            b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:x\r\n",
            b"v=0\r\n\xff\xfe\r\n",
            b"v=0\r\nc=IN IP4 1.2.3.4\x00\r\n",
        ):
            self.assertRefused(body, 400)

    def test_not_relayable(self) -> None:
        """Multicast, names, port ranges, unknown address types and oversized bodies get 488."""
        for body in (
            b"v=0\r\nc=IN IP4 224.2.1.1/127\r\nm=audio 4000 RTP/AVP 0\r\n",
            b"v=0\r\nc=IN IP4 224.2.1.1\r\nm=audio 4000 RTP/AVP 0\r\n",
            b"v=0\r\nc=IN IP4 host.example\r\nm=audio 4000 RTP/AVP 0\r\n",
            b"v=0\r\nc=IN IP4 1.2.3\r\nm=audio 4000 RTP/AVP 0\r\n",
            b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000/2 RTP/AVP 0\r\n",
            b"v=0\r\nc=IN ATM 1.2.3.4\r\n",
            b"v=0\r\n" + b"a=x\r\n" * 300,
            b"v=0\r\nc=IN IP4 1.2.3.4\r\n" + b"m=audio 4000 RTP/AVP 0\r\n" * 17,
            b"v=0\r\n" + b"a=" + b"x" * MAX_SDP_BYTES,
        ):
            self.assertRefused(body, 488)

    def test_garbage_never_raises_anything_else(self) -> None:
        """Every prefix and byte flip of a real body either parses or raises SdpError."""
        for end in range(len(AUDIO_VIDEO)):
            for body in (AUDIO_VIDEO[:end], AUDIO_VIDEO[:end] + b"\x80" + AUDIO_VIDEO[end + 1 :]):
                try:
                    parse_sdp(body)
                except SdpError:
                    pass


class RewriteTests(SynchronousTestCase):
    def test_every_stream_points_at_the_relay(self) -> None:
        """c= lines, m= ports and a=rtcp name the relay; the port-0 stream stays; ICE is dropped."""
        description = parse_sdp(AUDIO_VIDEO)
        body = rewrite_sdp(
            description, "198.51.100.7", [RelayPorts(40000, 40001), None, RelayPorts(40004, 40005)]
        )
        self.assertEqual(
            body.decode().split("\r\n"),
            [
                "v=0",
                "o=alice 2890844526 2890844526 IN IP4 192.168.1.20",
                "s=-",
                "c=IN IP4 198.51.100.7",
                "t=0 0",
                "m=audio 40000 RTP/AVP 0 8 101",
                "a=rtpmap:101 telephone-event/8000",
                "a=rtcp:40001",
                "m=video 0 RTP/AVP 96",
                "m=video 40004 RTP/AVP 97",
                "c=IN IP4 198.51.100.7",
                "a=rtcp-mux",
                "",
            ],
        )
        again = parse_sdp(body)
        self.assertEqual(
            [again.rtp_destination(s) for s in again.streams],
            [("198.51.100.7", 40000), None, ("198.51.100.7", 40004)],
        )

    def test_ipv6_refused_clearly(self) -> None:
        """Relaying an IPv6 stream through the IPv4 relay is refused with 488."""
        description = parse_sdp(b"v=0\r\nc=IN IP6 2001:db8::1\r\nm=audio 4000 RTP/AVP 0\r\n")
        with self.assertRaises(SdpError) as caught:
            rewrite_sdp(description, "198.51.100.7", [RelayPorts(40000, 40001)])
        self.assertEqual(caught.exception.status, 488)
        self.assertIn("IPv6", caught.exception.reason)


class SampleTests(SynchronousTestCase):
    def test_every_sample_is_relayed_or_refused_with_488(self) -> None:
        """Each realistic body parses; rewritten, every enabled stream goes to the relay."""
        outcomes = {}
        for path in sorted(SAMPLES.glob("*.sdp")):
            description = parse_sdp(path.read_bytes())
            ports = [
                RelayPorts(40000 + 2 * i, 40001 + 2 * i) if stream.enabled else None
                for i, stream in enumerate(description.streams)
            ]
            try:
                body = rewrite_sdp(description, "198.51.100.7", ports)
            except SdpError as e:
                outcomes[path.stem] = e.status
                continue
            again = parse_sdp(body)
            outcomes[path.stem] = [again.rtp_destination(s) for s in again.streams]
            self.assertFalse(any(line.startswith("a=candidate:") for line in again.lines))
        relay = "198.51.100.7"
        self.assertEqual(
            outcomes,
            {
                "answer-declined-video": [(relay, 40000), None, None],
                "baresip-audio-video": [(relay, 40000), (relay, 40002)],
                "dual-stack-streams": 488,
                "hold-rfc2543": [(relay, 40000)],
                "ipv6-offer": 488,
                "sipp-uac-pcma": [(relay, 40000)],
                "t38-reinvite": [(relay, 40000), None],
                "webrtc-ice-bundle": [(relay, 40000), (relay, 40002)],
            },
        )


class FuzzRegressionTests(SynchronousTestCase):
    """Bodies fuzz/sdp.py found (shortened by hand), and their neighbours."""

    def assertRefused(self, body: bytes, status: int = 400) -> None:
        with self.assertRaises(SdpError) as caught:
            parse_sdp(body)
        self.assertEqual(caught.exception.status, status, caught.exception.reason)

    def test_unicode_digits_in_ports(self) -> None:
        """
        Ports of digits str.isdigit() accepts but int() refuses ("\u00b2") raised ValueError;
        ones int() reads ("\u0664", Arabic-Indic four) were taken as ports.  Both are 400.
        """
        for port in ("6\u00b20", "\u0664\u0660\u0660\u0660"):
            self.assertRefused(
                f"v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio {port} RTP/AVP 8\r\n".encode()
            )
            self.assertRefused(
                "v=0\r\nc=IN IP6 2001:db8::2\r\nm=audio 49172 RTP/AVP 0\r\n"
                f"a=rtcp:{port} IN IP6 2001:db8::2\r\n".encode()
            )

    def test_rtcp_port_the_relay_cannot_send_to(self) -> None:
        """
        RTCP to port 0 (a=rtcp:0) or 65536 (m= port 65535 plus one) made every
        datagram the relay sent there raise: 400.  rtcp-mux or a=rtcp make 65535 fine.
        """
        head = b"v=0\r\nc=IN IP4 203.0.113.141\r\n"
        self.assertRefused(head + b"m=video 54400 RTP/AVP 96\r\na=rtcp:0 IN IP4 192.0.2.1\r\n")
        self.assertRefused(head + b"m=audio 65535 RTP/AVP 0\r\n")
        for fine in (b"a=rtcp-mux\r\n", b"a=rtcp:65534\r\n"):
            description = parse_sdp(head + b"m=audio 65535 RTP/AVP 0\r\n" + fine)
            self.assertEqual(description.rtp_destination(description.streams[0])[1], 65535)
        # A disabled stream or one on hold sends nothing, whatever its ports.
        parse_sdp(b"v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 65535 RTP/AVP 0\r\na=rtcp:0\r\n")
        parse_sdp(head + b"m=audio 0 RTP/AVP 0\r\na=rtcp:0\r\n")

    def test_unspecified_rtcp_address_gets_nothing(self) -> None:
        """a=rtcp:9 IN IP4 0.0.0.0 (WebRTC's placeholder) names no RTCP destination."""
        description = parse_sdp(
            b"v=0\r\nc=IN IP4 203.0.113.141\r\nm=audio 54400 RTP/AVP 0\r\n"
            b"a=rtcp:9 IN IP4 0.0.0.0\r\n"
        )
        stream = description.streams[0]
        self.assertEqual(description.rtp_destination(stream), ("203.0.113.141", 54400))
        self.assertIsNone(description.rtcp_destination(stream))

    def test_unspecified_address_however_written(self) -> None:
        """Hold is 0.0.0.0 or ::, and :: is also ::0 or 0:0::0: no destination for any."""
        for address in (b"IP4 0.0.0.0", b"IP6 ::", b"IP6 ::0", b"IP6 0:0::0"):
            description = parse_sdp(b"v=0\r\nc=IN " + address + b"\r\nm=audio 4000 RTP/AVP 0\r\n")
            self.assertIsNone(description.rtp_destination(description.streams[0]), address)

    def test_ipv6_rtcp_address_is_refused_before_relaying(self) -> None:
        """An IPv4 stream whose a=rtcp names an IPv6 address is 488, as an IPv6 c= is."""
        description = parse_sdp(
            b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\n"
            b"a=rtcp:4001 IN IP6 2001:db8::1\r\n"
        )
        for refuse in (
            lambda: refuse_unrelayable(description),
            lambda: rewrite_sdp(description, "198.51.100.7", [RelayPorts(40000, 40001)]),
        ):
            with self.assertRaises(SdpError) as caught:
                refuse()
            self.assertEqual(caught.exception.status, 488)

    def test_ports_for_exactly_the_enabled_streams(self) -> None:
        """Leaving an enabled stream out would send it to the relay via the session c=."""
        description = parse_sdp(
            b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\n"
        )
        for ports in ([None, None], [RelayPorts(1, 2), RelayPorts(3, 4)]):
            self.assertRaises(ValueError, rewrite_sdp, description, "198.51.100.7", ports)

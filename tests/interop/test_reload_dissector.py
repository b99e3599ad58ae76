"""
Wireshark's RELOAD dissectors read what p2psip's codecs write.

Synthetic captures (no sockets): every message body type framed as on a
link, and an ack frame, written into a pcap and handed to ``tshark``.
The live-traffic counterpart is ``test_reload_wire``.
"""

from __future__ import annotations

import struct
import subprocess
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay import bodies as b
from p2psip.overlay.framing import AckFrame, DataFrame, encode_frame, received_mask
from p2psip.overlay.message import (
    Destination,
    ErrorCode,
    Message,
    Signature,
    SignerIdentity,
    SignerIdentityType,
    encode_message,
    make_header,
    overlay_hash,
)
from p2psip.testing import require_tool

NODE_A = 0x0123456789ABCDEF0123456789ABCDEF
NODE_B = 0xFEDCBA9876543210FEDCBA9876543210


def pcap_of_tcp_payloads(payloads: list[bytes]) -> bytes:
    """A pcap (raw IPv4 link type) with one loopback TCP segment per payload."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)
    sequence = 1000
    for number, payload in enumerate(payloads):
        tcp = struct.pack(">HHIIBBHHH", 40000, 6084, sequence, 1, 5 << 4, 0x18, 65535, 0, 0)
        sequence += len(payload)
        ip = struct.pack(
            ">BBHHHBBH4s4s",
            0x45,
            0,
            40 + len(payload),
            number,
            0,
            64,
            6,
            0,
            b"\x7f\x00\x00\x01",
            b"\x7f\x00\x00\x02",
        )
        packet = ip + tcp + payload
        out += struct.pack("<IIII", number, 0, len(packet), len(packet)) + packet
    return out


class BodyDissectorTests(SynchronousTestCase):
    def test_tshark_decodes_every_body(self) -> None:
        """Wireshark's RELOAD dissector reads a framed message of every body type without errors."""
        tshark = require_tool("tshark")
        signature = Signature(
            4, 3, SignerIdentity(SignerIdentityType.CERT_HASH, 4, b"h" * 32), b"s" * 64
        )
        key = b"k" * 16
        host = b.IceCandidate(b.IpAddressPort("192.0.2.1", 6084), 4, b"f", 9, b.CandidateType.HOST)
        relayed = b.IceCandidate(
            b.IpAddressPort("2001:db8::1", 7),
            4,
            b"g",
            9,
            b.CandidateType.RELAYED,
            b.IpAddressPort("192.0.2.9", 8),
        )
        meta = b.MetaData(True, 5, 4, b"h" * 32)
        samples: list[Any] = [
            b.JoinReq(NODE_A, b""),
            b.JoinAns(b""),
            b.LeaveReq(NODE_A, b.ChordLeaveData(b.ChordLeaveType.FROM_SUCCESSOR, (1, 2)).encode()),
            b.LeaveAns(),
            b.UpdateReq(5, b.ChordUpdateType.FULL, (1,), (2, 3), (4,)),
            b.UpdateAns(),
            b.RouteQueryReq(True, Destination.resource(NODE_B)),
            b.RouteQueryAns(NODE_B),
            b.PingReq(b"pad"),
            b.PingAns(1, 1700000000000),
            b.ProbeReq((b.ProbeInformationType.UPTIME,)),
            b.ProbeAns((b.ProbeInformation(b.ProbeInformationType.UPTIME, 7),)),
            b.StoreReq(
                NODE_B,
                0,
                (
                    b.StoreKindData(
                        1,
                        3,
                        (
                            b.StoredData(
                                1000, 60, b.DictionaryEntry(key, b.DataValue(True, b"v")), signature
                            ),
                        ),
                    ),
                ),
            ),
            b.StoreAns((b.StoreKindResponse(1, 4, (NODE_A,)),)),
            b.FetchReq(NODE_B, (b.StoredDataSpecifier(1, 0, keys=(key,)),)),
            b.FetchAns((b.FetchKindResponse(1, 4, ()),)),
            b.StatReq(NODE_B, (b.StoredDataSpecifier(1, 0, keys=(key,)),)),
            b.StatAns(
                (
                    b.StatKindResponse(
                        1, 0, (b.StoredMetaData(1, 2, b.DictionaryEntryMeta(key, meta)),)
                    ),
                )
            ),
            b.FindReq(NODE_B, (1,)),
            b.FindAns((b.FindKindData(1, NODE_B),)),
            b.AttachReq(b"u", b"p", b"active", (host, relayed), True),
            b.AttachAns(b"u", b"p", b"passive", (host,)),
            b.AppAttachReq(b"u", b"p", 5060, b"active", (host,)),
            b.AppAttachAns(b"u", b"p", 5060, b"passive", (host,)),
            b.ErrorResponse(ErrorCode.UNKNOWN_KIND, "", b.encode_unknown_kinds([99])),
            b.ErrorResponse(ErrorCode.NOT_FOUND, "not found"),
        ]
        header = make_header(
            overlay_hash("example.org"),
            42,
            (Destination.node(NODE_B), Destination.resource(7)),
            via_list=(Destination.node(NODE_A),),
        )
        payloads = [
            encode_frame(DataFrame(n, encode_message(Message(header, body.CODE, body.encode()))))
            for n, body in enumerate(samples)
        ]
        payloads.append(encode_frame(AckFrame(3, 0b111)))
        path = self.mktemp()
        with open(path, "wb") as capture:
            capture.write(pcap_of_tcp_payloads(payloads))
        result = subprocess.run(
            [
                tshark,
                "-r",
                path,
                "-d",
                "tcp.port==6084,reload-framing",
                "-T",
                "fields",
                "-E",
                "separator=|",
                "-E",
                "aggregator=;",
                "-e",
                "reload.message.code",
                "-e",
                "_ws.expert.message",
            ],
            capture_output=True,
            timeout=120,
            check=True,
            text=True,
        )
        lines = result.stdout.splitlines()
        self.assertEqual(len(lines), len(payloads))
        for body, line in zip(samples, lines):
            codes, _, experts = line.partition("|")
            self.assertEqual(codes, str(body.CODE), line)
            # Wireshark flags the 'none' signer identity of unsigned messages;
            # anything else (malformed, truncated) is a codec bug.
            self.assertLessEqual(
                set(experts.split(";")) - {""},
                {"Unknown identity type"},
                f"{type(body).__name__}: {line}",
            )
        self.assertEqual(lines[-1], "|")


class AckFrameDissectorTests(SynchronousTestCase):
    def test_wireshark_agrees(self) -> None:
        """Wireshark lists the same acknowledged sequence numbers for an ack frame."""
        tshark = require_tool("tshark")
        ack = AckFrame(40, received_mask(40, [39, 37, 8]))
        path = self.mktemp()
        with open(path, "wb") as capture:
            # Wireshark recognises the stream by a data frame before it reads acks.
            message = encode_message(Message(make_header(1, 2, (Destination.node(3),)), 23, b""))
            capture.write(
                pcap_of_tcp_payloads([encode_frame(DataFrame(40, message)), encode_frame(ack)])
            )
        result = subprocess.run(
            [tshark, "-r", path, "-d", "tcp.port==6084,reload-framing", "-V"],
            capture_output=True,
            timeout=120,
            check=True,
            text=True,
        )
        [line] = [line for line in result.stdout.splitlines() if "Acked Frames" in line]
        listed = line.split("[Acked Frames:[", 1)[1].rstrip("]").split(",")
        self.assertEqual(sorted(int(n) for n in listed), [8, 37, 39])

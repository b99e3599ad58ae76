"""
Hostile bytes that once escaped the codec's own errors: each must be
refused as malformed (counted, answered where RFC 6940 says so), never
logged as a traceback.
"""

from __future__ import annotations

from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay import bodies
from p2psip.overlay.identity import CertificateCache, NodeIdentity, SignatureError
from p2psip.overlay.membership import Event
from p2psip.overlay.message import Destination, ErrorCode, MessageCode, decode_message
from tests.overlay.parts import MessengerUnderTest, sorted_identities

PING = bodies.PingReq().encode()
#: DER of a v3 certificate's version field: [0] EXPLICIT INTEGER 2.
VERSION_3 = b"\xa0\x03\x02\x01\x02"


def with_bad_version(der: bytes) -> bytes:
    """The certificate with its version field set to 6, which X.509 does not define."""
    assert der.count(VERSION_3) == 1
    return der.replace(VERSION_3, b"\xa0\x03\x02\x01\x05")


class HostileInputTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.before, self.me, self.after = sorted_identities(3)
        self.node = MessengerUnderTest(self.me)
        self.node.topology.add_peers([self.before.node_id, self.after.node_id])
        self.node.membership.happened(Event.PEER_JOINED)
        self.peer = MessengerUnderTest(self.before)

    def receive(self, link: object, data: bytes) -> list[dict[str, object]]:
        """Feed ``data`` to the node; the log events at warning level or above."""
        with capturedLogs() as events:
            self.node.messenger.message_received(link, data)  # type: ignore[arg-type]
        return [e for e in events if e["log_level"] >= LogLevel.warn]

    def test_opaque_first_destination_request(self) -> None:
        """A request whose next destination is an opaque id gets Error_Invalid_Message, not a traceback."""
        link = self.node.link_to(self.before)
        data = self.peer.messenger.encode(
            MessageCode.PING_REQ, PING, (Destination.opaque(b"\x01\x02"),), 7
        )
        self.assertEqual(self.receive(link, data), [])
        [answer] = link.sent
        error = bodies.ErrorResponse.decode(decode_message(answer).body)
        self.assertEqual(error.error_code, ErrorCode.INVALID_MESSAGE)
        self.assertEqual(self.node.counters["malformed_messages"], 1)

    def test_opaque_destination_after_our_node_id(self) -> None:
        """An opaque id behind our own Node-ID in the list is refused the same way."""
        link = self.node.link_to(self.before)
        destinations = (Destination.node(self.me.node_id), Destination.opaque(b"\x07"))
        data = self.peer.messenger.encode(MessageCode.PING_REQ, PING, destinations, 8)
        self.assertEqual(self.receive(link, data), [])
        self.assertEqual(self.node.counters["malformed_messages"], 1)

    def test_opaque_destination_answer(self) -> None:
        """An answer for an opaque id is dropped and counted: answers are never answered."""
        link = self.node.link_to(self.before)
        data = self.peer.messenger.encode(
            MessageCode.PING_ANS, bodies.PingAns(1, 2).encode(), (Destination.opaque(b"\x03"),), 9
        )
        self.assertEqual(self.receive(link, data), [])
        self.assertEqual(link.sent, [])
        self.assertEqual(self.node.counters["malformed_messages"], 1)

    def test_certificate_with_invalid_version(self) -> None:
        """A certificate whose X.509 version is out of range is a SignatureError, not the parser's own class."""
        stranger = NodeIdentity.generate()
        error = self.assertRaises(
            SignatureError, CertificateCache().add, with_bad_version(stranger.certificate_der)
        )
        self.assertIn("unparseable certificate", str(error))

    def test_message_signed_with_a_bad_certificate(self) -> None:
        """A message carrying such a certificate is dropped, counted and warned about once, with no traceback."""
        stranger = MessengerUnderTest(NodeIdentity.generate())
        data = stranger.messenger.encode(
            MessageCode.PING_REQ, PING, (Destination.resource(self.me.node_id),), 10
        )
        der = stranger.identity.certificate_der
        assert data.count(der) == 1
        data = data.replace(der, with_bad_version(der))
        link = self.node.link_to(self.before)
        [warning] = self.receive(link, data)
        self.assertEqual(warning["log_level"], LogLevel.warn)
        self.assertIn("unparseable certificate", str(warning["why"]))
        self.assertNotIn("log_failure", warning)
        self.assertEqual(link.sent, [])
        self.assertEqual(
            self.node.counters.get("bad_signatures", 0)
            + self.node.counters.get("malformed_messages", 0),
            1,
        )

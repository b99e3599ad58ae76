"""
Control frames that once crashed the broker (found with ``fuzz/broker.py``).

``validate_message`` checks only JSON types, so a ``mac`` or relay
``token`` may hold any string; both are hex when honest, and anything
else must be refused like a wrong value, never raise.
"""

from __future__ import annotations

from p2psip.nat import control_protocol
from tests.nat.test_broker import EIM, RANDOM, BrokerFixture, FakeLink, probed

#: Hellos whose mac is "é", as the fuzzer found it (UTF-8, from a link that
#: had not logged in) and as a JSON escape: hmac.compare_digest raised TypeError.
NON_ASCII_MACS = [
    b'\x00>{"_link":2,"id":"carol","mac":"\xc3\xa9","type":"hello","version":1}',
    b'\x008{"id":"alice","mac":"\\u00e9","type":"hello","version":1}',
]
#: A relay-join body whose token is a lone surrogate: str.encode raised UnicodeEncodeError.
SURROGATE_TOKEN = b'{"session":"SESSION","token":"\\ud800","type":"relay-join","version":1}'


class BrokerFuzzRegressionTests(BrokerFixture):
    def test_non_ascii_mac(self) -> None:
        """A hello with a non-ASCII mac fails authentication instead of raising TypeError."""
        for frame in NON_ASCII_MACS:
            link = FakeLink()
            self.broker.link_opened(link, ("198.51.100.1", 5000))
            [hello] = control_protocol.FrameDecoder().feed(frame)
            self.assertEqual(hello["mac"], "\u00e9")
            self.broker.message_received(link, hello)
            self.assertEqual(link.last("error")["code"], "auth-failed")
            self.assertTrue(link.closed)
        self.assertEqual(self.broker.status()["clients_online"], 0)

    def test_surrogate_relay_token(self) -> None:
        """A relay-join whose token cannot be encoded is an invalid token, not an exception."""
        a, b, session = self.start()
        self.broker.message_received(a, probed(session, "10.0.1.2", EIM))
        self.broker.message_received(b, probed(session, "10.0.2.2", RANDOM, public="198.51.100.2"))
        self.assertTrue(self.broker.relay_token_valid(session, a.last("relay")["token"]))
        body = SURROGATE_TOKEN.replace(b"SESSION", session.encode())
        [join] = control_protocol.FrameDecoder().feed(len(body).to_bytes(2, "big") + body)
        self.assertEqual(join["token"], "\ud800")
        self.assertFalse(self.broker.relay_token_valid(join["session"], join["token"]))

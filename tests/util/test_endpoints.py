"""Tests for p2psip.util.endpoints."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from p2psip.util.endpoints import UDPListenAddress, is_udp, parse_udp_listen_address


class UDPListenAddressTests(SynchronousTestCase):
    """The udp:PORT[:interface=ADDR] syntax."""

    def test_forms(self) -> None:
        """Port alone, with an interface, keyword port and escaped IPv6 parse."""
        self.assertEqual(parse_udp_listen_address("udp:5060"), UDPListenAddress(5060))
        self.assertEqual(
            parse_udp_listen_address("udp:0:interface=127.0.0.1"), UDPListenAddress(0, "127.0.0.1")
        )
        self.assertEqual(parse_udp_listen_address("udp:port=5062"), UDPListenAddress(5062))
        self.assertEqual(
            parse_udp_listen_address("udp:5060:interface=\\:\\:1"), UDPListenAddress(5060, "::1")
        )

    def test_round_trip(self) -> None:
        """str() gives a string that parses to the same address."""
        address = UDPListenAddress(5060, "::1")
        self.assertEqual(parse_udp_listen_address(str(address)), address)

    def test_errors_name_the_syntax(self) -> None:
        """Bad strings raise ValueError that shows the expected syntax."""
        for bad in ("udp:", "udp:99999", "udp:x", "tcp:5060", "udp:5060:bogus=1", "udp:5060:7"):
            with self.subTest(bad=bad):
                error = self.assertRaises(ValueError, parse_udp_listen_address, bad)
                self.assertIn("udp:PORT[:interface=ADDR]", str(error))

    def test_is_udp(self) -> None:
        """Only udp: strings are UDP."""
        self.assertTrue(is_udp("udp:5060"))
        self.assertFalse(is_udp("tcp:5060"))

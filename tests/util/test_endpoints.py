"""Tests for p2psip.util.endpoints."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from p2psip.config import server_endpoint
from p2psip.util.endpoints import (
    UDPListenAddress,
    endpoint_interface,
    is_udp,
    parse_host_port,
    parse_tcp_client_description,
    parse_udp_listen_address,
    stream_listen_port,
    tcp_client_description,
)


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


class IPv6InterfaceTests(SynchronousTestCase):
    """Escaped IPv6 interfaces (``\\:``) in every kind of listen string."""

    def test_tcp_on_ipv6_loopback(self) -> None:
        """tcp:6084:interface=\\:\\:1 is a valid listener on port 6084 of ::1."""
        description = "tcp:6084:interface=\\:\\:1"
        self.assertEqual(server_endpoint(description), description)
        self.assertEqual(stream_listen_port(description), 6084)
        self.assertEqual(endpoint_interface(description), "::1")

    def test_udp_on_all_ipv6_interfaces(self) -> None:
        """udp:5060:interface=\\:\\: binds port 5060 of every IPv6 address."""
        description = "udp:5060:interface=\\:\\:"
        self.assertEqual(parse_udp_listen_address(description), UDPListenAddress(5060, "::"))
        self.assertEqual(endpoint_interface(description), "::")

    def test_tcp_client_round_trip(self) -> None:
        """A client string to an IPv6 host escapes it and parses back."""
        description = tcp_client_description("2001:db8::1", 6084)
        self.assertEqual(parse_tcp_client_description(description), ("2001:db8::1", 6084))


class StreamListenPortTests(SynchronousTestCase):
    """The port of a Twisted stream server endpoint."""

    def test_forms(self) -> None:
        """Positional and keyword ports of tcp/ssl; none for unix and systemd."""
        self.assertEqual(stream_listen_port("tcp:3478"), 3478)
        self.assertEqual(stream_listen_port("tcp:port=3479:interface=127.0.0.1"), 3479)
        self.assertEqual(stream_listen_port("ssl:5061:privateKey=key.pem"), 5061)
        self.assertIsNone(stream_listen_port("unix:/run/p2psip.sock"))
        self.assertIsNone(stream_listen_port("systemd:domain=INET:index=0"))

    def test_bad_port(self) -> None:
        """A tcp string without a usable port says how to write one."""
        for bad in ("tcp:", "tcp:x", "tcp:70000", "tcp:interface=127.0.0.1"):
            with self.subTest(bad=bad):
                self.assertRaises(ValueError, stream_listen_port, bad)


class HostPortTests(SynchronousTestCase):
    """IP:PORT and [IPv6]:PORT."""

    def test_forms(self) -> None:
        """IPv4, bracketed IPv6 and names parse."""
        self.assertEqual(parse_host_port("198.51.100.11:3479"), ("198.51.100.11", 3479))
        self.assertEqual(parse_host_port("[2001:db8::11]:3479"), ("2001:db8::11", 3479))
        self.assertEqual(parse_host_port("stun.example.org:3478"), ("stun.example.org", 3478))

    def test_errors(self) -> None:
        """Missing ports, bare IPv6 and bad numbers name both forms."""
        for bad in (
            "198.51.100.11",
            "2001:db8::11:3479",
            "[2001:db8::11]",
            "[::1]3479",
            "h:x",
            ":1",
        ):
            with self.subTest(bad=bad):
                error = self.assertRaises(ValueError, parse_host_port, bad)
                self.assertIn("[IPv6]:PORT", str(error))

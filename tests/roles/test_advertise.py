"""
The address a ring role tells other hosts: never 127.0.0.1 by accident.

A node whose overlay listener binds every interface (the shipped
etc/peer.ini) used to advertise 127.0.0.1 in its Attach candidates, Via
and Record-Route, which sends every other host back to itself.  It now
takes the address of the default-route interface, or refuses to start,
naming ``advertise``.
"""

from __future__ import annotations

import socket

from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from p2psip.roles import bootstrap, peer
from p2psip.roles.ring_options import RingRoleOptions
from p2psip.roles.sip_service import build_sip_stack
from p2psip.testing import MemoryUDPReactor
from p2psip.util.local_address import default_route_address, is_wildcard, usable_from_elsewhere
from tests.sip.memory_storage import MemoryOverlayStorage

HOST_ADDRESS = "192.0.2.44"


class FakeRoutes:
    """Stands in for the routing table: the address per family, and who asked."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.families: list[int] = []

    def __call__(self, family: int) -> str | None:
        self.families.append(family)
        return self.address


def parse(
    options: RingRoleOptions, *argv: str, routes: FakeRoutes | None = None
) -> RingRoleOptions:
    options.find_default_address = routes or FakeRoutes(HOST_ADDRESS)  # type: ignore[method-assign]
    options.parseOptions(["--insecure", *argv])
    return options


class AdvertisedHostTests(SynchronousTestCase):
    def test_wildcard_listener_takes_the_default_route_address(self) -> None:
        """tcp:6084 without advertise advertises the default-route interface's address, not 127.0.0.1."""
        routes = FakeRoutes(HOST_ADDRESS)
        config = parse(peer.Options(), "--bootstrap", "tcp:192.0.2.1:6084", routes=routes).config
        self.assertEqual(config.advertised_host, HOST_ADDRESS)
        self.assertEqual(routes.families, [socket.AF_INET])
        self.assertIn("default-route interface", config.advertised_because)

    def test_ipv6_wildcard_asks_for_an_ipv6_route(self) -> None:
        """tcp6:6084 looks up the IPv6 default route."""
        routes = FakeRoutes("2001:db8::7")
        config = parse(bootstrap.Options(), "--overlay", "tcp6:6084", routes=routes).config
        self.assertEqual(
            (config.advertised_host, routes.families), ("2001:db8::7", [socket.AF_INET6])
        )

    def test_explicit_wildcard_interface(self) -> None:
        """interface=0.0.0.0 is every interface too."""
        config = parse(bootstrap.Options(), "--overlay", "tcp:6084:interface=0.0.0.0").config
        self.assertEqual(config.advertised_host, HOST_ADDRESS)

    def test_advertise_and_interface_win(self) -> None:
        """advertise, else a named interface, is used without asking the routing table."""
        routes = FakeRoutes(HOST_ADDRESS)
        config = parse(bootstrap.Options(), "--advertise", "peer.example.org", routes=routes).config
        self.assertEqual(config.advertised_host, "peer.example.org")
        config = parse(
            bootstrap.Options(), "--overlay", "tcp:6084:interface=198.51.100.3", routes=routes
        ).config
        self.assertEqual(config.advertised_host, "198.51.100.3")
        self.assertEqual(routes.families, [])

    def test_wildcard_advertise_refused(self) -> None:
        """advertise = 0.0.0.0 (or ::) is refused: nobody can connect to it."""
        for host in ("0.0.0.0", "::"):
            error = self.assertRaises(
                usage.UsageError, parse, bootstrap.Options(), "--advertise", host
            )
            self.assertIn("every interface", str(error))

    def test_loopback_only_on_request(self) -> None:
        """A ring on one host still advertises 127.0.0.1 when told to."""
        config = parse(bootstrap.Options(), "--advertise", "127.0.0.1").config
        self.assertEqual(config.advertised_host, "127.0.0.1")

    def test_no_default_route_refuses_naming_advertise(self) -> None:
        """Without a default route the role stops, naming advertise, the section and the file."""
        options = peer.Options()
        options.use_config_text(
            "[peer]\nbootstrap = tcp:192.0.2.1:6084\noverlay = tcp:6084\n", "/etc/p2psip/peer.ini"
        )
        error = self.assertRaises(usage.UsageError, parse, options, routes=FakeRoutes(None))
        message = str(error)
        self.assertIn("advertise = ADDRESS in the [peer] section of /etc/p2psip/peer.ini", message)
        self.assertIn("tcp:PORT:interface=ADDRESS", message)
        self.assertNotIn("127.0.0.1", message)

    def test_command_line_refusal_names_the_flag(self) -> None:
        """Without a config file the refusal names --advertise."""
        error = self.assertRaises(
            usage.UsageError, parse, bootstrap.Options(), routes=FakeRoutes(None)
        )
        self.assertIn("--advertise ADDRESS", str(error))


class SipAdvertisedHostTests(SynchronousTestCase):
    def stack_host(self, *sip: str) -> str:
        argv = [item for listener in sip for item in ("--sip", listener)]
        config = parse(bootstrap.Options(), *argv, "--sip-trusted-network").config
        assert config.sip is not None
        reactor = MemoryUDPReactor()
        stack = build_sip_stack(
            config.sip,
            MemoryOverlayStorage(1, Clock()),
            reactor,
            None,
            None,
            config.advertised_host,
        )
        host = stack.transport.advertised_host
        assert host is not None
        return host

    def test_wildcard_sip_listener_uses_the_advertised_host(self) -> None:
        """Via and Record-Route of a wildcard SIP listener name the node's address, not 127.0.0.1."""
        self.assertEqual(self.stack_host("udp:5060", "tcp:5060"), HOST_ADDRESS)
        self.assertEqual(self.stack_host("udp:5060:interface=0.0.0.0"), HOST_ADDRESS)

    def test_named_sip_interface_wins(self) -> None:
        """A SIP listener on one interface is reached there."""
        self.assertEqual(self.stack_host("udp:5060:interface=198.51.100.8"), "198.51.100.8")


class LocalAddressTests(SynchronousTestCase):
    def test_real_lookup(self) -> None:
        """This host's lookup gives an address others could reach, or None; never loopback."""
        for family in (socket.AF_INET, socket.AF_INET6):
            found = default_route_address(family)
            if found is not None:
                self.assertTrue(usable_from_elsewhere(found), found)

    def test_usable_from_elsewhere(self) -> None:
        """Loopback, link-local, unspecified and non-addresses are not advertised."""
        for host in ("127.0.0.1", "::1", "fe80::1%eth0", "169.254.3.4", "0.0.0.0", "x"):
            self.assertFalse(usable_from_elsewhere(host), host)
        for host in ("10.0.1.2", "198.51.100.10", "2001:db8::1"):
            self.assertTrue(usable_from_elsewhere(host), host)

    def test_wildcards(self) -> None:
        """No interface, 0.0.0.0 and :: mean every interface."""
        self.assertEqual(
            [is_wildcard(h) for h in (None, "", "0.0.0.0", "::", "10.0.0.1")],
            [True, True, True, True, False],
        )

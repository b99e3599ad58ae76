"""The gateway's options: parsed into the rules, wired into the proxy, mistakes named."""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from p2psip.roles.sip_service import build_sip_stack
from p2psip.sip.domain_routes import ForeignCallers, RouteKind
from p2psip.testing import MemoryUDPReactor
from tests.integration.test_peer_sip_service import MemoryNode
from tests.roles.test_peer import parse

GATEWAY = [
    "--overlay-name",
    "example.org",
    "--sip",
    "udp:5060",
    "--sip-trusted-network",
    "--sip-domain-alias",
    "Example.COM",
    "--sip-peer-domain",
    "kam.example.net=192.0.2.20,192.0.2.21",
    "--sip-static-route",
    "pstn.example.org=sip:192.0.2.30:5060;transport=tcp",
    "--dns-servers",
    "127.0.0.1:5353,[::1]:53",
]


class GatewayOptionsTests(SynchronousTestCase):
    def test_rules_from_options(self) -> None:
        """Aliases, peer domains with addresses, static routes and DNS servers reach SipConfig."""
        sip = parse(*GATEWAY, "--data-dir", self.mktemp()).config.sip
        assert sip is not None
        routes = sip.domain_routes
        self.assertEqual(routes.destination("example.com").kind, RouteKind.LOCAL)
        self.assertEqual(
            routes.configured_addresses("kam.example.net"), ("192.0.2.20", "192.0.2.21")
        )
        self.assertEqual(routes.destination("pstn.example.org").kind, RouteKind.STATIC)
        self.assertEqual(routes.foreign_callers, ForeignCallers.PEER_DOMAINS)
        self.assertEqual(sip.dns_servers, (("127.0.0.1", 5353), ("::1", 53)))

    def test_foreign_callers_override(self) -> None:
        """--sip-foreign-callers anyone keeps calls from every domain open beside peer domains."""
        sip = parse(
            *GATEWAY, "--sip-foreign-callers", "anyone", "--data-dir", self.mktemp()
        ).config.sip
        assert sip is not None
        self.assertEqual(sip.domain_routes.foreign_callers, ForeignCallers.ANYONE)

    def test_mistakes_are_named(self) -> None:
        """Bad values and a domain in two roles stop the role with the option to fix."""
        for arguments, expected in (
            (["--sip-peer-domain", "kam.example=not-an-ip"], "--sip-peer-domain"),
            (["--sip-static-route", "pstn.example"], "--sip-static-route"),
            (["--dns-servers", "dns.example"], "--dns-servers"),
            (["--sip-foreign-callers", "everyone"], "--sip-foreign-callers"),
            (["--sip-domain-alias", "kam.example", "--sip-peer-domain", "kam.example"], "both"),
        ):
            with self.subTest(arguments=arguments):
                with self.assertRaises(usage.UsageError) as raised:
                    parse(
                        "--sip",
                        "udp:5060",
                        "--sip-trusted-network",
                        *arguments,
                        "--data-dir",
                        self.mktemp(),
                    )
                self.assertIn(expected, str(raised.exception))

    def test_stack_has_a_gateway(self) -> None:
        """build_sip_stack gives the proxy the rules and, with foreign domains, a DNS locator."""
        reactor = MemoryUDPReactor()
        sip = parse(*GATEWAY, "--data-dir", self.mktemp()).config.sip
        assert sip is not None
        stack = build_sip_stack(sip, MemoryNode(1, reactor), reactor, None, None, "127.0.0.1")
        self.assertIsNotNone(stack.proxy.gateway.locator)
        self.assertEqual(stack.proxy.gateway.status()["peer_domains"], ["kam.example.net"])
        plain = parse(
            "--sip", "udp:5060", "--sip-trusted-network", "--data-dir", self.mktemp()
        ).config.sip
        assert plain is not None
        bare = build_sip_stack(plain, MemoryNode(1, reactor), reactor, None, None, "127.0.0.1")
        self.assertIsNone(bare.proxy.gateway.locator)
        self.assertEqual(bare.proxy.gateway.status()["foreign_callers"], "anyone")

"""
Calls over SIP over TLS on loopback: a phone on a super-node's
``--sip-tls`` listener calls and is called across two super-nodes that
reach each other over UDP.

Two super-nodes (the role's SIP service over one in-memory DHT): A listens
on UDP and TLS, B on UDP.  Alice's phone keeps a TLS connection to A,
verifying A's certificate (made in the test) by name; Bob's phone is on B
over UDP.  A changes transport on every call between them, so it
record-routes twice (RFC 5658) and in-dialog requests come back to it over
the transport each side used.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial.unittest import TestCase

from p2psip.roles.sip_service import (
    SipService,
    sip_tls_options,
)
from p2psip.roles.ring_options import read_sip_tls_credentials
from p2psip.sip.transaction import Hop
from p2psip.sip.transport import SipTransport
from p2psip.sip.uri import SipURI
from p2psip.sip.user_agent import SimpleUserAgent
from p2psip.sip.users import UsersFile
from tests.integration.test_peer_sip_service import start_super_nodes
from tests.sip.tls_certificate import write_sip_certificate

DOMAIN = "localhost"


class SipTlsCallTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        self.certificate, self.key = write_sip_certificate(directory / "tls", DOMAIN)
        users = UsersFile.load(directory / "users", missing_ok=True)
        users.set_password(f"sip:alice@{DOMAIN}", "alice-secret")
        users.set_password(f"sip:bob@{DOMAIN}", "bob-secret")
        users.save()
        tls = [
            "--sip-tls",
            "tcp:0:interface=127.0.0.1",
            "--sip-tls-certificate",
            str(self.certificate),
            "--sip-tls-key",
            str(self.key),
        ]
        self.services = start_super_nodes(
            self, directory, DOMAIN, directory / "users", extra={"a": tls}
        )

    @inlineCallbacks
    def tls_phone(self, aor: str, password: str) -> Generator[Deferred[Any], Any, SimpleUserAgent]:
        """A phone whose flow to A is a TLS connection that checked A's certificate."""
        transport = SipTransport(reactor)
        yield transport.listen("udp:0:interface=127.0.0.1")
        # The phone's own TLS listener only gives it a Contact for TLS;
        # A reaches it over the connection it registered on.
        credentials = read_sip_tls_credentials(str(self.certificate), str(self.key))
        yield transport.listen("tcp:0:interface=127.0.0.1", tls=sip_tls_options(credentials))
        self.addCleanup(transport.stop)
        hop = self.services[0].transport.local_hop("TLS")
        assert hop is not None
        trust = Certificate.loadPEM(self.certificate.read_bytes())
        endpoint = wrapClientTLS(
            optionsForClientTLS(DOMAIN, trustRoot=trust),
            TCP4ClientEndpoint(reactor, "127.0.0.1", hop.port),
        )
        connection = yield transport.open_connection(endpoint, "TLS")
        self.assertEqual(connection.transport_name, "TLS")
        agent = SimpleUserAgent(
            aor, password, transport, Hop("TLS", "127.0.0.1", hop.port), reactor
        )
        self.addCleanup(agent.stop)
        return agent

    @inlineCallbacks
    def udp_phone(
        self, aor: str, password: str, service: SipService
    ) -> Generator[Deferred[Any], Any, SimpleUserAgent]:
        transport = SipTransport(reactor)
        yield transport.listen("udp:0:interface=127.0.0.1")
        self.addCleanup(transport.stop)
        assert service.advertised is not None
        agent = SimpleUserAgent(aor, password, transport, Hop("UDP", *service.advertised), reactor)
        self.addCleanup(agent.stop)
        return agent

    @inlineCallbacks
    def test_calls_to_and_from_a_tls_phone(self) -> Generator[Deferred[Any], Any, None]:
        """Alice on TLS at A and Bob on UDP at B call each other; A record-routes for both transports."""
        a, b = self.services
        alice = yield self.tls_phone(f"sip:alice@{DOMAIN}", "alice-secret")
        bob = yield self.udp_phone(f"sip:bob@{DOMAIN}", "bob-secret", b)
        yield alice.register()
        yield bob.register()
        [binding] = a.registrar.local_bindings(f"sip:alice@{DOMAIN}")
        self.assertEqual(binding.flow.transport, "TLS")  # type: ignore[attr-defined]
        tls_port = a.transport.local_hop("TLS").port  # type: ignore[union-attr]
        udp_port = a.transport.local_hop("UDP").port  # type: ignore[union-attr]

        to_alice = yield bob.call(f"sip:alice@{DOMAIN}")
        routes = [r.uri for r in to_alice.route_set]
        self.assertTrue(all(isinstance(uri, SipURI) for uri in routes))
        self.assertEqual(
            [(uri.port, uri.parameters.get("transport")) for uri in routes[1:]],  # type: ignore[union-attr]
            [(udp_port, None), (tls_port, "tls")],
        )
        yield bob.hang_up(to_alice)
        self.assertEqual((alice.calls_answered, alice.byes_received), (1, 1))

        to_bob = yield alice.call(f"sip:bob@{DOMAIN}")
        first = to_bob.route_set[0].uri
        assert isinstance(first, SipURI)
        self.assertEqual((first.port, first.parameters.get("transport")), (tls_port, "tls"))
        yield alice.hang_up(to_bob)
        self.assertEqual((bob.calls_answered, bob.byes_received), (1, 1))
        self.assertEqual(a.status()["final_responses"]["INVITE"], {"200": 2})

"""
Enrolment over real HTTPS on loopback: the bootstrap's enrolment server
and the client a peer (or ``p2psip enrol``) uses, with the CA pinned by
fingerprint or by the root itself.
"""

from __future__ import annotations

import base64
import threading

import attrs
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from p2psip.enrolment.accounts import AccountsFile, Grant
from p2psip.enrolment.authority import OverlayAuthority
from p2psip.enrolment.client import (
    EnrolmentFailed,
    EnrolmentUnavailable,
    RootPin,
    _ChainsToRoot,
    enrol_node,
    enrol_user,
    fetch_configuration,
    request_certificate,
)
from p2psip.enrolment.configuration import (
    BootstrapNode,
    OverlayConfiguration,
    describe_kinds,
    write_configuration,
)
from p2psip.enrolment.fingerprints import parse_fingerprint, root_fingerprint
from p2psip.enrolment.requests import EnrolmentRequest
from p2psip.enrolment.issuer import CertificateIssuer
from p2psip.enrolment.server import (
    ENROLMENT_CONNECTIONS_PER_SOURCE,
    EnrolmentServer,
    build_enrolment_server,
    enrolment_site,
    server_tls_options,
)
from p2psip.overlay.certificates import reload_uri
from p2psip.overlay.identity import NodeIdentity
from p2psip.overlay.kinds import DEFAULT_KINDS
from p2psip.sip.login_throttle import LoginThrottle
from p2psip.util.reactor import as_role_reactor

OVERLAY = "enrol.test"


class _Idle(Protocol):
    """A connection that says nothing and notes when it is closed."""

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


ROLE_REACTOR = as_role_reactor(reactor)


def describe(
    authority: OverlayAuthority, url: str = "https://127.0.0.1/enrol"
) -> OverlayConfiguration:
    return OverlayConfiguration(
        instance_name=OVERLAY,
        sequence=0,
        expiration=0,
        root_der=authority.root_der,
        enrolment_servers=(url,),
        bootstrap_nodes=(BootstrapNode("127.0.0.1", 6084),),
        kinds=describe_kinds(DEFAULT_KINDS.values()),
        max_message_size=65536,
        initial_ttl=100,
        chord_ping_interval_seconds=15,
        chord_update_interval_seconds=60,
    )


class EnrolmentOverHttpsTests(TestCase):
    def setUp(self) -> None:
        self.authority = OverlayAuthority.create(OVERLAY, ROLE_REACTOR.seconds())
        directory = Path(self.mktemp())
        directory.mkdir()
        self.accounts = AccountsFile.load(directory / "enrolment-accounts", missing_ok=True)
        self.accounts.set_account("ops@enrol.test", "ops-password", [Grant.PEER])
        self.accounts.set_account("alice@enrol.test", "alice-password", [Grant.USER])
        self.accounts.save()
        self.server = self.start_server(self.authority)
        self.pin = RootPin(fingerprint=parse_fingerprint(root_fingerprint(self.authority.root_der)))

    def start_server(
        self,
        authority: OverlayAuthority,
        describe_with: Any = None,
        hosts: tuple[str, ...] = ("127.0.0.1",),
    ) -> EnrolmentServer:
        self.server_accounts = AccountsFile.load(self.accounts.path)
        server = build_enrolment_server(
            ROLE_REACTOR,
            authority=authority,
            accounts=self.server_accounts,
            listen="ssl:0:interface=127.0.0.1",
            hosts=hosts,
            describe=describe_with or (lambda: describe(authority)),
            throttle=LoginThrottle(ROLE_REACTOR, failures_per_source=3, failures_per_user=10),
        )
        server.startService()
        self.addCleanup(server.stopService)
        return server

    def serve_document(self, authority: OverlayAuthority, document: bytes) -> EnrolmentServer:
        """An enrolment server of ``authority`` that serves ``document`` as its configuration."""
        issuer = CertificateIssuer(authority, self.accounts, ROLE_REACTOR)
        server = EnrolmentServer(
            ROLE_REACTOR,
            "ssl:0:interface=127.0.0.1",
            enrolment_site(issuer, lambda: document, reactor=ROLE_REACTOR),
            lambda: server_tls_options(authority, ["127.0.0.1"], ROLE_REACTOR.seconds()),
        )
        server.startService()
        self.addCleanup(server.stopService)
        return server

    def signed_document(self, authority: OverlayAuthority) -> bytes:
        now = ROLE_REACTOR.seconds()
        return write_configuration(
            attrs.evolve(describe(authority), sequence=1, expiration=now + 600), authority
        )

    def url(self, server: EnrolmentServer | None = None) -> str:
        port = (server or self.server).port
        assert port is not None
        return f"https://127.0.0.1:{port.getHost().port}/enrol"

    async def enrol(self, password: str = "ops-password", key: Any = None, **kwargs: Any) -> Any:
        arguments: dict[str, Any] = {
            "enrol_url": kwargs.pop("enrol_url", None) or self.url(),
            "pin": self.pin,
            "account": "ops@enrol.test",
            "password": password,
            "key": key or ec.generate_private_key(ec.SECP256R1()),
            "overlay_name": OVERLAY,
            **kwargs,
        }
        return await enrol_node(ROLE_REACTOR, **arguments)

    async def test_round_trip(self) -> None:
        """A CSR goes in, a certificate for its key comes out: a CA-chosen Node-ID and the account's name."""
        key = ec.generate_private_key(ec.SECP256R1())
        first = await self.enrol(key=key)
        second = await self.enrol(key=key)
        identity = NodeIdentity(key, first.certificate_der)
        self.assertEqual((identity.node_id, identity.user_name), (first.node_id, "ops@enrol.test"))
        self.assertNotEqual(first.node_id, second.node_id)
        trust = self.authority.trust(ROLE_REACTOR.seconds)
        proved = trust.identify(x509.load_der_x509_certificate(first.certificate_der))
        self.assertEqual(proved.node_ids, (first.node_id,))
        self.assertEqual(first.root_der, self.authority.root_der)
        self.assertEqual(first.configuration.instance_name, OVERLAY)

    async def test_password_checked_off_the_reactor_thread(self) -> None:
        """The scrypt check runs in the server's thread pool, so the reactor never waits for it."""
        threads = []
        accounts = self.server_accounts
        original = accounts.check

        def check(name: str, password: str) -> Any:
            threads.append(threading.current_thread())
            return original(name, password)

        self.patch(accounts, "check", check)
        await self.enrol()
        self.assertEqual(len(threads), 1)
        self.assertIsNot(threads[0], threading.main_thread())

    async def test_pinned_by_root(self) -> None:
        """A peer that holds the root (overlay-root.pem, --ca-cert) checks TLS against it from the start."""
        enrolment = await self.enrol(pin=RootPin(root_der=self.authority.root_der))
        self.assertEqual(enrolment.user_name, "ops@enrol.test")

    async def test_bad_password_refused_then_throttled(self) -> None:
        """Wrong passwords are 403; past the per-source limit the answer is 429 with Retry-After."""
        messages = []
        with capturedLogs() as events:
            for _ in range(3):
                with self.assertRaises(EnrolmentFailed) as raised:
                    await self.enrol(password="guess")
                messages.append(str(raised.exception))
        refusals = [e for e in events if "enrolment refused" in str(e.get("why", ""))]
        # Logged at warn, once for the source in the minute, the rest counted.
        self.assertEqual([e["log_level"] for e in refusals], [LogLevel.warn])
        self.assertIn("wrong password or no account 'ops@enrol.test'", refusals[0]["why"])
        self.assertTrue(all("403" in m and "wrong account name or password" in m for m in messages))
        with self.assertRaises(EnrolmentUnavailable) as throttled:
            await self.enrol()  # the right password, but this source is held back
        self.assertIn("429", str(throttled.exception))
        self.assertEqual(throttled.exception.retry_after, 60.0)

    async def test_requested_node_id_ignored(self) -> None:
        """A CSR that asks for a Node-ID through the real server still gets a random one."""
        key = ec.generate_private_key(ec.SECP256R1())
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.x509.oid import NameOID

        asking = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "me")]))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(reload_uri(1, OVERLAY))]
                ),
                critical=False,
            )
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER)
        )
        der = await request_certificate(
            ROLE_REACTOR,
            self.url(),
            self.authority.root_der,
            EnrolmentRequest("ops@enrol.test", "ops-password", asking),
        )
        self.assertNotEqual(NodeIdentity(key, der).node_id, 1)

    async def test_user_certificate(self) -> None:
        """A super-node gets alice's certificate bound to its own Node-ID, with its own key."""
        key = ec.generate_private_key(ec.SECP256R1())
        node = NodeIdentity(key, (await self.enrol(key=key)).certificate_der)
        enrolment = await enrol_user(
            ROLE_REACTOR,
            enrol_url=self.url(),
            pin=self.pin,
            user="alice@enrol.test",
            password="alice-password",
            node=node,
            key=key,
            overlay_name=OVERLAY,
        )
        user = NodeIdentity(key, enrolment.certificate_der)
        self.assertEqual((user.node_id, user.user_name), (node.node_id, "alice@enrol.test"))

    async def test_user_certificate_needs_the_nodes_key(self) -> None:
        """With another node's certificate and a CSR for a different key, nothing is issued."""
        victim_key = ec.generate_private_key(ec.SECP256R1())
        victim = NodeIdentity(victim_key, (await self.enrol(key=victim_key)).certificate_der)
        thief_key = ec.generate_private_key(ec.SECP256R1())
        with self.assertRaises(EnrolmentFailed) as raised:
            await enrol_user(
                ROLE_REACTOR,
                enrol_url=self.url(),
                pin=self.pin,
                user="alice@enrol.test",
                password="alice-password",
                node=victim,
                key=thief_key,
            )
        self.assertIn("403", str(raised.exception))
        self.assertIn("key of the node certificate", str(raised.exception))

    async def test_wrong_fingerprint(self) -> None:
        """A pin that does not match stops enrolment before any password is sent."""
        other = OverlayAuthority.create(OVERLAY, ROLE_REACTOR.seconds())
        pin = RootPin(fingerprint=parse_fingerprint(root_fingerprint(other.root_der)))
        with self.assertRaises(EnrolmentFailed) as raised:
            await self.enrol(pin=pin, password="guess")
        self.assertIn("--ca-fingerprint", str(raised.exception))
        # No wrong password reached the server: the next right one is not throttled.
        for _ in range(3):
            await self.enrol()

    async def test_impostor_server(self) -> None:
        """A server with a CA of its own does not pass TLS for a peer that pinned the real root."""
        impostor_ca = OverlayAuthority.create(OVERLAY, ROLE_REACTOR.seconds())
        impostor = self.start_server(impostor_ca)
        with self.assertRaises(EnrolmentFailed) as raised:
            await self.enrol(
                enrol_url=self.url(impostor), pin=RootPin(root_der=self.authority.root_der)
            )
        self.assertIn("TLS", str(raised.exception))

    async def test_impostor_document(self) -> None:
        """A document naming our root but signed by another CA is refused."""
        impostor_ca = OverlayAuthority.create(OVERLAY, ROLE_REACTOR.seconds())
        forged = self.signed_document(impostor_ca).replace(
            base64.b64encode(impostor_ca.root_der), base64.b64encode(self.authority.root_der)
        )
        impostor = self.serve_document(impostor_ca, forged)
        with self.assertRaises(EnrolmentFailed) as raised:
            await fetch_configuration(ROLE_REACTOR, self.url(impostor), self.pin)
        self.assertIn("signature", str(raised.exception))

    async def test_tampered_document(self) -> None:
        """A configuration document changed after signing is refused by the peer; the original passes."""
        document = self.signed_document(self.authority)
        tampered = self.serve_document(
            self.authority, document.replace(b'port="6084"', b'port="6085"')
        )
        with self.assertRaises(EnrolmentFailed) as raised:
            await self.enrol(enrol_url=self.url(tampered))
        self.assertIn("signature of <configuration>", str(raised.exception))
        intact = self.serve_document(self.authority, document)
        configuration, fetched = await fetch_configuration(
            ROLE_REACTOR, self.url(intact), self.pin, OVERLAY
        )
        self.assertEqual(configuration.bootstrap_nodes, (BootstrapNode("127.0.0.1", 6084),))
        self.assertEqual(fetched, document)

    async def test_unreachable(self) -> None:
        """Nobody listening is EnrolmentUnavailable, which a starting role retries."""
        port = self.server.port
        assert port is not None
        url = self.url()
        await self.server.stopService()
        with self.assertRaises(EnrolmentUnavailable):
            await self.enrol(enrol_url=url)

    async def test_http_errors(self) -> None:
        """GET on /enrol is 405, a non-form body 415, an oversized body 413, unknown paths 404."""
        agent = Agent(ROLE_REACTOR, contextFactory=_ChainsToRoot(self.authority.root_der))
        base = self.url().removesuffix("/enrol")

        async def status(method: bytes, path: str, content_type: bytes, body: bytes | None) -> int:
            from p2psip.enrolment.client import _BytesProducer

            response = await agent.request(
                method,
                (base + path).encode(),
                Headers({b"content-type": [content_type]}),
                None if body is None else _BytesProducer(body),
            )
            await readBody(response)
            return int(response.code)

        got = [
            await status(b"GET", "/enrol", b"text/plain", None),
            await status(b"POST", "/enrol", b"application/json", b"{}"),
            await status(b"POST", "/enrol", b"application/x-www-form-urlencoded", b"x" * 40000),
            await status(b"POST", "/enrol", b"application/x-www-form-urlencoded", b"username=x"),
            await status(b"GET", "/nothing", b"text/plain", None),
            await status(b"GET", "/.well-known/reload-config", b"text/plain", None),
        ]
        self.assertEqual(got, [405, 415, 413, 400, 404, 200])

    async def test_connections_per_source_capped(self) -> None:
        """An address holding eight connections open gets its ninth closed before any TLS."""
        port = self.server.port
        assert port is not None
        endpoint = TCP4ClientEndpoint(ROLE_REACTOR, "127.0.0.1", port.getHost().port)  # type: ignore[attr-defined]
        held = []
        for _ in range(ENROLMENT_CONNECTIONS_PER_SOURCE):
            held.append(await connectProtocol(endpoint, _Idle()))
        self.addCleanup(lambda: [p.transport.loseConnection() for p in held])
        ninth = _Idle()
        await connectProtocol(endpoint, ninth)
        await ninth.lost
        self.assertFalse(any(p.lost.called for p in held))

    def test_certificate_names_host(self) -> None:
        """The server's TLS certificate is the CA's, for the advertised hosts, and proves no Node-ID."""
        key = ec.generate_private_key(ec.SECP256R1())
        der = self.authority.issue_server_certificate(
            key.public_key(), ["192.0.2.1", "boot.enrol.test"], now=ROLE_REACTOR.seconds()
        )
        certificate = x509.load_der_x509_certificate(der)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["boot.enrol.test"])
        self.assertEqual([str(a) for a in names.get_values_for_type(x509.IPAddress)], ["192.0.2.1"])
        from p2psip.overlay.certificates import CertificateRefused

        trust = self.authority.trust(ROLE_REACTOR.seconds)
        self.assertRaises(CertificateRefused, trust.identify, certificate)

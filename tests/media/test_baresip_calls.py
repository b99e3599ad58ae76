"""
Real phones: two baresip instances, registered with Digest at different
super-nodes, call each other with audio from a WAV file.

alice registers at super-node "a", bob at "b" (one in-memory DHT, SIP on
loopback), both over UDP or both over TCP.  alice dials bob; bob answers
automatically; alice hears it ring and be answered, then hangs up.  With
``--media-relay always`` the audio crosses both super-nodes' relays, and
their counters show RTP in both directions.  baresip 1.0 aborts on
SHA-256 Digest challenges, so the super-nodes offer MD5 only here.

Skipped without baresip unless ``P2PSIP_REQUIRE_INTEROP=1``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from p2psip.roles.sip_service import SipService
from p2psip.sip.users import UsersFile
from p2psip.testing import require_tool
from tests.integration.test_peer_sip_service import start_super_nodes
from tests.media.audio import write_pcm_wav
from tests.media.baresip import Baresip
from tests.media.test_relay_loopback import port_range
from tests.roles.test_peer import DOMAIN

ALICE = f"sip:alice@{DOMAIN}"
BOB = f"sip:bob@{DOMAIN}"


def eventually(condition: Callable[[], bool], seconds: float = 10.0) -> Deferred[None]:
    """Fires once ``condition()`` holds, polling; after ``seconds`` it fires anyway (the asserts tell)."""
    deadline = reactor.seconds() + seconds

    def poll() -> Deferred[None] | None:
        if condition() or reactor.seconds() > deadline:
            return None
        return deferLater(reactor, 0.1, poll)

    return deferLater(reactor, 0, poll)


class BaresipCallTests(TestCase):
    timeout = 60

    def start_nodes(self, transport: str, policy: str) -> list[SipService]:
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        users_path = self.directory / "users"
        users = UsersFile.load(users_path, missing_ok=True)
        users.set_password(ALICE, "alice-secret")
        users.set_password(BOB, "bob-secret")
        users.save()
        extra: dict[str, list[str]] = {}
        for name in ("a", "b"):
            options = ["--sip-digest-algorithms", "MD5"]
            if transport == "tcp":
                options += ["--sip", "tcp:0:interface=127.0.0.1"]
            if policy != "never":
                low, high = port_range(8)
                options += ["--media-relay", policy, "--media-ports", f"{low}-{high}"]
            extra[name] = options
        return start_super_nodes(self, self.directory, DOMAIN, users_path, extra)

    def phone(
        self, name: str, aor: str, password: str, service: SipService, transport: str
    ) -> Baresip:
        hop = service.transport.local_hop(transport.upper())
        assert hop is not None
        audio = write_pcm_wav(self.directory / f"{name}.wav", seconds=30.0)
        return Baresip(
            self,
            self.program,
            self.directory / name,
            aor,
            password,
            ("127.0.0.1", hop.port),
            transport,
            audio,
        )

    def call(self, transport: str, policy: str) -> Deferred[list[SipService]]:
        """Run the call; on failure, the phones' logs are in the error."""
        self.program = require_tool("baresip")
        self.phones: list[Baresip] = []
        running = self._call(transport, policy)

        def explain(failure: Any) -> Any:
            logs = "\n".join(
                f"--- {p.directory.name}: events "
                f"{[e.get('type') for e in (p.control.events if p.control else [])]}\n"
                f"{p.child.tail()}"
                for p in self.phones
                if p.child
            )
            self.fail(f"{failure.getErrorMessage()}\n{logs}")

        return running.addErrback(explain)

    @inlineCallbacks
    def _call(self, transport: str, policy: str) -> Generator[Deferred[Any], Any, list[SipService]]:
        services = self.start_nodes(transport, policy)
        alice = self.phone("alice", ALICE, "alice-secret", services[0], transport)
        bob = self.phone("bob", BOB, "bob-secret", services[1], transport)
        self.phones = [alice, bob]
        for phone in (alice, bob):
            yield phone.start()
            assert phone.child is not None
            # Registration may finish before the command connection is up:
            # baresip's own log line says it (its REGISTER_OK event may be gone by then).
            yield phone.child.wait_output(b"200 OK () [1 binding]")
        for service, user in ((services[0], ALICE), (services[1], BOB)):
            self.assertTrue(service.registrar.local_bindings(user), f"{user} registered")
        assert alice.control is not None and bob.control is not None
        alice.control.command("dial", BOB)
        yield alice.control.event("CALL_RINGING")
        yield alice.control.event("CALL_ESTABLISHED")
        yield bob.control.event("CALL_ESTABLISHED")
        # Each phone says when RTP from the other first arrived.
        yield alice.control.event("CALL_RTPESTAB")
        yield bob.control.event("CALL_RTPESTAB")
        # Two seconds of audio at 50 packets a second each way.
        yield self.media_flowing(services, policy)
        alice.control.command("hangup")
        yield alice.control.event("CALL_CLOSED")
        closed = yield bob.control.event("CALL_CLOSED")
        # baresip reports a BYE from the other end as a "connection reset".
        self.assertEqual(closed.get("param"), "Connection reset by peer")
        # The 200 to the BYE travels back through both super-nodes after that.
        yield eventually(
            lambda: all(service.proxy.outcomes[("BYE", 200)] == 1 for service in services)
        )
        for service in services:
            self.assertEqual(service.proxy.outcomes[("BYE", 200)], 1)
            self.assertEqual(service.proxy.outcomes[("INVITE", 200)], 1)
        return services

    def media_flowing(self, services: list[SipService], policy: str) -> Deferred[None]:
        """Wait until each relay has carried 50 RTP packets each way (a second when not relaying)."""
        if policy == "never":
            return deferLater(reactor, 1.0, lambda: None)

        def relayed_enough() -> bool:
            for service in services:
                media = service.stack.media
                assert media is not None
                for from_caller in (True, False):
                    if media.sessions.totals(from_caller=from_caller)["packets"] < 50:
                        return False
            return True

        return eventually(relayed_enough)

    def assertRelayed(self, services: list[SipService]) -> None:
        for service in services:
            media = service.stack.media
            assert media is not None
            sessions = media.sessions
            self.assertGreaterEqual(sessions.totals(from_caller=True)["packets"], 50)
            self.assertGreaterEqual(sessions.totals(from_caller=False)["packets"], 50)
            self.assertEqual(dict(sessions.ended), {"bye": 1})
            self.assertEqual(sessions.pool.in_use, 0)

    @inlineCallbacks
    def test_udp(self) -> Generator[Deferred[Any], Any, None]:
        """Registered, rang, answered and hung up over UDP, media end to end."""
        yield self.call("udp", "never")

    @inlineCallbacks
    def test_tcp(self) -> Generator[Deferred[Any], Any, None]:
        """The same over TCP."""
        yield self.call("tcp", "never")

    @inlineCallbacks
    def test_udp_through_the_relay(self) -> Generator[Deferred[Any], Any, None]:
        """With media-relay always, RTP crosses both relays in both directions."""
        services = yield self.call("udp", "always")
        self.assertRelayed(services)

    @inlineCallbacks
    def test_tcp_through_the_relay(self) -> Generator[Deferred[Any], Any, None]:
        """SIP over TCP, RTP over UDP through both relays."""
        services = yield self.call("tcp", "always")
        self.assertRelayed(services)

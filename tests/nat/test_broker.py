"""Tests for the STUNT broker: registration, brokering and the relay decision (fake links, fake clock)."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.nat import broker, control_auth, control_protocol


SECRET = b"s3cret"


class FakeLink:
    """Records what the broker sends to one client."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed = False

    def send(self, message: Any) -> None:
        # Round-trip through the codec so the broker only emits valid frames.
        [decoded] = control_protocol.FrameDecoder().feed(control_protocol.encode_frame(message))
        self.sent.append(decoded)

    def close(self) -> None:
        self.closed = True

    def types(self) -> list[str]:
        return [m["type"] for m in self.sent]

    def last(self, kind: str) -> dict[str, Any]:
        return [m for m in self.sent if m["type"] == kind][-1]


def counter_bytes() -> Any:
    state = [0]

    def random_bytes(n: int) -> bytes:
        state[0] += 1
        return state[0].to_bytes(n, "big")

    return random_bytes


def probed(
    session: str, local_ip: str, ports: list[tuple[int, int]], public: str = "198.51.100.1"
) -> dict[str, Any]:
    return {
        "type": "probed",
        "session": session,
        "local_ip": local_ip,
        "hole_port": ports[-1][0],
        "observations": [[local, public, mapped] for local, mapped in ports],
    }


EIM = [(4000, 4000), (4001, 4001), (4002, 4002), (4003, 4003)]
RANDOM = [(4000, 16505), (4001, 30068), (4002, 2197), (4003, 43000)]


class BrokerFixture(SynchronousTestCase):
    """A broker on a fake clock, and helpers to log clients in and start sessions."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = broker.Broker(
            self.clock,
            control_auth.Secrets(shared=SECRET, per_id={"carol": b"other"}),
            random_bytes=counter_bytes(),
        )

    #: Where the mediator sees each test client.
    PUBLIC = {"bob": "198.51.100.2", "pub": "198.51.100.20"}

    def login(self, client_id: str, secret: bytes | None = None) -> FakeLink:
        """Log ``client_id`` in with ``secret``, by default its own (derived from SECRET)."""
        link = FakeLink()
        self.broker.link_opened(link, (self.PUBLIC.get(client_id, "198.51.100.1"), 5000))
        nonce = link.last("challenge")["nonce"]
        if secret is None:
            secret = control_auth.derive_client_secret(SECRET, client_id)
        mac = control_auth.compute_mac(secret, nonce, client_id)
        self.broker.message_received(
            link, {"type": "hello", "version": 1, "id": client_id, "mac": mac}
        )
        return link

    def probe_both(self, session: str, a: FakeLink, b: FakeLink) -> None:
        self.broker.message_received(a, probed(session, "10.0.1.2", EIM))
        self.broker.message_received(b, probed(session, "10.0.2.2", EIM, public="198.51.100.2"))

    def start(self, methods: list[str] | None = None) -> tuple[FakeLink, FakeLink, str]:
        a, b = self.login("alice"), self.login("bob")
        self.broker.message_received(
            a, {"type": "connect", "ref": 7, "to": "bob", "kind": "tcp", "methods": methods or []}
        )
        session = a.last("probe")["session"]
        return a, b, session


class BrokerTests(BrokerFixture):
    def test_login(self) -> None:
        """A client with the right secret is welcomed and counted online."""
        link = self.login("alice")
        self.assertEqual(link.types(), ["challenge", "welcome"])
        self.assertEqual(self.broker.status()["clients_online"], 1)

    def test_wrong_secret(self) -> None:
        """A wrong MAC gets an error naming the fix and the link is closed."""
        link = self.login("alice", b"wrong")
        self.assertEqual(link.last("error")["code"], "auth-failed")
        self.assertIn("--secret", link.last("error")["reason"])
        self.assertTrue(link.closed)
        self.assertEqual(self.broker.status()["clients_online"], 0)

    def test_per_id_secret_wins(self) -> None:
        """A per-ID secret replaces the derived one for that ID."""
        self.assertTrue(self.login("carol", b"other").last("welcome"))
        self.assertTrue(
            self.login("carol", control_auth.derive_client_secret(SECRET, "carol")).closed
        )

    def test_shared_secret_logs_nobody_in(self) -> None:
        """The shared secret itself is no client's secret: it cannot log in as any ID."""
        link = self.login("alice", SECRET)
        self.assertEqual(link.last("error")["code"], "auth-failed")

    def test_one_clients_secret_is_not_anothers(self) -> None:
        """Alice's secret does not log in as bob, so she cannot push bob off the mediator."""
        bob = self.login("bob")
        alice_secret = control_auth.derive_client_secret(SECRET, "alice")
        intruder = self.login("bob", alice_secret)
        self.assertEqual(intruder.last("error")["code"], "auth-failed")
        self.assertFalse(bob.closed)
        self.assertEqual(bob.types(), ["challenge", "welcome"])

    def test_same_id_with_its_own_secret_replaces(self) -> None:
        """A new login with bob's own secret replaces bob's old link (a reconnect)."""
        old = self.login("bob")
        new = self.login("bob")
        self.assertEqual(old.last("error")["code"], "replaced")
        self.assertTrue(old.closed)
        self.assertEqual(new.last("welcome")["id"], "bob")

    def test_nonce_used_once(self) -> None:
        """A replayed hello on a fresh link fails: every link has its own nonce."""
        first = self.login("alice")
        nonce = first.sent[0]["nonce"]
        replay = FakeLink()
        self.broker.link_opened(replay, ("198.51.100.9", 1))
        mac = control_auth.compute_mac(
            control_auth.derive_client_secret(SECRET, "alice"), nonce, "alice"
        )
        self.broker.message_received(
            replay, {"type": "hello", "version": 1, "id": "alice", "mac": mac}
        )
        self.assertTrue(replay.closed)

    def test_unauthenticated_requests_refused(self) -> None:
        """Nothing but hello is served before authentication (never an open relay)."""
        link = FakeLink()
        self.broker.link_opened(link, ("198.51.100.9", 1))
        self.broker.message_received(
            link, {"type": "connect", "ref": 1, "to": "bob", "kind": "tcp", "methods": []}
        )
        self.assertTrue(link.closed)

    def test_unknown_peer(self) -> None:
        """Connecting to an unregistered ID fails at once with a reason."""
        a = self.login("alice")
        self.broker.message_received(
            a, {"type": "connect", "ref": 3, "to": "nobody", "kind": "tcp", "methods": []}
        )
        error = a.last("error")
        self.assertEqual((error["code"], error["ref"]), ("unknown-peer", 3))

    def test_eim_pair_gets_simultaneous_open(self) -> None:
        """Two port-preserving NATs are sent a simultaneous open aimed at each other's mapping."""
        a, b, session = self.start()
        self.broker.message_received(a, probed(session, "10.0.1.2", EIM))
        self.broker.message_received(b, probed(session, "10.0.2.2", EIM, public="198.51.100.2"))
        attempt_a, attempt_b = a.last("attempt"), b.last("attempt")
        self.assertEqual(attempt_a["method"], control_protocol.SIMULTANEOUS_OPEN)
        self.assertEqual(attempt_a["peer_endpoint"], ["198.51.100.2", 4003])
        self.assertEqual(attempt_b["peer_endpoint"], ["198.51.100.1", 4003])
        for link in (a, b):
            self.broker.message_received(
                link,
                {
                    "type": "result",
                    "session": session,
                    "method": "simultaneous-open",
                    "ok": True,
                    "detail": "",
                },
            )
        self.assertEqual(a.last("outcome")["method"], control_protocol.SIMULTANEOUS_OPEN)
        self.assertTrue(b.last("outcome")["ok"])
        self.assertEqual(self.broker.status()["successes"], {"simultaneous-open": 1})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sequential_pair_aimed_at_next_ports(self) -> None:
        """Mapped ports 5000, 5020, 5040, 5060 are a NAT stepping by 20: the peer aims at 5080."""
        a, b, session = self.start()
        steps_of_20 = [(4000, 5000), (4001, 5020), (4002, 5040), (4003, 5060)]
        steps_of_1 = [(6000, 7000), (6001, 7001), (6002, 7002), (6003, 7003)]
        self.broker.message_received(a, probed(session, "10.0.1.2", steps_of_20))
        self.broker.message_received(
            b, probed(session, "10.0.2.2", steps_of_1, public="198.51.100.2")
        )
        attempt_a, attempt_b = a.last("attempt"), b.last("attempt")
        self.assertEqual(attempt_a["method"], control_protocol.SIMULTANEOUS_OPEN)
        self.assertEqual(attempt_b["peer_endpoint"], ["198.51.100.1", 5080])
        self.assertEqual(attempt_a["peer_endpoint"], ["198.51.100.2", 7004])
        # A retried connect would take the predicted port's successor.
        self.assertEqual((attempt_a["connect_retries"], attempt_b["connect_retries"]), (0, 0))

    def test_mixed_steps_are_relayed(self) -> None:
        """Mapped ports that step both ways are unpredictable, so the session is relayed."""
        a, b, session = self.start()
        mixed = [(4000, 5000), (4001, 5001), (4002, 5000), (4003, 5001)]
        self.broker.message_received(a, probed(session, "10.0.1.2", mixed))
        self.broker.message_received(b, probed(session, "10.0.2.2", EIM, public="198.51.100.2"))
        self.assertIn("alice's NAT with random port allocation", a.last("relay")["reason"])

    def test_public_side_gets_direct(self) -> None:
        """When one side has no NAT the direct method is tried first."""
        a, b, session = self.start()
        self.broker.message_received(a, probed(session, "10.0.1.2", EIM))
        self.broker.message_received(b, probed(session, "198.51.100.2", EIM, public="198.51.100.2"))
        self.assertEqual(a.last("attempt")["method"], control_protocol.DIRECT)

    def test_random_pair_is_relayed_with_reason(self) -> None:
        """A random-allocation NAT skips the direct methods and says why in the outcome."""
        a, b, session = self.start()
        self.broker.message_received(a, probed(session, "10.0.1.2", EIM))
        self.broker.message_received(b, probed(session, "10.0.2.2", RANDOM, public="198.51.100.2"))
        relay = a.last("relay")
        self.assertIn("bob's NAT with random port allocation", relay["reason"])
        self.assertIn("impossible", relay["reason"])
        self.assertTrue(self.broker.relay_token_valid(session, relay["token"]))
        self.assertFalse(self.broker.relay_token_valid(session, "0" * 32))
        self.assertEqual(self.broker.relay_parties(session), ("alice", "bob"))
        self.broker.relay_established(session)
        outcome = b.last("outcome")
        self.assertEqual((outcome["ok"], outcome["method"]), (True, control_protocol.RELAYED))
        self.assertIn("impossible", outcome["reason"])
        self.broker.relay_ended("alice", "bob")
        self.assertEqual(self.broker.relay_counts, {})

    def test_relay_slots_are_bounded(self) -> None:
        """Past max-relays in all, or a client's own quota, a session gets no relay, and says why."""
        self.broker = broker.Broker(
            self.clock,
            control_auth.Secrets(shared=SECRET),
            broker.BrokerPolicy(max_relays=1, max_relays_per_client=1),
            random_bytes=counter_bytes(),
        )
        a, b, session = self.start()
        self.broker.message_received(a, probed(session, "10.0.1.2", RANDOM))
        self.broker.message_received(b, probed(session, "10.0.2.2", RANDOM, public="198.51.100.2"))
        self.assertEqual(a.last("relay")["session"], session)
        self.assertEqual(self.broker.relays_active, 1)
        carol, dave = self.login("carol"), self.login("dave")
        self.broker.message_received(
            carol, {"type": "connect", "ref": 8, "to": "dave", "kind": "tcp", "methods": []}
        )
        second = carol.last("probe")["session"]
        self.broker.message_received(carol, probed(second, "10.0.3.2", RANDOM))
        self.broker.message_received(dave, probed(second, "10.0.4.2", RANDOM))
        outcome = carol.last("outcome")
        self.assertFalse(outcome["ok"])
        self.assertIn("max-relays", outcome["reason"])

    def test_relay_disabled(self) -> None:
        """With the relay disabled the failure names the setting to change."""
        self.broker = broker.Broker(
            self.clock,
            control_auth.Secrets(shared=SECRET),
            broker.BrokerPolicy(relay_enabled=False),
        )
        a, b, session = self.start()
        self.broker.message_received(a, probed(session, "10.0.1.2", RANDOM))
        self.broker.message_received(b, probed(session, "10.0.2.2", RANDOM, public="198.51.100.2"))
        outcome = a.last("outcome")
        self.assertFalse(outcome["ok"])
        self.assertIn("random port allocation", outcome["reason"])
        self.assertIn("relay disabled in mediator.ini [mediator] relay", outcome["reason"])

    def test_failed_attempt_reprobes_then_next_method(self) -> None:
        """A failed simultaneous open leads to fresh probes and then the low-TTL variant."""
        a, b, session = self.start()
        self.probe_both(session, a, b)
        self.broker.message_received(
            a,
            {
                "type": "result",
                "session": session,
                "method": "simultaneous-open",
                "ok": False,
                "detail": "timeout",
            },
        )
        self.assertEqual(a.types()[-1], "probe")
        self.probe_both(session, a, b)
        self.assertEqual(a.last("attempt")["role"], "listener")
        self.assertEqual(b.last("attempt")["role"], "connector")
        self.assertEqual(a.last("attempt")["ttl"], 2)
        self.assertNotIn("go", b.types())
        self.broker.message_received(a, {"type": "armed", "session": session})
        self.assertEqual(b.types()[-1], "go")

    def test_silent_peer_times_out(self) -> None:
        """A side that never reports ends the attempt on the clock, then the relay is tried."""
        a, b, session = self.start(
            methods=[control_protocol.SIMULTANEOUS_OPEN, control_protocol.RELAYED]
        )
        self.probe_both(session, a, b)
        self.clock.advance(60)
        self.assertEqual(a.types()[-1], "relay")
        self.clock.advance(60)
        outcome = a.last("outcome")
        self.assertFalse(outcome["ok"])
        self.assertIn("no result in time", outcome["reason"])
        self.assertIn("did not join in time", outcome["reason"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_foreign_address_in_probe_report(self) -> None:
        """A probe report naming an address the mediator did not see ends the session: no aiming peers at third parties."""
        a, b, session = self.start()
        self.broker.message_received(a, probed(session, "10.0.1.2", EIM, public="203.0.113.7"))
        outcome = b.last("outcome")
        self.assertFalse(outcome["ok"])
        self.assertIn("other than the one the mediator sees", outcome["reason"])
        self.assertNotIn("attempt", b.types())

    def test_refusal(self) -> None:
        """The responder can refuse: consent is needed from both IDs."""
        a, b, session = self.start()
        self.broker.message_received(
            b, {"type": "refuse", "session": session, "reason": "not accepting"}
        )
        self.assertIn("bob refused", a.last("outcome")["reason"])

    def test_disconnect_ends_sessions(self) -> None:
        """A client that goes away ends its sessions and goes offline."""
        a, b, session = self.start()
        self.broker.link_closed(b)
        self.assertIn("bob disconnected", a.last("outcome")["reason"])
        self.assertEqual(self.broker.status()["clients_online"], 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_foreign_session_report(self) -> None:
        """A client cannot report on a session it is not part of."""
        a, b, session = self.start()
        mallory = self.login("mallory")
        self.broker.message_received(mallory, {"type": "armed", "session": session})
        self.assertTrue(mallory.closed)

    def test_session_limit(self) -> None:
        """A client cannot start more than the per-client number of sessions."""
        self.broker = broker.Broker(
            self.clock,
            control_auth.Secrets(shared=SECRET),
            broker.BrokerPolicy(max_sessions_per_client=1),
        )
        a, b, session = self.start()
        self.broker.message_received(
            a, {"type": "connect", "ref": 8, "to": "bob", "kind": "tcp", "methods": []}
        )
        self.assertEqual(a.last("error")["code"], "busy")

    def test_max_clients(self) -> None:
        """Beyond max-clients new IDs are refused with the setting to raise."""
        self.broker = broker.Broker(
            self.clock, control_auth.Secrets(shared=SECRET), broker.BrokerPolicy(max_clients=1)
        )
        self.login("alice")
        second = self.login("bob")
        self.assertIn("max-clients", second.last("error")["reason"])

    def test_relogin_replaces(self) -> None:
        """The same ID logging in again replaces the old link."""
        old = self.login("alice")
        new = self.login("alice")
        self.assertTrue(old.closed)
        self.broker.link_closed(old)
        self.assertIs(self.broker.clients["alice"], new)


class DatagramBrokerTests(BrokerFixture):
    """UDP brokering."""

    def test_udp_random_fails_with_reason(self) -> None:
        """A UDP flow towards a random-allocation NAT fails at once: no guess, no UDP relay."""
        a, b = self.login("alice"), self.login("bob")
        self.broker.message_received(
            a, {"type": "connect", "ref": 1, "to": "bob", "kind": "udp", "methods": []}
        )
        session = a.last("probe")["session"]
        self.assertEqual(b.last("probe")["kind"], "udp")
        self.broker.message_received(a, probed(session, "10.0.1.2", EIM))
        self.broker.message_received(b, probed(session, "10.0.2.2", RANDOM, public="198.51.100.2"))
        outcome = a.last("outcome")
        self.assertFalse(outcome["ok"])
        self.assertIn("relays TCP streams only", outcome["reason"])

    def test_udp_public_side_punches(self) -> None:
        """With one public side UDP punching is tried even towards a random NAT."""
        a, b = self.login("alice"), self.login("bob")
        self.broker.message_received(
            a, {"type": "connect", "ref": 1, "to": "bob", "kind": "udp", "methods": []}
        )
        session = a.last("probe")["session"]
        self.broker.message_received(a, probed(session, "198.51.100.1", EIM, public="198.51.100.1"))
        self.broker.message_received(b, probed(session, "10.0.2.2", RANDOM, public="198.51.100.2"))
        self.assertEqual(a.last("attempt")["method"], control_protocol.UDP_PUNCH)

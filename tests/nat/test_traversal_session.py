"""
Tests for the traversal session machine: events in, the exact actions out.

No reactor, sockets or clocks: every test feeds ``TraversalMachine.handle``
and compares the returned action lists.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from p2psip.nat import control_auth, control_protocol, traversal_events, traversal_session
from p2psip.nat.traversal_events import (
    CancelTimer,
    CloseControl,
    ConnectRequested,
    ControlConnected,
    ControlLost,
    ControlMessageReceived,
    ControlUnreachable,
    DecideIncoming,
    Deliver,
    DropAttempt,
    Fail,
    IncomingAccepted,
    IncomingDeclined,
    KeepaliveDue,
    Kind,
    Log,
    LowTtlSynSent,
    OpenRelay,
    ProbesDone,
    ProbesFailed,
    PunchFailed,
    PunchSucceeded,
    Registered,
    RegistrationFailed,
    RelayFailed,
    RelayReady,
    SendControl,
    SendLowTtlSyn,
    StartKeepalive,
    StartProbes,
    StartPunch,
    StartTimer,
    StartUdpPunch,
    StopKeepalive,
    Timeout,
    Via,
)
from p2psip.nat.traversal_session import TraversalMachine

SECRET = b"s3cret"
CHALLENGE = {
    "type": "challenge",
    "version": 1,
    "nonce": "ab" * 16,
    "stun_tcp_port": 3478,
    "stun_udp_port": 3479,
}
WELCOME = {"type": "welcome", "id": "alice", "observed": ["198.51.100.1", 40312]}
OBSERVATIONS = ((40001, "198.51.100.1", 40001), (40002, "198.51.100.1", 40002))
PEER = ["203.0.113.9", 50000]


def attempt(method: str, role: str = "initiator", **extra: Any) -> dict[str, Any]:
    return {
        "type": "attempt",
        "session": "s1",
        "method": method,
        "role": role,
        "peer_endpoint": PEER,
        "hole_port": 40002,
        "start_in_seconds": 0.1,
        "deadline_seconds": 4.0,
        "ttl": 2 if method == control_protocol.LOW_TTL else 0,
        **extra,
    }


class Harness:
    """A registered machine and shortcuts for the broker's messages."""

    def __init__(self, **kwargs: Any) -> None:
        self.machine = TraversalMachine("alice", SECRET, probes=2, **kwargs)
        self.handle(ControlConnected())
        self.handle(ControlMessageReceived(CHALLENGE))
        self.handle(ControlMessageReceived(WELCOME))

    def handle(self, event: Any) -> list[Any]:
        return self.machine.handle(event)

    def msg(self, type_: str, now: float = 10.0, **fields: Any) -> list[Any]:
        return self.handle(ControlMessageReceived({"type": type_, **fields}, now))

    def outgoing(self, kind: Kind = Kind.TCP, key: int = 1) -> None:
        """A connect to bob, probed and reported: waiting for the attempt."""
        self.handle(ConnectRequested(key, "bob", kind, (), now=5.0))
        self.msg("probe", session="s1", peer="bob", kind=kind.value, ref=key)
        self.handle(ProbesDone(key, 1, "10.0.0.2", OBSERVATIONS))

    def punched(self, method: str = control_protocol.DIRECT) -> None:
        self.outgoing()
        self.msg("attempt", **attempt(method))
        self.handle(Timeout(1, 1))
        self.handle(PunchSucceeded(1, 1, "connected"))


class RegistrationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.machine = TraversalMachine("alice", SECRET)
        self.machine.handle(ControlConnected())

    def test_challenge_answered_with_hello(self) -> None:
        """The challenge is answered with a hello carrying the HMAC of the nonce."""
        actions = self.machine.handle(ControlMessageReceived(CHALLENGE))
        mac = control_auth.compute_mac(SECRET, CHALLENGE["nonce"], "alice")
        self.assertEqual(
            actions,
            [SendControl({"type": "hello", "version": 1, "id": "alice", "mac": mac})],
        )

    def test_welcome_registers_and_starts_keepalive(self) -> None:
        """Welcome registers the client, with its observed address, and starts the pings."""
        self.machine.handle(ControlMessageReceived(CHALLENGE))
        actions = self.machine.handle(ControlMessageReceived(WELCOME))
        self.assertEqual(actions, [StartKeepalive(25.0), Registered(("198.51.100.1", 40312))])
        self.assertTrue(self.machine.registered)
        self.assertEqual(self.machine.handle(KeepaliveDue()), [SendControl({"type": "ping"})])

    def test_other_version_is_logged(self) -> None:
        """A mediator speaking another protocol version is worth a warning."""
        actions = self.machine.handle(ControlMessageReceived({**CHALLENGE, "version": 2}))
        self.assertEqual(
            actions[0], Log("warn", "mediator speaks control protocol version {v}", {"v": 2})
        )

    def test_refused(self) -> None:
        """An error before welcome fails the registration with the mediator's reason and code."""
        self.machine.handle(ControlMessageReceived(CHALLENGE))
        error = {
            "type": "error",
            "code": "auth-failed",
            "reason": "wrong ID or secret: check the client's --secret",
        }
        actions = self.machine.handle(ControlMessageReceived(error))
        reason = "wrong ID or secret: check the client's --secret (auth-failed)"
        self.assertEqual(
            actions,
            [
                Log("warn", "mediator refused us: {reason}", {"reason": reason}),
                RegistrationFailed(f"mediator refused us: {reason}"),
            ],
        )
        # The mediator then closes; that is not a second failure.
        self.assertEqual(self.machine.handle(ControlLost("closed")), [])

    def test_closed_before_welcome(self) -> None:
        """A connection closed before welcome fails the registration saying so."""
        self.assertEqual(
            self.machine.handle(ControlLost("gone")),
            [RegistrationFailed("mediator closed the control connection before welcome")],
        )

    def test_unreachable(self) -> None:
        """An unreachable mediator names the option to check."""
        self.assertEqual(
            self.machine.handle(ControlUnreachable("Connection refused")),
            [
                RegistrationFailed(
                    "cannot reach the mediator (Connection refused): check --mediator"
                )
            ],
        )

    def test_connect_before_registration(self) -> None:
        """A connect before welcome fails at once."""
        self.assertEqual(
            self.machine.handle(ConnectRequested(1, "bob", Kind.TCP)),
            [Fail(1, "not registered at the mediator: call start() first")],
        )

    def test_lost_stops_keepalive_and_fails_sessions(self) -> None:
        """Losing the control connection stops the pings and fails every session."""
        h = Harness()
        h.handle(ConnectRequested(1, "bob", Kind.TCP))
        h.outgoing(key=2)
        h.msg("attempt", **attempt(control_protocol.DIRECT))
        self.assertEqual(
            h.handle(ControlLost("reset")),
            [
                StopKeepalive(),
                Fail(1, "lost the control connection to the mediator"),
                CancelTimer(2, 1),
                Fail(2, "lost the control connection to the mediator"),
            ],
        )
        self.assertFalse(h.machine.registered)
        self.assertEqual(h.machine.sessions, {})

    def test_probes_must_fit_a_report(self) -> None:
        """More probes than a probed report may carry are refused at construction."""
        self.assertRaises(ValueError, TraversalMachine, "alice", SECRET, probes=17)
        self.assertRaises(ValueError, TraversalMachine, "alice", SECRET, probes=0)


class OutgoingTcpTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()

    def test_direct(self) -> None:
        """A direct connection: connect, probes, attempt, punch, result, outcome, delivery."""
        h = self.h
        self.assertEqual(
            h.handle(ConnectRequested(1, "bob", Kind.TCP, ("direct", "relayed"), now=5.0)),
            [
                SendControl(
                    {
                        "type": "connect",
                        "ref": 1,
                        "to": "bob",
                        "kind": "tcp",
                        "methods": ["direct", "relayed"],
                    }
                )
            ],
        )
        self.assertEqual(
            h.msg("probe", session="s1", peer="bob", kind="tcp", ref=1),
            [StartProbes(1, 1, Kind.TCP, 3478, 2)],
        )
        self.assertEqual(
            h.handle(ProbesDone(1, 1, "10.0.0.2", OBSERVATIONS)),
            [
                SendControl(
                    {
                        "type": "probed",
                        "session": "s1",
                        "local_ip": "10.0.0.2",
                        "hole_port": 40002,
                        "observations": [list(o) for o in OBSERVATIONS],
                    }
                )
            ],
        )
        self.assertEqual(
            h.msg("attempt", **attempt(control_protocol.DIRECT)), [StartTimer(1, 1, 0.1)]
        )
        self.assertEqual(
            h.handle(Timeout(1, 1)),
            [StartPunch(1, 1, "s1", 40002, ("203.0.113.9", 50000), 4.0)],
        )
        self.assertEqual(
            h.handle(PunchSucceeded(1, 1, "connected")),
            [
                SendControl(
                    {
                        "type": "result",
                        "session": "s1",
                        "method": "direct",
                        "ok": True,
                        "detail": "connected",
                    }
                )
            ],
        )
        self.assertEqual(
            h.msg("outcome", session="s1", ok=True, method="direct", reason=""),
            [Deliver(1, 1, Via.SOCKET, "direct", "", "bob", 5.0)],
        )
        self.assertEqual(h.machine.sessions, {})

    def test_sequential_nat_connects_once(self) -> None:
        """connect_retries 0 (a sequential NAT) allows one connect."""
        self.h.outgoing()
        self.h.msg("attempt", **attempt(control_protocol.SIMULTANEOUS_OPEN, connect_retries=0))
        [punch] = self.h.handle(Timeout(1, 1))
        self.assertEqual((punch.listen, punch.connect, punch.max_connects), (True, True, 1))

    def test_failure_then_new_round_then_relay(self) -> None:
        """A failed punch is reported; the next round drops it, and the relay drops that round."""
        h = self.h
        h.outgoing()
        h.msg("attempt", **attempt(control_protocol.SIMULTANEOUS_OPEN))
        h.handle(Timeout(1, 1))
        self.assertEqual(
            h.handle(PunchFailed(1, 1, "no TCP connection")),
            [
                Log(
                    "info",
                    "{method} with {peer} failed here: {detail}",
                    {"method": "simultaneous-open", "peer": "bob", "detail": "no TCP connection"},
                ),
                SendControl(
                    {
                        "type": "result",
                        "session": "s1",
                        "method": "simultaneous-open",
                        "ok": False,
                        "detail": "no TCP connection",
                    }
                ),
            ],
        )
        self.assertEqual(
            h.msg("probe", session="s1", peer="bob", kind="tcp", ref=1),
            [DropAttempt(1, 1), StartProbes(1, 2, Kind.TCP, 3478, 2)],
        )
        self.assertEqual(
            h.msg("relay", session="s1", token="t0k", reason="why"),
            [DropAttempt(1, 2), OpenRelay(1, 3, "s1", "t0k")],
        )
        self.assertEqual(h.handle(RelayReady(1, 3)), [])
        self.assertEqual(
            h.msg("outcome", session="s1", ok=True, method="relayed", reason="skipped"),
            [Deliver(1, 3, Via.RELAY, "relayed", "skipped", "bob", 5.0)],
        )

    def test_relay_outcome_before_ready(self) -> None:
        """An ok relayed outcome waits for our relay-ready."""
        h = self.h
        h.outgoing()
        h.msg("relay", session="s1", token="t", reason="")
        self.assertEqual(h.msg("outcome", session="s1", ok=True, method="relayed", reason=""), [])
        self.assertEqual(
            h.handle(RelayReady(1, 2)), [Deliver(1, 2, Via.RELAY, "relayed", "", "bob", 5.0)]
        )

    def test_relay_broken(self) -> None:
        """A relay that failed here fails the session once the mediator calls it a success."""
        h = self.h
        h.outgoing()
        h.msg("relay", session="s1", token="t", reason="")
        self.assertEqual(
            h.handle(RelayFailed(1, 2, "relay refused: x")),
            [Log("debug", "relay join failed: {why}", {"why": "relay refused: x"})],
        )
        self.assertEqual(
            h.msg("outcome", session="s1", ok=True, method="relayed", reason=""),
            [Fail(1, "relay connection failed after the mediator set it up")],
        )

    def test_relay_waiting_to_start_cancels_the_timer(self) -> None:
        """A relay while an attempt waits for its start time cancels that timer."""
        h = self.h
        h.outgoing()
        h.msg("attempt", **attempt(control_protocol.DIRECT))
        self.assertEqual(
            h.msg("relay", session="s1", token="t", reason=""),
            [CancelTimer(1, 1), DropAttempt(1, 1), OpenRelay(1, 2, "s1", "t")],
        )

    def test_outcome_failure(self) -> None:
        """A failed outcome fails the session with the broker's reason."""
        h = self.h
        h.outgoing()
        self.assertEqual(
            h.msg("outcome", session="s1", ok=False, method="", reason="relay disabled"),
            [Fail(1, "relay disabled")],
        )

    def test_error_for_a_connect(self) -> None:
        """An error naming our ref fails that connect with reason and code."""
        h = self.h
        h.handle(ConnectRequested(1, "nobody", Kind.TCP))
        self.assertEqual(
            h.msg("error", code="unknown-peer", reason="nobody is not registered", ref=1),
            [Fail(1, "nobody is not registered (unknown-peer)")],
        )

    def test_probes_failed(self) -> None:
        """Failed probes are logged and refused; the broker's outcome ends the session."""
        h = self.h
        h.handle(ConnectRequested(1, "bob", Kind.TCP))
        h.msg("probe", session="s1", peer="bob", kind="tcp", ref=1)
        self.assertEqual(
            h.handle(ProbesFailed(1, 1, "STUN probe timed out")),
            [
                Log(
                    "warn", "port prediction probes failed: {why}", {"why": "STUN probe timed out"}
                ),
                DropAttempt(1, 1),
                SendControl({"type": "refuse", "session": "s1", "reason": "STUN probe timed out"}),
            ],
        )

    def test_detail_is_cut(self) -> None:
        """Details sent to the mediator are cut to 400 characters."""
        h = self.h
        h.outgoing()
        h.msg("attempt", **attempt(control_protocol.DIRECT))
        h.handle(Timeout(1, 1))
        result = h.handle(PunchFailed(1, 1, "x" * 1000))[-1]
        self.assertEqual(len(result.message["detail"]), 400)


class LowTtlTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.h.outgoing()

    def test_listener(self) -> None:
        """The listener listens, sends its low-TTL SYN and then says it is armed."""
        h = self.h
        h.msg("attempt", **attempt(control_protocol.LOW_TTL, "listener"))
        self.assertEqual(
            h.handle(Timeout(1, 1)),
            [
                StartPunch(
                    1, 1, "s1", 40002, ("203.0.113.9", 50000), 4.0, listen=True, connect=False
                ),
                SendLowTtlSyn(1, 1, 40002, ("203.0.113.9", 50000), 2),
            ],
        )
        self.assertEqual(
            h.handle(LowTtlSynSent(1, 1, "EHOSTUNREACH")),
            [SendControl({"type": "armed", "session": "s1"})],
        )

    def test_go_before_own_start(self) -> None:
        """A connector told to go before its own start time connects once that time comes."""
        h = self.h
        h.msg("attempt", **attempt(control_protocol.LOW_TTL, "connector"))
        self.assertEqual(h.msg("go", session="s1"), [])
        self.assertEqual(
            h.handle(Timeout(1, 1)),
            [
                StartPunch(
                    1, 1, "s1", 40002, ("203.0.113.9", 50000), 4.0, listen=False, connect=True
                )
            ],
        )

    def test_go_after_own_start(self) -> None:
        """A connector whose start time came first waits for go."""
        h = self.h
        h.msg("attempt", **attempt(control_protocol.LOW_TTL, "connector"))
        self.assertEqual(h.handle(Timeout(1, 1)), [])
        [punch] = h.msg("go", session="s1")
        self.assertEqual((punch.listen, punch.connect), (False, True))


class DatagramTests(SynchronousTestCase):
    def test_udp_punch(self) -> None:
        """A UDP path: udp probes, udp-punch attempt, the peer's address delivered."""
        h = Harness()
        self.assertEqual(
            h.handle(ConnectRequested(1, "bob", Kind.UDP, ("direct",), now=5.0)),
            [SendControl({"type": "connect", "ref": 1, "to": "bob", "kind": "udp", "methods": []})],
        )
        self.assertEqual(
            h.msg("probe", session="s1", peer="bob", kind="udp", ref=1),
            [StartProbes(1, 1, Kind.UDP, 3479, 2)],
        )
        h.handle(ProbesDone(1, 1, "10.0.0.2", OBSERVATIONS))
        h.msg("attempt", **attempt(control_protocol.UDP_PUNCH))
        self.assertEqual(
            h.handle(Timeout(1, 1)), [StartUdpPunch(1, 1, "s1", ("203.0.113.9", 50000), 4.0)]
        )
        [result] = h.handle(PunchSucceeded(1, 1, "", ("203.0.113.9", 50001)))
        self.assertEqual(result.message["detail"], "two-way UDP with 203.0.113.9:50001")
        self.assertEqual(
            h.msg("outcome", session="s1", ok=True, method="udp-punch", reason=""),
            [Deliver(1, 1, Via.DATAGRAM, "udp-punch", "", "bob", 5.0, ("203.0.113.9", 50001))],
        )


class IncomingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()

    def request(self, kind: str = "tcp", session: str = "s9") -> list[Any]:
        return self.h.msg("probe", now=7.0, session=session, peer="carol", kind=kind, ref=-1)

    def test_accepted(self) -> None:
        """A peer's request goes to the accept policy; accepted, it is probed."""
        [decide] = self.request()
        self.assertEqual(decide, DecideIncoming(-1, "carol", Kind.TCP))
        self.assertEqual(
            self.h.handle(IncomingAccepted(-1)), [StartProbes(-1, 1, Kind.TCP, 3478, 2)]
        )

    def test_declined(self) -> None:
        """A declined request is refused, naming what we do not accept."""
        self.request()
        self.assertEqual(
            self.h.handle(IncomingDeclined(-1)),
            [
                SendControl(
                    {"type": "refuse", "session": "s9", "reason": "not accepting connections"}
                )
            ],
        )
        self.request("udp", "s10")
        self.assertEqual(
            self.h.handle(IncomingDeclined(-2)),
            [
                SendControl(
                    {"type": "refuse", "session": "s10", "reason": "not accepting datagram flows"}
                )
            ],
        )
        self.assertEqual(self.h.machine.sessions, {})

    def test_unknown_kind(self) -> None:
        """A request of an unknown kind is refused without asking the policy."""
        self.assertEqual(
            self.request("sctp"),
            [
                SendControl(
                    {"type": "refuse", "session": "s9", "reason": "unknown connection kind sctp"}
                )
            ],
        )

    def test_limit(self) -> None:
        """Peers' sessions beyond the limit are refused (a mediator cannot make us probe without end)."""
        h = Harness(max_incoming=2)
        for number in range(2):
            h.msg("probe", session=f"s{number}", peer="carol", kind="tcp", ref=-1)
        self.assertEqual(
            h.msg("probe", session="s2", peer="carol", kind="tcp", ref=-1),
            [
                SendControl(
                    {
                        "type": "refuse",
                        "session": "s2",
                        "reason": "too many incoming connections in progress here (limit 2)",
                    }
                )
            ],
        )

    def test_incoming_delivered(self) -> None:
        """An incoming session is delivered with the time its request came."""
        h = self.h
        self.request()
        h.handle(IncomingAccepted(-1))
        h.handle(ProbesDone(-1, 1, "10.0.0.2", OBSERVATIONS))
        h.msg("attempt", **{**attempt(control_protocol.DIRECT, "responder"), "session": "s9"})
        h.handle(Timeout(-1, 1))
        h.handle(PunchSucceeded(-1, 1, "accepted"))
        self.assertEqual(
            h.msg("outcome", session="s9", ok=True, method="direct", reason=""),
            [Deliver(-1, 1, Via.SOCKET, "direct", "", "carol", 7.0)],
        )


class AbandonedAttemptTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.h.outgoing()
        self.h.msg("attempt", **attempt(control_protocol.DIRECT))
        self.h.handle(Timeout(1, 1))
        # The broker moves on (the peer failed) before our punch ends.
        self.h.msg("probe", session="s1", peer="bob", kind="tcp", ref=1)

    def test_late_success_keeps_no_socket(self) -> None:
        """A connection of an abandoned attempt is dropped, not reported."""
        self.assertEqual(self.h.handle(PunchSucceeded(1, 1, "connected")), [DropAttempt(1, 1)])

    def test_late_failure_is_not_reported(self) -> None:
        """A failure of an abandoned attempt is not reported either."""
        self.assertEqual(self.h.handle(PunchFailed(1, 1, "cancelled")), [DropAttempt(1, 1)])

    def test_late_probes_and_timer(self) -> None:
        """Stale probe results release their port; a stale timer does nothing."""
        self.assertEqual(
            self.h.handle(ProbesDone(1, 1, "10.0.0.2", OBSERVATIONS)), [DropAttempt(1, 1)]
        )
        self.assertEqual(self.h.handle(Timeout(1, 1)), [])

    def test_results_of_ended_sessions(self) -> None:
        """Results for a session that ended are dropped too."""
        self.h.msg("outcome", session="s1", ok=False, method="", reason="no")
        self.assertEqual(self.h.handle(RelayReady(1, 2)), [DropAttempt(1, 2)])


class HostileMediatorTests(SynchronousTestCase):
    """A broken or hostile mediator fails what it touches, with a reason, and crashes nothing."""

    def setUp(self) -> None:
        self.h = Harness()

    def assertAbandoned(self, actions: list[Any], why: str) -> None:
        self.assertEqual(
            actions,
            [
                Log(
                    "warn",
                    "mediator broke the protocol in a session with {peer}: {why}",
                    {"peer": "bob", "why": why},
                ),
                SendControl(
                    {"type": "refuse", "session": "s1", "reason": f"protocol error: {why}"}
                ),
                Fail(1, f"mediator broke the control protocol: {why}"),
            ],
        )
        self.assertEqual(self.h.machine.sessions, {})

    def test_attempt_before_probes(self) -> None:
        """An attempt before our probes were reported fails the session."""
        self.h.handle(ConnectRequested(1, "bob", Kind.TCP))
        self.h.msg("probe", session="s1", peer="bob", kind="tcp", ref=1)
        self.assertAbandoned(
            self.h.msg("attempt", **attempt(control_protocol.DIRECT)), "attempt while probing"
        )

    def test_wrong_method_for_kind(self) -> None:
        """A UDP punch for a TCP session fails it."""
        self.h.outgoing()
        self.assertAbandoned(
            self.h.msg("attempt", **attempt(control_protocol.UDP_PUNCH)),
            "attempt with method 'udp-punch' for a tcp session",
        )

    def test_bad_values(self) -> None:
        """Roles, ports and TTLs that cannot work fail the session instead of reaching a socket."""
        for bad, why in (
            (
                attempt(control_protocol.LOW_TTL, "initiator"),
                "attempt with role 'initiator' for low-ttl",
            ),
            (
                attempt(control_protocol.DIRECT, hole_port=70000),
                "attempt with a port outside 1..65535",
            ),
            (
                attempt(control_protocol.DIRECT, peer_endpoint=["203.0.113.9", 0]),
                "attempt with a port outside 1..65535",
            ),
            (attempt(control_protocol.LOW_TTL, "listener", ttl=0), "low-ttl attempt with TTL 0"),
            (attempt(control_protocol.DIRECT, deadline_seconds=0), "attempt without time to run"),
        ):
            self.h = Harness()
            self.h.outgoing()
            self.assertAbandoned(self.h.msg("attempt", **bad), why)

    def test_relay_for_datagrams(self) -> None:
        """A relay offered for a UDP flow fails it."""
        self.h.outgoing(Kind.UDP)
        self.assertAbandoned(
            self.h.msg("relay", session="s1", token="t", reason=""),
            "relay offered for a datagram flow",
        )

    def test_go_for_a_listener(self) -> None:
        """A go for a side that is no low-TTL connector fails the session."""
        self.h.outgoing()
        self.h.msg("attempt", **attempt(control_protocol.LOW_TTL, "listener"))
        why = "go for a session that is no low-ttl connector here"
        self.assertEqual(
            self.h.msg("go", session="s1")[1:],
            [
                SendControl(
                    {"type": "refuse", "session": "s1", "reason": f"protocol error: {why}"}
                ),
                CancelTimer(1, 1),
                Fail(1, f"mediator broke the control protocol: {why}"),
            ],
        )

    def test_probe_for_another_peer(self) -> None:
        """A probe that names another peer than the one asked for fails the session."""
        self.h.handle(ConnectRequested(1, "bob", Kind.TCP))
        self.assertAbandoned(
            self.h.msg("probe", session="s1", peer="mallory", kind="tcp", ref=1),
            "probe names tcp with mallory, but the session is tcp with bob",
        )

    def test_success_without_connection(self) -> None:
        """A success outcome for a side that has no connection fails the session."""
        self.h.outgoing()
        self.assertEqual(
            self.h.msg("outcome", session="s1", ok=True, method="direct", reason=""),
            [Fail(1, "mediator reported success but no local connection exists")],
        )

    def test_success_via_another_method(self) -> None:
        """A success for another method than the one tried here fails the session."""
        h = self.h
        h.punched(control_protocol.DIRECT)
        self.assertEqual(
            h.msg("outcome", session="s1", ok=True, method="low-ttl", reason=""),
            [Fail(1, "mediator reported success via low-ttl, but direct was tried here")],
        )

    def test_relayed_success_without_relay(self) -> None:
        """A relayed success that no relay message announced fails the session."""
        self.h.outgoing()
        self.assertEqual(
            self.h.msg("outcome", session="s1", ok=True, method="relayed", reason=""),
            [Fail(1, "mediator reported a relayed connection but set up no relay")],
        )

    def test_unknown_sessions_ignored(self) -> None:
        """News of sessions the client never had (or already ended) is ignored."""
        for type_, fields in (
            ("outcome", {"session": "nope", "ok": True, "method": "direct", "reason": ""}),
            ("go", {"session": "nope"}),
            ("relay", {"session": "nope", "token": "t", "reason": ""}),
            ("attempt", {**attempt(control_protocol.DIRECT), "session": "nope"}),
            ("probe", {"session": "s", "peer": "bob", "kind": "tcp", "ref": 99}),
        ):
            self.assertEqual(self.h.msg(type_, **fields), [], type_)

    def test_connection_level_violations(self) -> None:
        """Registration messages out of order, or client messages, close the control connection."""
        for type_, fields in (
            ("challenge", dict(CHALLENGE)),
            ("welcome", dict(WELCOME)),
            ("hello", {"version": 1, "id": "x", "mac": "m"}),
        ):
            fields.pop("type", None)
            actions = Harness().msg(type_, **fields)
            self.assertEqual(actions[-1], CloseControl(), type_)
            self.assertEqual(actions[0].level, "warn")

    def test_session_message_before_welcome(self) -> None:
        """A probe before welcome fails the registration and closes the connection."""
        machine = TraversalMachine("alice", SECRET)
        machine.handle(ControlConnected())
        probe = {"type": "probe", "session": "s", "peer": "bob", "kind": "tcp", "ref": -1}
        self.assertEqual(
            machine.handle(ControlMessageReceived(probe)),
            [
                Log(
                    "warn",
                    "mediator broke the control protocol ({why}); closing",
                    {"why": "probe before welcome"},
                ),
                RegistrationFailed("mediator broke the control protocol: probe before welcome"),
                CloseControl(),
            ],
        )


class SansIOTests(SynchronousTestCase):
    def test_no_twisted_no_sockets(self) -> None:
        """The machine and its vocabulary import neither Twisted nor sockets nor time."""
        for module in (traversal_session, traversal_events):
            tree = ast.parse(Path(module.__file__ or "").read_text(encoding="utf-8"))
            names = {
                alias.name
                for node in ast.walk(tree)
                if isinstance(node, ast.Import)
                for alias in node.names
            } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
            self.assertEqual(
                [n for n in names if n.split(".")[0] in ("twisted", "socket", "time", "select")], []
            )

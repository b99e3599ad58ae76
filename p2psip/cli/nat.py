"""
``p2psip nat``: NAT diagnostics and test connections through a mediator.

``probe`` prints what port prediction sees of the local NAT, ``listen``
registers an ID and echoes whatever connects to it, ``connect`` reaches a
listening ID, prints how (direct / simultaneous-open / low-ttl / relayed)
and the round-trip time of an echo, and exits 0 when that worked.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from p2psip.cli import Subcommands
from p2psip.util.reactor import as_hole_punch_reactor
from p2psip.nat import control_protocol, holepunch, port_allocation
from p2psip.nat.traversal import (
    DatagramResult,
    IncomingDatagramPolicy,
    IncomingPolicy,
    TraversalClient,
    TraversalError,
    TraversalResult,
)
from p2psip.util.reactor import as_udp_reactor

PING = b"p2psip-nat-ping\n"


def register(subparsers: Subcommands) -> None:
    nat = subparsers.add_parser("nat", help="NAT diagnostics and traversal through a mediator")
    commands = nat.add_subparsers(dest="nat_command", metavar="SUBCOMMAND")

    def common(parser: argparse.ArgumentParser, identity: bool = True) -> None:
        parser.add_argument(
            "--mediator",
            required=True,
            help="mediator control endpoint, e.g. tcp:198.51.100.10:3479",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object per result")
        parser.add_argument("--verbose", action="store_true", help="log protocol events to stderr")
        parser.add_argument(
            "--wait",
            type=float,
            default=10.0,
            metavar="SECONDS",
            help="keep retrying the mediator (and the peer) this long",
        )
        if identity:
            parser.add_argument("--id", required=True, help="the ID to register under")
            parser.add_argument(
                "--secret",
                help="this ID's own secret at the mediator (`p2psip mediator secret ID` on the "
                "mediator host prints it), or --secret-file",
            )
            parser.add_argument("--secret-file", help="file whose first line is the secret")

    probe = commands.add_parser("probe", help="classify the local NAT with TCP Binding probes")
    common(probe, identity=False)
    probe.add_argument(
        "--probes", type=int, default=5, help="number of TCP probes from fresh local ports"
    )
    probe.add_argument(
        "--rto-ms",
        type=float,
        default=100.0,
        help="UDP STUN retransmission timeout for the RFC 5780 tests (a silent test takes about 23 RTOs)",
    )
    probe.set_defaults(run=run_probe)

    listen = commands.add_parser("listen", help="register an ID and echo incoming connections")
    common(listen)
    listen.add_argument(
        "--count", type=int, default=0, help="exit after this many connections (0: never)"
    )
    listen.set_defaults(run=run_listen)

    connect = commands.add_parser(
        "connect", help="connect to a listening ID and measure the round trip"
    )
    common(connect)
    connect.add_argument("--to", required=True, help="the peer's ID")
    connect.add_argument(
        "--count", type=int, default=1, help="connections to make one after another"
    )
    connect.add_argument(
        "--methods",
        default="",
        help="comma-separated methods to allow, in order: "
        + ",".join(control_protocol.TCP_METHODS)
        + " (default: all)",
    )
    connect.add_argument(
        "--udp", action="store_true", help="punch a UDP path instead of a TCP connection"
    )
    connect.set_defaults(run=run_connect)


def _start_logging(args: argparse.Namespace) -> None:
    if getattr(args, "verbose", False):
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo(
            [textFileLogObserver(sys.stderr)], redirectStandardIO=False
        )


def _secret(args: argparse.Namespace) -> bytes:
    if args.secret:
        return str(args.secret).encode("utf-8")
    if args.secret_file:
        with open(args.secret_file, encoding="utf-8") as f:
            return f.readline().strip().encode("utf-8")
    raise SystemExit(
        "p2psip nat: give --secret or --secret-file (this ID's own secret: "
        "`p2psip mediator secret ID` on the mediator host prints it)"
    )


def _emit(args: argparse.Namespace, record: dict[str, Any], text: str) -> None:
    print(json.dumps(record, sort_keys=True) if args.json else text, flush=True)


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class _UdpEcho(DatagramProtocol):
    """Echoes datagrams; closes its punched port after a quiet minute."""

    IDLE_SECONDS = 60.0

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.idle: IDelayedCall | None = None

    def startProtocol(self) -> None:
        self.idle = self.clock.callLater(self.IDLE_SECONDS, self._close)

    def _close(self) -> None:
        self.idle = None
        if self.transport is not None:
            self.transport.stopListening()

    def stopProtocol(self) -> None:
        if self.idle is not None and self.idle.active():
            self.idle.cancel()
        self.idle = None

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if self.idle is not None and self.idle.active():
            self.idle.reset(self.IDLE_SECONDS)
        self.transport.write(data, addr)


class _UdpPing(DatagramProtocol):
    """Sends PING to the peer until the echo comes back (UDP may lose packets)."""

    RETRY_SECONDS = 0.2
    TIMEOUT_SECONDS = 3.0

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.answered: defer.Deferred[float] = defer.Deferred()
        self.peer: tuple[str, int] | None = None
        self.sent_at = 0.0
        self.call: IDelayedCall | None = None

    def ping(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        started = self.clock.seconds()

        def send() -> None:
            if self.answered.called:
                return
            if self.clock.seconds() - started > self.TIMEOUT_SECONDS:
                self.answered.errback(TraversalError("no UDP echo from the peer"))
                return
            assert self.transport is not None
            self.sent_at = self.clock.seconds()
            self.transport.write(PING, peer)
            self.call = self.clock.callLater(self.RETRY_SECONDS, send)

        send()

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        if data == PING and addr == self.peer and not self.answered.called:
            if self.call is not None and self.call.active():
                self.call.cancel()
            self.answered.callback(self.clock.seconds() - self.sent_at)


class _Ping(Protocol):
    """Sends PING once connected; fires ``answered`` with the echo's round-trip time."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.answered: defer.Deferred[float] = defer.Deferred()
        self.buffer = b""
        self.sent_at = 0.0

    def ping(self) -> None:
        assert self.transport is not None
        self.sent_at = self.clock.seconds()
        self.transport.write(PING)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.buffer.startswith(PING) and not self.answered.called:
            self.answered.callback(self.clock.seconds() - self.sent_at)
        elif len(self.buffer) >= len(PING) and not self.answered.called:
            self.answered.errback(
                TraversalError("the peer answered with something other than the echo")
            )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.answered.called:
            self.answered.errback(TraversalError("connection closed before the echo came back"))


async def _start_client(
    reactor: IReactorTime,
    args: argparse.Namespace,
    *,
    accept: IncomingPolicy | None = None,
    on_incoming: Callable[[TraversalResult], None] | None = None,
    accept_datagram: IncomingDatagramPolicy | None = None,
    on_incoming_datagram: Callable[[DatagramResult], None] | None = None,
) -> TraversalClient:
    endpoint: IStreamClientEndpoint = clientFromString(reactor, args.mediator)
    deadline = reactor.seconds() + args.wait
    while True:
        client = TraversalClient(
            as_hole_punch_reactor(reactor),
            endpoint,
            args.id,
            _secret(args),
            accept=accept,
            on_incoming=on_incoming,
            accept_datagram=accept_datagram,
            on_incoming_datagram=on_incoming_datagram,
        )
        try:
            await client.start()
            return client
        except TraversalError as e:
            if "refused us" in e.reason or reactor.seconds() >= deadline:
                raise
        await _sleep(reactor, 0.2)


def _sleep(clock: IReactorTime, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    clock.callLater(seconds, d.callback, None)
    return d


def _run(main: Callable[[IReactorTime], Coroutine[Any, Any, None]], status: list[int]) -> int:
    """
    Run ``main`` on the global reactor until it finishes; the exit status.

    A failure is printed (its reason, for a TraversalError) and makes the
    status 1; so does a non-zero SystemExit raised while the reactor ran.
    """
    from twisted.internet.task import react

    try:
        react(
            lambda reactor: defer.Deferred.fromCoroutine(main(reactor)).addErrback(
                _report_failure, status
            )
        )
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return status[0]


def run_listen(args: argparse.Namespace) -> int:
    _start_logging(args)
    status = [0]

    async def main(reactor: IReactorTime) -> None:
        done: defer.Deferred[None] = defer.Deferred()
        seen = [0]

        def incoming(result: TraversalResult | DatagramResult) -> None:
            seen[0] += 1
            _emit(
                args,
                {
                    "event": "incoming",
                    "peer": result.peer_id,
                    "method": result.method,
                    "reason": result.reason,
                },
                f"connection from {result.peer_id} via {result.method}",
            )
            if args.count and seen[0] >= args.count and not done.called:
                # Let the echo go out before stopping.
                reactor.callLater(0.5, done.callback, None)

        client = await _start_client(
            reactor,
            args,
            accept=lambda peer: Factory.forProtocol(_Echo),
            on_incoming=incoming,
            accept_datagram=lambda peer: _UdpEcho(reactor),
            on_incoming_datagram=incoming,
        )
        _emit(
            args,
            {"event": "registered", "id": args.id},
            f"registered as {args.id}; waiting for connections",
        )

        def lost(why: str) -> None:
            if not done.called:
                status[0] = 1
                print(f"p2psip nat listen: lost the mediator: {why}", file=sys.stderr)
                done.callback(None)

        client.closed.addCallback(lost)
        await done
        client.stop()

    return _run(main, status)


def _report_failure(failure: Failure, status: list[int]) -> None:
    status[0] = 1
    reason = (
        failure.value.reason
        if isinstance(failure.value, TraversalError)
        else failure.getErrorMessage()
    )
    print(f"p2psip nat: {reason}", file=sys.stderr)


def run_connect(args: argparse.Namespace) -> int:
    _start_logging(args)
    status = [0]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in control_protocol.TCP_METHODS]
    if unknown:
        print(
            f"p2psip nat connect: unknown method {unknown[0]}; use {', '.join(control_protocol.TCP_METHODS)}",
            file=sys.stderr,
        )
        return 2

    async def one_udp(
        reactor: IReactorTime, client: TraversalClient
    ) -> tuple[DatagramResult, float]:
        ping = _UdpPing(reactor)
        result = await client.connect_datagram(args.to, ping)
        ping.ping(result.peer_address)
        try:
            rtt = await ping.answered
        finally:
            assert ping.transport is not None
            ping.transport.stopListening()
        return result, rtt

    async def one(
        reactor: IReactorTime, client: TraversalClient
    ) -> tuple[TraversalResult | DatagramResult, float]:
        deadline = reactor.seconds() + args.wait
        while True:
            try:
                if args.udp:
                    return await one_udp(reactor, client)
                result = await client.connect(
                    args.to, Factory.forProtocol(lambda: _Ping(reactor)), methods
                )
                break
            except TraversalError as e:
                if "(unknown-peer)" not in e.reason or reactor.seconds() >= deadline:
                    raise
                await _sleep(reactor, 0.2)
        ping = result.protocol
        assert isinstance(ping, _Ping)
        ping.ping()
        rtt = await ping.answered
        assert ping.transport is not None
        ping.transport.loseConnection()
        return result, rtt

    async def main(reactor: IReactorTime) -> None:
        client = await _start_client(reactor, args)
        failures = 0
        for _ in range(args.count):
            try:
                result, rtt = await one(reactor, client)
            except TraversalError as e:
                failures += 1
                _emit(args, {"ok": False, "reason": e.reason}, f"failed: {e.reason}")
                continue
            _emit(
                args,
                {
                    "ok": True,
                    "method": result.method,
                    "setup_seconds": round(result.setup_seconds, 6),
                    "rtt_ms": round(rtt * 1000, 3),
                    "reason": result.reason,
                },
                f"connected to {args.to} via {result.method} in {result.setup_seconds * 1000:.1f} ms; "
                f"round trip {rtt * 1000:.2f} ms"
                + (f" ({result.reason})" if result.reason else ""),
            )
        client.stop()
        status[0] = 1 if failures else 0

    return _run(main, status)


def run_probe(args: argparse.Namespace) -> int:
    _start_logging(args)
    status = [0]

    async def main(reactor: IReactorTime) -> None:
        host, local_ip, stun_port, stun_udp_port = await _read_challenge(reactor, args)
        observations = []
        for _ in range(args.probes):
            observation = await holepunch.stun_tcp_probe(
                as_hole_punch_reactor(reactor), (host, stun_port)
            )
            observations.append(observation)
        nat = port_allocation.classify_observations(local_ip, observations)
        mapped = observations[-1]
        udp = await _rfc5780(reactor, (host, stun_udp_port), local_ip, args.rto_ms / 1000)
        record = {
            "local_ip": local_ip,
            "public_ip": nat.public_ip,
            "tcp_allocation": nat.kind.value,
            "tcp_delta": nat.allocation.delta,
            "tcp_observations": observations,
            "tcp_predictable": nat.predictable,
            "udp_mapping": udp.get("mapping"),
            "udp_filtering": udp.get("filtering"),
            "udp_error": udp.get("error"),
        }
        lines = [
            f"local address {local_ip}, public address {nat.public_ip}",
            f"TCP mapping of the last probe: local port {mapped[0]} -> {mapped[1]}:{mapped[2]}",
            f"TCP port allocation: {nat.describe()}",
            "TCP hole punching: "
            + (
                "possible (ports can be predicted)"
                if nat.predictable
                else "needs the relay (ports can't be predicted)"
            ),
        ]
        if "error" in udp:
            lines.append(f"UDP mapping and filtering (RFC 5780): not measured: {udp['error']}")
        else:
            lines.append(f"UDP mapping (RFC 5780): {udp['mapping']}")
            lines.append(f"UDP filtering (RFC 5780): {udp['filtering']}")
        _emit(args, record, "\n".join(lines))

    return _run(main, status)


class _ChallengeReader(Protocol):
    def __init__(self) -> None:
        self.decoder = control_protocol.FrameDecoder()
        self.result: defer.Deferred[tuple[str, str, int, int]] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        try:
            messages = self.decoder.feed(data)
        except control_protocol.StuntDecodeError as e:
            messages = []
            if not self.result.called:
                self.result.errback(TraversalError(f"not a p2psip mediator: {e}"))
        for message in messages:
            if message["type"] == "challenge" and not self.result.called:
                # The mediator's control connection is TCP: both ends have IP addresses.
                peer, local = transport.getPeer(), transport.getHost()
                assert isinstance(peer, (IPv4Address, IPv6Address))
                assert isinstance(local, (IPv4Address, IPv6Address))
                self.result.callback(
                    (peer.host, local.host, message["stun_tcp_port"], message["stun_udp_port"])
                )
        transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.result.called:
            self.result.errback(
                TraversalError("the mediator closed the connection before its challenge")
            )


async def _read_challenge(
    reactor: IReactorTime, args: argparse.Namespace
) -> tuple[str, str, int, int]:
    """The mediator's challenge (its STUN ports); retried until ``--wait`` runs out."""
    from twisted.internet.error import ConnectError

    endpoint: IStreamClientEndpoint = clientFromString(reactor, args.mediator)
    deadline = reactor.seconds() + args.wait
    while True:
        try:
            protocol = await endpoint.connect(Factory.forProtocol(_ChallengeReader))
            break
        except ConnectError:
            if reactor.seconds() >= deadline:
                raise
            await _sleep(reactor, 0.2)
    assert isinstance(protocol, _ChallengeReader)
    return await protocol.result


async def _rfc5780(
    reactor: IReactorTime, server: tuple[str, int], local_ip: str, rto_seconds: float
) -> dict[str, str]:
    """
    UDP mapping and filtering behaviour, or why they could not be measured.

    ``reactor`` must have UDP sockets as well: the tests run from two
    fresh ones.
    """
    from p2psip.nat.behaviour import BehaviourDiscoveryError, discover_behaviour
    from p2psip.nat.stun_client import RetransmissionSchedule, StunUdpClient

    schedule = RetransmissionSchedule(rto_seconds=rto_seconds, max_transmissions=4)
    clients = [StunUdpClient(reactor, schedule), StunUdpClient(reactor, schedule)]
    udp = as_udp_reactor(reactor)
    ports = [udp.listenUDP(0, client, interface=local_ip) for client in clients]
    try:
        local = (local_ip, ports[0].getHost().port)
        found = await discover_behaviour(
            clients[0].binding, server, local, filtering_binding=clients[1].binding
        )
    except BehaviourDiscoveryError as e:
        return {"error": str(e)}
    finally:
        for port in ports:
            stopped = port.stopListening()
            if stopped is not None:
                await stopped
    filtering = found.filtering.value if found.filtering is not None else "unknown"
    return {"mapping": found.mapping.value, "filtering": filtering}

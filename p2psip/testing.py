"""
Test support shipped with the package: fakes and helpers that several test
modules (and other projects embedding p2psip) need.

Nothing here is used by the roles themselves.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IListeningPort, IReactorTime, IReactorUDP
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SkipTest
from zope.interface import implementer

from p2psip.enrolment.authority import OverlayAuthority, random_node_id
from p2psip.overlay.identity import NodeIdentity
from p2psip.overlay.links import Link

REQUIRE_INTEROP_VARIABLE = "P2PSIP_REQUIRE_INTEROP"


def interop_required() -> bool:
    """True when a missing external tool must fail the run (CI sets this)."""
    return os.environ.get(REQUIRE_INTEROP_VARIABLE, "") not in ("", "0")


class MissingTool(AssertionError):
    """An interop test's external tool is missing while interop is required."""


def skip_or_fail(reason: str) -> None:
    """
    Skip the calling test, or fail it when ``P2PSIP_REQUIRE_INTEROP=1``.

    CI installs every tool the interop tests drive; there a missing tool is a
    broken set-up that must not hide behind a skip.
    """
    if interop_required():
        raise MissingTool(
            f"{reason} (required because {REQUIRE_INTEROP_VARIABLE}=1; run `make deps`)"
        )
    raise SkipTest(f"{reason}; run `make deps` to install it")


def require_tool(name: str) -> str:
    """
    The full path of an external program, or skip/fail the test.

    Besides ``PATH`` (and the sbin folders), the folder of the running
    Python is searched: tools installed from PyPI into the virtualenv (the
    ``interop`` extra) are there even when the virtualenv is not activated.
    """
    path = (
        shutil.which(name)
        or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
        or shutil.which(name, path=str(Path(sys.executable).parent))
    )
    if path is None:
        skip_or_fail(f"{name} is not installed")
        raise AssertionError("unreachable")
    return path


def require_root(what: str) -> None:
    """Skip/fail a test that needs root (network namespaces, raw sockets)."""
    if os.geteuid() != 0:
        skip_or_fail(f"{what} needs root")


def repository_root() -> Path:
    """The checkout this package was imported from."""
    return Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """
    The shared test data folder that lies beside the checkout.

    ``P2PSIP_SHARED`` overrides the location.  The data is read in place and
    never copied into the repository.
    """
    override = os.environ.get("P2PSIP_SHARED")
    return Path(override) if override else repository_root().parent / "shared"


def shared_path(*parts: str) -> Path:
    """A file or folder under the shared folder, or skip/fail if it is absent."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        skip_or_fail(f"shared test data {'/'.join(parts)} not found beside the checkout")
    return path


def mediator_client_secret(shared: str, client_id: str) -> str:
    """The secret ``client_id`` logs in to a mediator whose shared secret is ``shared`` with."""
    from p2psip.nat.control_auth import derive_client_secret

    return derive_client_secret(shared.encode("utf-8"), client_id).decode("ascii")


def ring_node_mediator_secret(shared: str, data_dir: Path) -> str:
    """
    The mediator secret of the ring node whose data directory is ``data_dir``.

    A node logs in under its Node-ID, which its key decides; the key is made
    here (mode 0700 directory, as the role makes it) so that the node's
    secret can be given on its command line before it first starts.
    """
    from p2psip.overlay.identity import NodeIdentity
    from p2psip.util.ids import id_hex

    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    node_id = NodeIdentity.load_or_create(data_dir).node_id
    return mediator_client_secret(shared, id_hex(node_id))


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """
    A port number the OS just handed out on ``host``.

    Only for tests that start external processes, which must be told a port
    on their command line; in-process listeners bind port 0 instead.
    """
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def udp_port_bound(port: int) -> bool:
    """
    Whether some process has bound UDP ``port`` (IPv4), read from
    ``/proc/net/udp`` so that looking does not take the port from a
    process about to bind it, as a probing bind would.
    """
    suffix = f":{port:04X}"
    with open("/proc/net/udp") as table:
        next(table)  # the column names
        return any(line.split()[1].endswith(suffix) for line in table if line.strip())


@implementer(IListeningPort)
class _StubUDPPort:
    """
    What ``MemoryUDPReactor.listenUDP`` returns: records the datagrams
    written and whether it was closed (a :class:`p2psip.util.reactor.UDPPort`).
    """

    def __init__(self, port: int, protocol: Any, interface: str) -> None:
        self.port = port
        self.protocol = protocol
        self.interface = interface
        self.listening = True
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, packet: bytes, addr: tuple[str, int]) -> None:
        self.written.append((packet, addr))

    def startListening(self) -> None:
        self.listening = True

    def stopListening(self) -> None:
        self.listening = False

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.port)


@implementer(IReactorUDP)
class MemoryUDPReactor(MemoryReactorClock):
    """A memory reactor that also records ``listenUDP`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.udpPorts: dict[int, _StubUDPPort] = {}

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> _StubUDPPort:
        stub = _StubUDPPort(port, protocol, interface)
        self.udpPorts[port] = stub
        return stub


class MemoryLink(Link):
    """
    One end of an in-memory overlay link (see :class:`MemoryNetwork`).

    Carries whole encoded RELOAD messages, delivered after the network's
    latency on the shared clock, so a ring of hundreds of nodes runs in
    one test without sockets.
    """

    def __init__(
        self, network: MemoryNetwork, listener: Any, remote_address: str, inbound: bool
    ) -> None:
        self.network = network
        self.listener = listener
        self.remote_address = remote_address
        self.inbound = inbound
        self.peer_id: int | None = None
        now = network.clock.seconds()
        self.created_at = self.last_received_at = self.last_sent_at = now
        self.messages_sent = self.messages_received = 0
        self.rtt_seconds: float | None = None
        self.closed = False
        self.severed = False
        self.other: MemoryLink | None = None
        self.path = "connect"
        #: (send time, message) not delivered yet: delivery stands for the far end's ack.
        self._undelivered: list[tuple[float, bytes]] = []

    def send(self, data: bytes) -> None:
        if self.closed or self.other is None:
            return
        if self.network.traffic_observer is not None:
            self.network.traffic_observer(data)
        self.messages_sent += 1
        self.last_sent_at = self.network.clock.seconds()
        self._undelivered.append((self.last_sent_at, data))
        if self.severed:
            return  # into the void, as to a host that lost power: never acknowledged
        self.network.clock.callLater(self.network.latency_seconds, self.other._receive, data)

    def unacknowledged_since(self) -> float | None:
        return self._undelivered[0][0] if self._undelivered else None

    def unacknowledged_messages(self) -> list[bytes]:
        return [data for _, data in self._undelivered]

    def _receive(self, data: bytes) -> None:
        if self.closed or self.severed:
            return
        if self.other is not None and self.other._undelivered:
            del self.other._undelivered[0]
        self.messages_received += 1
        self.last_received_at = self.network.clock.seconds()
        self.listener.message_received(self, data)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.network.clock.callLater(0, self.listener.link_lost, self)
        other = self.other
        if other is not None and not self.severed and not other.closed:
            self.network.clock.callLater(self.network.latency_seconds, other._closed_by_peer)

    def _closed_by_peer(self) -> None:
        if not self.closed:
            self.closed = True
            self.listener.link_lost(self)


class MemoryNetwork:
    """
    An in-memory network of overlay nodes sharing one clock.

    ``crash(address)`` makes a node vanish the way a power cut does: its
    links go silent without any close notification, so the survivors must
    notice through keepalive timeouts, as they would on a real network.
    """

    def __init__(
        self,
        clock: IReactorTime,
        latency_seconds: float = 0.001,
        connect_timeout_seconds: float = 10.0,
    ) -> None:
        self.clock = clock
        self.latency_seconds = latency_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        self.listeners: dict[tuple[str, int], Any] = {}
        self.crashed: set[tuple[str, int]] = set()
        self.links: dict[tuple[str, int], list[MemoryLink]] = {}
        #: Called with every message a link sends (a churn run counts bytes by code).
        self.traffic_observer: Callable[[bytes], None] | None = None

    def listen(self, host: str, port: int, listener: Any) -> None:
        self.listeners[(host, port)] = listener
        self.crashed.discard((host, port))

    def crash(self, host: str, port: int) -> None:
        """Cut every link of the node at host:port without telling anyone."""
        self.listeners.pop((host, port), None)
        self.crashed.add((host, port))
        for link in self.links.pop((host, port), []):
            link.severed = True
            if link.other is not None:
                link.other.severed = True

    def kill(self, host: str, port: int) -> None:
        """End the node at host:port as SIGKILL would: its links close and the far ends hear of it."""
        self.listeners.pop((host, port), None)
        for link in self.links.pop((host, port), []):
            link.close()

    def connector(self, host: str, port: int) -> MemoryConnector:
        return MemoryConnector(self, (host, port))

    def _connect(self, source: tuple[str, int], listener: Any, host: str, port: int) -> Any:
        from twisted.internet.defer import Deferred

        result: Deferred[MemoryLink] = Deferred()
        target = self.listeners.get((host, port))
        if target is None:
            if (host, port) in self.crashed:

                def time_out() -> None:
                    if not result.called:
                        result.errback(TimeoutError(f"connect to {host}:{port} timed out"))

                self.clock.callLater(self.connect_timeout_seconds, time_out)
            else:
                self.clock.callLater(
                    self.latency_seconds,
                    lambda: result.errback(
                        ConnectionRefusedError(f"connection to {host}:{port} refused")
                    ),
                )
            return result
        outbound = MemoryLink(self, listener, f"{host}:{port}", inbound=False)
        inbound = MemoryLink(self, target, f"{source[0]}:{source[1]}", inbound=True)
        outbound.other, inbound.other = inbound, outbound
        self.links.setdefault(source, []).append(outbound)
        self.links.setdefault((host, port), []).append(inbound)

        def established() -> None:
            target.link_established(inbound)
            listener.link_established(outbound)
            result.callback(outbound)

        self.clock.callLater(self.latency_seconds, established)
        return result


class MemoryConnector:
    """The connector a node on a :class:`MemoryNetwork` uses (addresses only, like plain TCP)."""

    reaches_by_node_id = False

    def __init__(self, network: MemoryNetwork, source: tuple[str, int]) -> None:
        self.network = network
        self.source = source

    def avoid_direct(self, peer_id: int) -> None:
        """A memory network has no other way to a peer."""

    def connect(self, listener: Any, host: str, port: int, peer_id: int | None = None) -> Any:
        return self.network._connect(self.source, listener, host, port)

    def connect_endpoint(self, listener: Any, description: str) -> Any:
        from p2psip.util.endpoints import parse_tcp_client_description

        host, port = parse_tcp_client_description(description)
        return self.connect(listener, host, port)


class HeapClock:
    """
    A drop-in for ``twisted.internet.task.Clock`` that scales to many timers.

    ``Clock`` re-sorts its whole list of calls on every ``callLater``, which
    dominates a simulation of a hundred peers with thousands of pending
    transaction timeouts.  This clock keeps a heap and skips cancelled or
    rescheduled entries lazily; its observable behaviour is ``Clock``'s.
    """

    def __init__(self) -> None:
        self.rightNow = 0.0
        self._heap: list[tuple[float, int, Any]] = []
        self._sequence = 0

    def seconds(self) -> float:
        return self.rightNow

    def _push(self, call: Any) -> None:
        import heapq

        self._sequence += 1
        heapq.heappush(self._heap, (call.time, self._sequence, call))

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> Any:
        from twisted.internet.base import DelayedCall

        call = DelayedCall(
            self.seconds() + delay,
            callable,
            args,
            kw,
            lambda c: None,
            self._push,
            seconds=self.seconds,
        )
        self._push(call)
        return call

    def getDelayedCalls(self) -> list[Any]:
        return [c for t, _, c in self._heap if c.active() and t == c.time]

    def advance(self, amount: float) -> None:
        import heapq

        self.rightNow += amount
        heap = self._heap
        while heap and heap[0][0] <= self.rightNow:
            when, _, call = heapq.heappop(heap)
            if call.cancelled or call.called or when != call.time:
                continue  # cancelled, or superseded by an earlier reset
            if call.delayed_time:
                # Reset to a later time: DelayedCall leaves that to the
                # reactor, which moves the call when its old time comes.
                call.activate_delay()
                self._push(call)
                continue
            call.called = 1
            call.func(*call.args, **call.kw)

    def pump(self, timings: Any) -> None:
        for amount in timings:
            self.advance(amount)


#: The time test certificates are issued at (2026-01-01 UTC): fixed, so runs repeat.
TEST_CERTIFICATE_EPOCH = 1767225600.0


def enrolled_identity(
    authority: OverlayAuthority,
    *,
    user_name: str | None = None,
    node_id: int | None = None,
    now: float = TEST_CERTIFICATE_EPOCH,
) -> NodeIdentity:
    """A fresh key with a certificate from ``authority``; ``node_id`` defaults to one the CA picks."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = authority.issue(
        key.public_key(),
        node_id=node_id if node_id is not None else random_node_id(),
        user_name=user_name,
        now=now,
    )
    return NodeIdentity(key, certificate)


def user_certificate(
    authority: OverlayAuthority,
    identity: NodeIdentity,
    user_name: str,
    *,
    now: float = TEST_CERTIFICATE_EPOCH,
) -> bytes:
    """
    A user certificate from ``authority`` for ``identity``'s own key and
    Node-ID, as ``p2psip enrol --user`` gets one for a super-node.
    """
    public_key = x509.load_der_x509_certificate(identity.certificate_der).public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    return authority.issue(public_key, node_id=identity.node_id, user_name=user_name, now=now)

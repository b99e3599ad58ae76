"""STUN and NAT behaviour discovery over real loopback sockets (UDP, TCP, RFC 5780 four sockets)."""

from __future__ import annotations


from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.trial.unittest import SkipTest, TestCase

from p2psip.nat.behaviour import (
    FilteringBehaviour,
    MappingBehaviour,
    discover_nat_behaviour,
    probe_port_allocation,
)
from p2psip.nat.port_allocation import PortAllocationKind
from p2psip.nat.stun_client import StunUdpClient, tcp_binding
from p2psip.nat.stun_server import StunTcpServerFactory, StunUdpService

REACTOR: IReactorTime = reactor  # type: ignore[assignment]


def four_socket_server(test: TestCase) -> StunUdpService:
    """A started RFC 5780 server on 127.0.0.1 and 127.0.0.2, stopped at cleanup (skips without 127.0.0.2)."""
    service = StunUdpService(
        0, interface="127.0.0.1", alternate_ip="127.0.0.2", alternate_port=0, reactor=reactor
    )
    try:
        service.startService()
    except OSError as e:
        raise SkipTest(f"cannot bind 127.0.0.2 here: {e}") from None
    test.addCleanup(service.stopService)
    return service


class LoopbackTests(TestCase):
    def start_client(self) -> tuple[StunUdpClient, int]:
        client = StunUdpClient(REACTOR)
        port = reactor.listenUDP(0, client, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return client, port.getHost().port

    async def test_udp_binding(self) -> None:
        """A client on loopback learns its own socket address from our UDP server."""
        service = StunUdpService(0, interface="127.0.0.1", reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        [server] = service.addresses()
        client, client_port = self.start_client()
        result = await client.binding(server)
        self.assertEqual(result.mapped, ("127.0.0.1", client_port))
        self.assertEqual(result.server, server)
        self.assertEqual(service.responder.responses, 1)

    async def test_udp_ipv6(self) -> None:
        """Over IPv6 loopback the client learns its IPv6 socket address."""
        service = StunUdpService(0, interface="::1", reactor=reactor)
        try:
            service.startService()
        except OSError as e:
            self.skipTest(f"no IPv6 loopback here: {e}")
        self.addCleanup(service.stopService)
        [server] = service.addresses()
        client = StunUdpClient(REACTOR)
        port = reactor.listenUDP(0, client, interface="::1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        result = await client.binding(server)
        self.assertEqual(result.mapped, ("::1", port.getHost().port))

    async def test_rfc5780_change_request(self) -> None:
        """With two loopback IPs and two ports, a change request is answered from the other pair."""
        service = four_socket_server(self)
        alternates = service.responder.alternates
        assert alternates is not None
        client, client_port = self.start_client()
        primary = (alternates.primary_ip, alternates.primary_port)
        plain = await client.binding(primary)
        self.assertEqual(plain.server, primary)
        self.assertEqual(plain.other_address, ("127.0.0.2", alternates.alternate_port))
        changed = await client.binding(primary, change_ip=True, change_port=True)
        self.assertEqual(changed.server, ("127.0.0.2", alternates.alternate_port))
        self.assertEqual(changed.response_origin, changed.server)
        self.assertEqual(changed.mapped, ("127.0.0.1", client_port))

    async def test_socket_buffers(self) -> None:
        """The UDP socket asks for the configured buffers and reports what it got."""
        service = StunUdpService(
            0, interface="127.0.0.1", reactor=reactor, receive_buffer_bytes=1 << 20
        )
        service.startService()
        self.addCleanup(service.stopService)
        protocol = next(iter(service.senders.values()))
        assert protocol.granted_buffers is not None
        self.assertGreaterEqual(protocol.granted_buffers[0], min(1 << 20, _rmem_max()))

    async def test_tcp_binding(self) -> None:
        """A TCP client learns its connection's local address from our TCP server."""
        tcp: IReactorTCP = reactor  # type: ignore[assignment]
        listening = tcp.listenTCP(0, StunTcpServerFactory(), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        port = listening.getHost().port  # type: ignore[attr-defined]
        result = await tcp_binding(TCP4ClientEndpoint(reactor, "127.0.0.1", port), REACTOR)
        self.assertEqual(result.mapped, result.local)
        self.assertEqual(result.server, ("127.0.0.1", port))


class LoopbackDiscoveryTests(TestCase):
    async def test_no_nat_on_loopback(self) -> None:
        """On loopback against the four-socket server there is no NAT and everything gets through."""
        service = four_socket_server(self)
        primary = service.addresses()[0]
        found = await discover_nat_behaviour(reactor, reactor, primary, "127.0.0.1")  # type: ignore[arg-type]
        self.assertEqual(found.mapping, MappingBehaviour.NO_NAT)
        self.assertEqual(found.filtering, FilteringBehaviour.ENDPOINT_INDEPENDENT)
        self.assertEqual(found.mapped[0], "127.0.0.1")

    async def test_port_allocation_on_loopback(self) -> None:
        """Without a NAT every probe's mapped port is its local port: preserving."""
        service = StunUdpService(0, interface="127.0.0.1", reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        allocation, samples = await probe_port_allocation(
            reactor,
            reactor,
            service.addresses(),
            count=4,
            interface="127.0.0.1",  # type: ignore[arg-type]
        )
        self.assertEqual(allocation.kind, PortAllocationKind.PRESERVING)
        self.assertEqual(len(samples), 4)


def _rmem_max() -> int:
    try:
        with open("/proc/sys/net/core/rmem_max") as f:
            return int(f.read())
    except OSError:
        return 212992

"""Tests for RFC 5780 NAT behaviour discovery and the port-allocation probe, against simulated NATs."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.nat import stun
from p2psip.nat.behaviour import (
    BehaviourDiscoveryError,
    FilteringBehaviour,
    MappingBehaviour,
    classify_filtering,
    classify_mapping,
    discover_behaviour,
    mapping_test_destinations,
    probe_port_allocation,
)
from p2psip.nat.port_allocation import PortAllocation, PortAllocationKind
from p2psip.nat.stun_client import BindingResult, StunErrorResponse, StunTimeoutError
from p2psip.nat.stun_server import AlternateAddresses, StunResponder

LOCAL = ("10.0.0.2", 5000)
ALTERNATES = AlternateAddresses("192.0.2.1", "192.0.2.2", 3478, 3479)
PRIMARY = ("192.0.2.1", 3478)


class SimulatedNat:
    """
    A NAT with one of RFC 4787's mapping and filtering behaviours.

    ``binding`` has ``StunUdpClient.binding``'s signature and answers
    through a real ``StunResponder``, so the discovery code sees real
    responses, or a timeout when the NAT filters the answer.
    """

    def __init__(
        self,
        mapping: MappingBehaviour,
        filtering: FilteringBehaviour,
        public_ip: str = "198.51.100.1",
    ) -> None:
        self.mapping = mapping
        self.filtering = filtering
        self.public_ip = public_ip
        self.mappings: dict[object, tuple[str, int]] = {}
        self.contacted: set[tuple[str, int]] = set()
        self.next_port = 60000
        self.responder = StunResponder(alternates=ALTERNATES)
        self.requests: list[tuple[tuple[str, int], bool, bool]] = []

    def _mapped(self, destination: tuple[str, int]) -> tuple[str, int]:
        if self.mapping is MappingBehaviour.NO_NAT:
            return LOCAL
        key: object = {
            MappingBehaviour.ENDPOINT_INDEPENDENT: LOCAL,
            MappingBehaviour.ADDRESS_DEPENDENT: (LOCAL, destination[0]),
            MappingBehaviour.ADDRESS_AND_PORT_DEPENDENT: (LOCAL, destination),
        }[self.mapping]
        if key not in self.mappings:
            self.mappings[key] = (self.public_ip, self.next_port)
            self.next_port += 1
        return self.mappings[key]

    def _passes(self, source: tuple[str, int]) -> bool:
        if self.mapping is MappingBehaviour.NO_NAT:
            return True
        if self.filtering is FilteringBehaviour.ENDPOINT_INDEPENDENT:
            return True
        if self.filtering is FilteringBehaviour.ADDRESS_DEPENDENT:
            return source[0] in {ip for ip, _ in self.contacted}
        return source in self.contacted

    def binding(
        self, server: tuple[str, int], *, change_ip: bool = False, change_port: bool = False
    ) -> Deferred[BindingResult]:
        self.requests.append((server, change_ip, change_port))
        self.contacted.add(server)
        request = stun.binding_request(change_ip=change_ip, change_port=change_port)
        reply = self.responder.answer_datagram(
            stun.encode_message(request), self._mapped(server), server
        )
        assert reply is not None
        response = stun.decode_message(reply.payload)
        if response.message_class is stun.MessageClass.ERROR_RESPONSE:
            code, reason = response.error_code() or (0, "")
            return fail(StunErrorResponse(code, reason, response))
        if not self._passes(reply.source):
            return fail(StunTimeoutError("filtered"))
        return succeed(BindingResult(response.xor_mapped_address(), response, reply.source, LOCAL))  # type: ignore[arg-type]


class ClassifyTests(SynchronousTestCase):
    def test_mapping(self) -> None:
        """The three mapping tests classify as RFC 5780 section 4.3 describes."""
        x, y, z = ("198.51.100.1", 1), ("198.51.100.1", 2), ("198.51.100.1", 3)
        self.assertEqual(classify_mapping(LOCAL, LOCAL), MappingBehaviour.NO_NAT)
        self.assertEqual(classify_mapping(LOCAL, x, x), MappingBehaviour.ENDPOINT_INDEPENDENT)
        self.assertEqual(classify_mapping(LOCAL, x, y, y), MappingBehaviour.ADDRESS_DEPENDENT)
        self.assertEqual(
            classify_mapping(LOCAL, x, y, z), MappingBehaviour.ADDRESS_AND_PORT_DEPENDENT
        )
        self.assertRaises(ValueError, classify_mapping, LOCAL, x)

    def test_filtering(self) -> None:
        """The two filtering tests classify as RFC 5780 section 4.4 describes."""
        self.assertEqual(classify_filtering(True, True), FilteringBehaviour.ENDPOINT_INDEPENDENT)
        self.assertEqual(classify_filtering(False, True), FilteringBehaviour.ADDRESS_DEPENDENT)
        self.assertEqual(
            classify_filtering(False, False), FilteringBehaviour.ADDRESS_AND_PORT_DEPENDENT
        )

    def test_destinations(self) -> None:
        """Tests I-III go to (ip1,port1), (ip2,port1), (ip2,port2)."""
        self.assertEqual(
            mapping_test_destinations(PRIMARY, ("192.0.2.2", 3479)),
            [PRIMARY, ("192.0.2.2", 3478), ("192.0.2.2", 3479)],
        )


class PortAllocatingNat:
    """
    A UDP reactor behind a NAT that hands out the public ports in ``mapped``.

    ``listenUDP`` gives each socket the next local port; a Binding request
    written on it is answered at once by a real ``StunResponder``, as
    seen from the next public port, so ``probe_port_allocation`` runs
    unchanged on a fake clock.
    """

    def __init__(self, mapped: list[int], first_local_port: int = 40000) -> None:
        self.clock = Clock()
        self.mapped = list(mapped)
        self.next_local_port = first_local_port
        self.responder = StunResponder()
        self.open_ports: list[int] = []

    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192
    ) -> Any:
        nat = self
        local = (interface or "10.0.0.2", self.next_local_port)
        self.next_local_port += 1
        self.open_ports.append(local[1])

        class Port:
            def write(self, datagram: bytes, to: tuple[str, int]) -> None:
                public = ("198.51.100.1", nat.mapped.pop(0))
                reply = nat.responder.answer_datagram(datagram, public, to)
                assert reply is not None
                protocol.datagramReceived(reply.payload, to)

            def getHost(self) -> IPv4Address:
                return IPv4Address("UDP", *local)

            def stopListening(self) -> None:
                nat.open_ports.remove(local[1])
                protocol.doStop()

        port_object = Port()
        protocol.makeConnection(port_object)  # type: ignore[arg-type]
        return port_object


class PortAllocationProbeTests(SynchronousTestCase):
    def probe(self, mapped: list[int]) -> tuple[PortAllocation, list[tuple[int, int]]]:
        nat = PortAllocatingNat(mapped)
        found = self.successResultOf(
            probe_port_allocation(nat, nat.clock, [PRIMARY], count=len(mapped))  # type: ignore[arg-type]
        )
        self.assertEqual((nat.open_ports, nat.clock.getDelayedCalls()), ([], []))
        return found

    def test_delta_20(self) -> None:
        """Mapped ports 5000, 5020, 5040, 5060 are sequential with delta 20, as the broker says."""
        allocation, samples = self.probe([5000, 5020, 5040, 5060])
        self.assertEqual(allocation, PortAllocation(PortAllocationKind.SEQUENTIAL, 20))
        self.assertEqual(samples, [(40000, 5000), (40001, 5020), (40002, 5040), (40003, 5060)])

    def test_preserving_and_random(self) -> None:
        """Kept local ports are preserving; unrelated ones random."""
        self.assertEqual(
            self.probe([40000, 40001, 40002])[0], PortAllocation(PortAllocationKind.PRESERVING)
        )
        self.assertEqual(
            self.probe([16505, 30068, 2197, 43000])[0], PortAllocation(PortAllocationKind.RANDOM)
        )

    def test_too_few_probes(self) -> None:
        """Two probes that are not preserving cannot show a delta: unknown."""
        self.assertEqual(self.probe([5000, 5020])[0], PortAllocation(PortAllocationKind.UNKNOWN))


class DiscoveryTests(SynchronousTestCase):
    def test_every_combination(self) -> None:
        """Each simulated mapping and filtering behaviour is identified, filtering from a fresh socket."""
        for mapping in MappingBehaviour:
            for filtering in FilteringBehaviour:
                nat = SimulatedNat(mapping, filtering)
                fresh = SimulatedNat(mapping, filtering)
                found = self.successResultOf(
                    discover_behaviour(nat.binding, PRIMARY, LOCAL, filtering_binding=fresh.binding)
                )
                self.assertEqual(found.mapping, mapping, (mapping, filtering))
                expected = (
                    FilteringBehaviour.ENDPOINT_INDEPENDENT
                    if mapping is MappingBehaviour.NO_NAT
                    else filtering
                )
                self.assertEqual(found.filtering, expected, (mapping, filtering))

    def test_same_socket_would_be_wrong(self) -> None:
        """Filtering tests on the mapping socket see the filter the mapping tests opened."""
        nat = SimulatedNat(
            MappingBehaviour.ENDPOINT_INDEPENDENT, FilteringBehaviour.ADDRESS_DEPENDENT
        )
        found = self.successResultOf(
            discover_behaviour(nat.binding, PRIMARY, LOCAL, filtering_binding=nat.binding)
        )
        self.assertEqual(found.filtering, FilteringBehaviour.ENDPOINT_INDEPENDENT)

    def test_mapping_only(self) -> None:
        """Without a filtering socket no CHANGE-REQUEST is sent."""
        nat = SimulatedNat(
            MappingBehaviour.ENDPOINT_INDEPENDENT, FilteringBehaviour.ADDRESS_DEPENDENT
        )
        found = self.successResultOf(discover_behaviour(nat.binding, PRIMARY, LOCAL))
        self.assertIsNone(found.filtering)
        self.assertEqual([flags for _, *flags in nat.requests], [[False, False], [False, False]])

    def test_server_without_rfc5780(self) -> None:
        """A server without OTHER-ADDRESS is reported with a fix to apply."""
        nat = SimulatedNat(
            MappingBehaviour.ENDPOINT_INDEPENDENT, FilteringBehaviour.ENDPOINT_INDEPENDENT
        )
        nat.responder.alternates = None
        failure = self.failureResultOf(
            discover_behaviour(nat.binding, PRIMARY, LOCAL), BehaviourDiscoveryError
        )
        self.assertIn("alternate IP", str(failure.value))

    def test_change_request_refused(self) -> None:
        """A 420 to the filtering tests' CHANGE-REQUEST is a discovery error naming the code."""
        nat = SimulatedNat(
            MappingBehaviour.ENDPOINT_INDEPENDENT, FilteringBehaviour.ENDPOINT_INDEPENDENT
        )
        refusing = SimulatedNat(
            MappingBehaviour.ENDPOINT_INDEPENDENT, FilteringBehaviour.ENDPOINT_INDEPENDENT
        )
        refusing.responder.alternates = None
        failure = self.failureResultOf(
            discover_behaviour(nat.binding, PRIMARY, LOCAL, filtering_binding=refusing.binding),
            BehaviourDiscoveryError,
        )
        self.assertIn("420", str(failure.value))

    def test_unreachable(self) -> None:
        """A silent server is a discovery error."""
        failure = self.failureResultOf(
            discover_behaviour(lambda *a, **k: fail(StunTimeoutError("x")), PRIMARY, LOCAL),
            BehaviourDiscoveryError,
        )
        self.assertIn("did not answer", str(failure.value))

"""
NAT behaviour discovery (RFC 5780 sections 4.3 and 4.4, terms of RFC 4787).

The classification is sans-IO: functions over the mapped addresses and the
answered/unanswered outcomes of the RFC 5780 tests.  ``discover_behaviour``
and ``probe_port_allocation`` drive the tests with ``StunUdpClient``s.

Mapping (RFC 5780 section 4.3), against a server with OTHER-ADDRESS:

* test I: Binding to the primary address (ip1, port1) gives X1; X1 equal
  to the local address means no NAT;
* test II: Binding to (ip2, port1) gives X2; X2 == X1 means
  endpoint-independent mapping;
* test III: Binding to (ip2, port2) gives X3; X3 == X2 means
  address-dependent, otherwise address-and-port-dependent mapping.

Filtering (RFC 5780 section 4.4), all requests to the primary address:

* test II: CHANGE-REQUEST with change IP and port; an answer means
  endpoint-independent filtering;
* test III: change port only; an answer means address-dependent filtering,
  silence address-and-port-dependent.

Port allocation (RFC 4787 section 4.1): ``probe_port_allocation`` makes
probes that each create a new mapping (a fresh local port) and classifies
the mapped ports with ``p2psip.nat.port_allocation``, the classifier the
STUNT broker uses for its port prediction too.
"""

from __future__ import annotations

from enum import Enum
from typing import Awaitable, Callable, Sequence

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, IReactorUDP

from p2psip.nat.port_allocation import PortAllocation, classify_port_allocation
from p2psip.nat.stun_client import (
    BindingResult,
    RetransmissionSchedule,
    StunErrorResponse,
    StunTimeoutError,
    StunUdpClient,
)

Address = tuple[str, int]


class MappingBehaviour(Enum):
    NO_NAT = "no-nat"
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class FilteringBehaviour(Enum):
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


@frozen
class NatBehaviour:
    """The outcome of behaviour discovery against one RFC 5780 server."""

    mapped: Address
    mapping: MappingBehaviour
    filtering: FilteringBehaviour | None


class BehaviourDiscoveryError(Exception):
    """Discovery could not run (server without RFC 5780 support, or unreachable)."""


def classify_mapping(
    local: Address, test1: Address, test2: Address | None = None, test3: Address | None = None
) -> MappingBehaviour:
    """
    The mapping behaviour from the three tests' mapped addresses.

    ``test2`` may be omitted when ``test1`` already shows there is no NAT;
    ``test3`` when ``test2`` equals ``test1``.
    """
    if test1 == local:
        return MappingBehaviour.NO_NAT
    if test2 is None:
        raise ValueError("test II is needed when test I shows a NAT")
    if test2 == test1:
        return MappingBehaviour.ENDPOINT_INDEPENDENT
    if test3 is None:
        raise ValueError("test III is needed when tests I and II differ")
    if test3 == test2:
        return MappingBehaviour.ADDRESS_DEPENDENT
    return MappingBehaviour.ADDRESS_AND_PORT_DEPENDENT


def classify_filtering(
    change_both_answered: bool, change_port_answered: bool
) -> FilteringBehaviour:
    """The filtering behaviour from whether tests II and III got answers."""
    if change_both_answered:
        return FilteringBehaviour.ENDPOINT_INDEPENDENT
    if change_port_answered:
        return FilteringBehaviour.ADDRESS_DEPENDENT
    return FilteringBehaviour.ADDRESS_AND_PORT_DEPENDENT


def mapping_test_destinations(primary: Address, other: Address) -> list[Address]:
    """Where tests I, II and III of RFC 5780 section 4.3 send their requests."""
    (ip1, port1), (ip2, port2) = primary, other
    return [(ip1, port1), (ip2, port1), (ip2, port2)]


BindingCall = Callable[..., "Deferred[BindingResult]"]


async def _answered(attempt: Awaitable[BindingResult]) -> bool:
    try:
        await attempt
    except StunTimeoutError:
        return False
    return True


def discover_behaviour(
    binding: BindingCall,
    server: Address,
    local: Address,
    *,
    filtering_binding: BindingCall | None = None,
) -> Deferred[NatBehaviour]:
    """
    Run the RFC 5780 mapping tests, and the filtering tests if asked.

    ``binding`` is ``StunUdpClient.binding`` (or anything with its
    signature) on one local socket whose address is ``local``.
    ``filtering_binding`` must be on a *different*, fresh socket: the
    mapping tests have already sent to the alternate IP and port, which
    opens an address-dependent filter for exactly the answers the
    filtering tests look for.  Filtering tests wait out the retransmission
    schedule when the NAT filters (39.5 s by default).  Fails with
    ``BehaviourDiscoveryError`` when the server is silent or lacks RFC
    5780 support (no OTHER-ADDRESS, or 420 to CHANGE-REQUEST).
    """
    return Deferred.fromCoroutine(_discover(binding, server, local, filtering_binding))


async def _discover(
    binding: BindingCall, server: Address, local: Address, filtering_binding: BindingCall | None
) -> NatBehaviour:
    try:
        first = await binding(server)
    except StunTimeoutError as e:
        raise BehaviourDiscoveryError(f"STUN server {server} did not answer: {e}") from e
    other = first.other_address
    if other is None:
        raise BehaviourDiscoveryError(
            f"STUN server {server} does not support RFC 5780 (no OTHER-ADDRESS); "
            "configure a mediator with an alternate IP and port"
        )
    _, test2_destination, test3_destination = mapping_test_destinations(server, other)
    test2 = test3 = None
    if first.mapped != local:
        test2 = (await binding(test2_destination)).mapped
        if test2 != first.mapped:
            test3 = (await binding(test3_destination)).mapped
    mapping = classify_mapping(local, first.mapped, test2, test3)
    filtering = None
    if filtering_binding is not None:
        try:
            both = await _answered(filtering_binding(server, change_ip=True, change_port=True))
            port_only = both or await _answered(filtering_binding(server, change_port=True))
        except StunErrorResponse as e:
            raise BehaviourDiscoveryError(
                f"STUN server {server} refused CHANGE-REQUEST ({e.code} {e.reason})"
            ) from e
        filtering = classify_filtering(both, port_only)
    return NatBehaviour(first.mapped, mapping, filtering)


def discover_nat_behaviour(
    reactor: IReactorUDP,
    clock: IReactorTime,
    server: Address,
    interface: str,
    *,
    schedule: RetransmissionSchedule = RetransmissionSchedule(),
    filtering: bool = True,
) -> Deferred[NatBehaviour]:
    """
    Open the sockets discovery needs on ``interface`` and run it.

    ``interface`` must be this host's address towards the server (not the
    wildcard), since "no NAT" means the server saw exactly that address.
    A filtering NAT makes each filtering test wait out ``schedule``
    (39.5 s by default); a shorter schedule suits a known, near server.
    """
    return Deferred.fromCoroutine(
        _discover_with_sockets(reactor, clock, server, interface, schedule, filtering)
    )


async def _discover_with_sockets(
    reactor: IReactorUDP,
    clock: IReactorTime,
    server: Address,
    interface: str,
    schedule: RetransmissionSchedule,
    filtering: bool,
) -> NatBehaviour:
    mapping_client = StunUdpClient(clock, schedule)
    filtering_client = StunUdpClient(clock, schedule)
    ports = [
        reactor.listenUDP(0, client, interface=interface, maxPacketSize=8192)
        for client in (mapping_client, filtering_client)
    ]
    try:
        local: Address = (interface, ports[0].getHost().port)  # type: ignore[attr-defined]
        return await discover_behaviour(
            mapping_client.binding,
            server,
            local,
            filtering_binding=filtering_client.binding if filtering else None,
        )
    finally:
        for port in ports:
            stopped = port.stopListening()
            if isinstance(stopped, Deferred):
                await stopped


def probe_port_allocation(
    reactor: IReactorUDP,
    clock: IReactorTime,
    destinations: Sequence[Address],
    count: int = 6,
    interface: str = "",
    schedule: RetransmissionSchedule = RetransmissionSchedule(),
) -> Deferred[tuple[PortAllocation, list[tuple[int, int]]]]:
    """
    Measure the port allocation with ``count`` new mappings.

    Each probe binds a fresh UDP socket (a new local port), so every probe
    creates a new mapping on any NAT; probes cycle through
    ``destinations``.  Returns the classification and the (local port,
    mapped port) samples.
    """
    return Deferred.fromCoroutine(
        _probe_ports(reactor, clock, destinations, count, interface, schedule)
    )


async def _probe_ports(
    reactor: IReactorUDP,
    clock: IReactorTime,
    destinations: Sequence[Address],
    count: int,
    interface: str,
    schedule: RetransmissionSchedule,
) -> tuple[PortAllocation, list[tuple[int, int]]]:
    samples: list[tuple[int, int]] = []
    for index in range(count):
        client = StunUdpClient(clock, schedule)
        port = reactor.listenUDP(0, client, interface=interface, maxPacketSize=8192)
        local_port: int = port.getHost().port  # type: ignore[attr-defined]
        try:
            result = await client.binding(destinations[index % len(destinations)])
        finally:
            stopped = port.stopListening()
            if isinstance(stopped, Deferred):
                await stopped
        samples.append((local_port, result.mapped[1]))
    return classify_port_allocation(samples), samples

"""
NAT port allocation: the one classifier, and endpoint prediction from it.

Port prediction (Guha and Francis, "Characterization and Measurement of TCP
Traversal through NATs and Firewalls", IMC 2005) makes Binding requests one
after another, each from a fresh local port so that each creates a new
mapping, and looks at the public ports the NAT handed out.  As in that
paper, a NAT is sorted by how it allocates those ports (RFC 4787 section
4.1 uses the same terms):

* port-preserving: every mapped port equals its local port;
* sequential: consecutive mapped ports are a consistent ``delta`` apart,
  so the next mapping will be ``delta`` after the last one;
* random: anything else, which cannot be predicted.

Two more verdicts come from the addresses and the sample count: no NAT at
all (mapped address equal to the local one, ports kept), and unknown (too
few samples to tell).

Both users classify with ``classify_port_allocation``: the STUNT broker,
through ``classify_observations`` on a client's ``probed`` report (TCP,
hosts included), and the RFC 5780 behaviour probe in
``p2psip.nat.behaviour`` on (local port, mapped port) pairs (UDP).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from enum import StrEnum
from fractions import Fraction

import attrs

#: Ports a NAT can hand out: 1..65535 (port 0 is never a mapping).
PORT_COUNT = 65535

#: Preservation shows in every single sample, but one sample is not a pattern.
MIN_SAMPLES = 2
#: A delta is "consistent" only if at least two steps (three samples) show it.
MIN_DELTA_SAMPLES = 3

#: Consecutive mappings further apart than this are not called sequential,
#: even when the steps are equal.  Real sequential NATs step by 1 or a few
#: ports, or by a few tens when other hosts share the NAT; a wide step
#: wraps the NAT's (unknown) port range after a few flows and turns every
#: flow another host slips in between into a miss by a whole step.
MAX_SEQUENTIAL_DELTA = 50
#: Share of the steps that must agree on the delta.  Other flows through
#: the NAT take a port between two probes now and then; with the four
#: probes a client makes, one disturbed step of three is still sequential.
SEQUENTIAL_AGREEMENT = Fraction(2, 3)

Sample = tuple[int, int]  # local port, mapped port
Observation = tuple[int, str, int]  # local port, mapped host, mapped port


class PortAllocationKind(StrEnum):
    """How a NAT picks public ports; the values appear in reports and the CLI."""

    NO_NAT = "none"
    PRESERVING = "preserving"
    SEQUENTIAL = "sequential"
    RANDOM = "random"
    UNKNOWN = "unknown"


def port_step(previous: int, port: int) -> int:
    """
    The signed distance from ``previous`` to ``port`` on the ring of ports.

    A NAT that counts up past 65535 starts again at the bottom, so 65535 to
    1 is a step of +1, not -65534.  The result is in -32767..32767.
    """
    step = (port - previous) % PORT_COUNT
    return step - PORT_COUNT if step > PORT_COUNT // 2 else step


def advance_port(port: int, delta: int, steps: int = 1) -> int:
    """``port`` moved ``steps`` times by ``delta`` on the ring of ports 1..65535."""
    return (port - 1 + steps * delta) % PORT_COUNT + 1


@attrs.frozen
class PortAllocation:
    """A NAT's port allocation; ``delta`` is set (nonzero) for sequential ones only."""

    kind: PortAllocationKind
    delta: int = 0

    @property
    def predictable(self) -> bool:
        return self.kind in (
            PortAllocationKind.NO_NAT,
            PortAllocationKind.PRESERVING,
            PortAllocationKind.SEQUENTIAL,
        )

    def describe(self) -> str:
        """A phrase for reports and failure reasons (the broker sends it to clients)."""
        if self.kind is PortAllocationKind.NO_NAT:
            return "no NAT (public address)"
        if self.kind is PortAllocationKind.PRESERVING:
            return "port-preserving NAT"
        if self.kind is PortAllocationKind.SEQUENTIAL:
            return f"NAT with sequential port allocation (delta {self.delta:+d})"
        if self.kind is PortAllocationKind.RANDOM:
            return "NAT with random port allocation"
        return "NAT whose port allocation could not be determined"

    def predict(self, last_mapped_port: int, local_port: int, steps: int = 1) -> int | None:
        """
        The public port the ``steps``-th new mapping from ``local_port`` will probably get.

        ``None`` when the allocation cannot be predicted.
        """
        if self.kind in (PortAllocationKind.NO_NAT, PortAllocationKind.PRESERVING):
            return local_port
        if self.kind is PortAllocationKind.SEQUENTIAL:
            return advance_port(last_mapped_port, self.delta, steps)
        return None


def classify_port_allocation(samples: Sequence[Sample]) -> PortAllocation:
    """
    The port allocation from (local port, mapped port) samples, in probe order.

    Each sample must come from a new mapping (a fresh local port).  The
    rule:

    * fewer than ``MIN_SAMPLES`` samples: unknown;
    * every mapped port equal to its local port: preserving;
    * fewer than ``MIN_DELTA_SAMPLES`` samples: unknown (one step is no
      pattern);
    * the most common step between consecutive mapped ports (``port_step``,
      so wrapping past 65535 is a small step) is the delta; it is
      sequential when the delta is nonzero, at most
      ``MAX_SEQUENTIAL_DELTA`` either way, at least
      ``SEQUENTIAL_AGREEMENT`` of the steps show it, and no step goes the
      other way (other hosts' flows only move a sequential NAT further
      along, so the other steps are larger, never reversed);
    * anything else is random.  That includes mixed steps (+1, -1, +1)
      and a constant step of 0: a NAT that gives every new local port the
      same public port tells flows apart by destination, and a peer's SYN
      to that port cannot be steered to a new mapping.
    """
    if len(samples) < MIN_SAMPLES:
        return PortAllocation(PortAllocationKind.UNKNOWN)
    if all(local == mapped for local, mapped in samples):
        return PortAllocation(PortAllocationKind.PRESERVING)
    if len(samples) < MIN_DELTA_SAMPLES:
        return PortAllocation(PortAllocationKind.UNKNOWN)
    mapped_ports = [mapped for _, mapped in samples]
    steps = [port_step(a, b) for a, b in zip(mapped_ports, mapped_ports[1:], strict=False)]
    delta, agreeing = Counter(steps).most_common(1)[0]
    if (
        0 < abs(delta) <= MAX_SEQUENTIAL_DELTA
        and agreeing >= SEQUENTIAL_AGREEMENT * len(steps)
        and all(step * delta > 0 for step in steps)
    ):
        return PortAllocation(PortAllocationKind.SEQUENTIAL, delta)
    return PortAllocation(PortAllocationKind.RANDOM)


@attrs.frozen
class ProbedNat:
    """What port prediction learned about one side's NAT: public address and allocation."""

    public_ip: str
    allocation: PortAllocation

    @property
    def kind(self) -> PortAllocationKind:
        return self.allocation.kind

    @property
    def predictable(self) -> bool:
        return self.allocation.predictable

    def describe(self) -> str:
        return self.allocation.describe()


UNKNOWN_NAT = ProbedNat("", PortAllocation(PortAllocationKind.UNKNOWN))


def classify_observations(local_ip: str, observations: Iterable[Observation]) -> ProbedNat:
    """
    One side's NAT from its probes (a ``probed`` report): ``classify_port_allocation``
    on the ports, and no NAT when a preserving mapping also kept the local address.
    """
    obs = list(observations)
    if not obs:
        return UNKNOWN_NAT
    public_ip = obs[-1][1]
    allocation = classify_port_allocation([(local, mapped) for local, _, mapped in obs])
    if allocation.kind is PortAllocationKind.PRESERVING and all(
        host == local_ip for _, host, _ in obs
    ):
        allocation = PortAllocation(PortAllocationKind.NO_NAT)
    return ProbedNat(public_ip, allocation)


def predict_endpoint(
    nat: ProbedNat, hole_port: int, observations: Sequence[Observation]
) -> tuple[str, int]:
    """
    The public endpoint the next flow from ``hole_port`` will get.

    The client's last probe comes from ``hole_port`` itself; a sequential
    NAT gives the following flow (the punch towards the peer) the next
    port.  Without a prediction the last mapped port is the best guess (a
    UDP peer then learns the real one from the first packet).
    """
    last_mapped = observations[-1][2] if observations else hole_port
    port = nat.allocation.predict(last_mapped, hole_port)
    return (nat.public_ip, last_mapped if port is None else port)

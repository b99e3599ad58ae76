"""
NAT port-allocation classification and endpoint prediction (port prediction).

A client makes Binding requests one after another, each from a fresh local
port, and reports the mapped endpoints; how the NAT picked those public
ports tells whether the port of the client's next flow can be predicted
(the port prediction of the STUNT paper, Guha and Francis, IMC 2005).
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

#: NAT port-allocation classes found by port prediction.
NO_NAT = "none"
PRESERVING = "preserving"
SEQUENTIAL = "sequential"
RANDOM = "random"
UNKNOWN = "unknown"


@attrs.frozen
class NatBehaviour:
    """What port prediction learned about one side's NAT for TCP."""

    allocation: str  # NO_NAT, PRESERVING, SEQUENTIAL, RANDOM, UNKNOWN
    public_ip: str
    delta: int = 0

    @property
    def predictable(self) -> bool:
        return self.allocation in (NO_NAT, PRESERVING, SEQUENTIAL)

    def describe(self) -> str:
        if self.allocation == NO_NAT:
            return "no NAT (public address)"
        if self.allocation == PRESERVING:
            return "port-preserving NAT"
        if self.allocation == SEQUENTIAL:
            return f"NAT with sequential port allocation (delta {self.delta:+d})"
        if self.allocation == RANDOM:
            return "NAT with random port allocation"
        return "NAT whose port allocation could not be determined"


Observation = tuple[int, str, int]  # local port, mapped host, mapped port


def classify(local_ip: str, observations: Iterable[Observation]) -> NatBehaviour:
    """
    Port allocation from Binding probes made from fresh local ports.

    Probes go one after another to the same server endpoint, so a NAT that
    allocates sequentially shows a constant difference between consecutive
    mapped ports (in at least two thirds of the steps: other traffic may
    take a port in between), and a port-preserving NAT maps every local
    port to itself.
    """
    obs = list(observations)
    if not obs:
        return NatBehaviour(UNKNOWN, "")
    public_ip = obs[-1][1]
    if all(host == local_ip and mapped == local for local, host, mapped in obs):
        return NatBehaviour(NO_NAT, public_ip)
    if all(mapped == local for local, _, mapped in obs):
        return NatBehaviour(PRESERVING, public_ip)
    if len(obs) >= 3:
        deltas = [(b[2] - a[2]) % 65536 for a, b in zip(obs, obs[1:], strict=False)]
        # Other flows through the same NAT can take a port between two of
        # our probes; a clear majority of equal steps is still sequential.
        delta = max(set(deltas), key=deltas.count)
        agreeing = deltas.count(delta)
        if delta > 32768:
            delta -= 65536
        if agreeing >= 2 and agreeing * 3 >= len(deltas) * 2 and 0 < abs(delta) <= 16:
            return NatBehaviour(SEQUENTIAL, public_ip, delta)
        return NatBehaviour(RANDOM, public_ip)
    return NatBehaviour(UNKNOWN, public_ip)


def predict_endpoint(
    behaviour: NatBehaviour, hole_port: int, observations: list[Observation]
) -> tuple[str, int]:
    """
    The public endpoint the next flow from ``hole_port`` will get.

    The client's last probe comes from ``hole_port`` itself; a sequential NAT
    gives the following flow (the punch towards the peer) the next port.
    """
    last = observations[-1] if observations else (hole_port, behaviour.public_ip, hole_port)
    if behaviour.allocation in (NO_NAT, PRESERVING):
        return (behaviour.public_ip, hole_port)
    if behaviour.allocation == SEQUENTIAL:
        return (behaviour.public_ip, (last[2] + behaviour.delta) % 65536)
    return (behaviour.public_ip, last[2])

"""
``make demo``: a local p2psip overlay on loopback, end to end.

Starts a ring of peers in this process, each with its own key and its own
TLS listener on 127.0.0.1 (ports chosen by the OS), joins them through the
first one, stores and fetches values across the ring, prints the ring and
each lookup's route and hop count, then (:mod:`p2psip.demo_sip`) registers
two SIP phones at two super-nodes and has one call the other through the
overlay, then has every peer leave and exits 0.
"""

from __future__ import annotations

import sys
import time

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTime

from p2psip.util.reactor import IRoleReactor, as_role_reactor
from p2psip.demo_sip import run_sip_demo
from p2psip.overlay.identity import NodeIdentity
from p2psip.overlay.certificates import SelfSignedTrust
from p2psip.overlay.links import StreamConnector, inbound_link_factory
from p2psip.overlay.node import OverlayConfig, OverlayNode
from p2psip.overlay.tls import LinkSecurity
from p2psip.util.ids import id_short

PEERS = 8
DEMO_CONFIG = OverlayConfig(
    overlay_name="demo.p2psip.test",
    update_interval_seconds=1.0,
    ping_interval_seconds=2.0,
    request_timeout_seconds=5.0,
)


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def start_peer(
    reactor: IRoleReactor, bootstrap: str | None, config: OverlayConfig = DEMO_CONFIG
) -> Deferred[tuple[OverlayNode, IListeningPort]]:
    """
    A peer listening on 127.0.0.1 (a port the OS picks): the ring's first
    when ``bootstrap`` is None, else joined through that endpoint.

    ``reactor`` must provide IReactorTCP as well (the peer's listener and
    links); the demo and ``bench/overlay.py`` pass the global reactor.
    """
    return Deferred.fromCoroutine(_start_peer(reactor, bootstrap, config))


async def _start_peer(
    reactor: IRoleReactor, bootstrap: str | None, config: OverlayConfig
) -> tuple[OverlayNode, IListeningPort]:
    identity = NodeIdentity.generate()
    # Self-signed identities (RFC 6940 s13.4): the demo has no enrolment server.
    trust = SelfSignedTrust()
    security = LinkSecurity(identity, trust, reactor)
    max_bytes = config.limits.max_message_bytes
    node = OverlayNode(
        identity=identity,
        clock=reactor,
        connector=StreamConnector(reactor, reactor, max_bytes, security),
        advertised_host="127.0.0.1",
        advertised_port=0,
        config=config,
        trust=trust,
    )
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port: IListeningPort = await endpoint.listen(
        inbound_link_factory(node, reactor, max_bytes, security)
    )
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    node.set_advertised_address("127.0.0.1", address.port)
    if bootstrap is None:
        node.start_alone()
    else:
        await node.join([bootstrap])
    return node, port


async def main(react_reactor: IReactorTime) -> None:
    reactor = as_role_reactor(react_reactor)
    started = time.monotonic()
    say(f"Starting a ring of {PEERS} peers on 127.0.0.1 ...")
    nodes: list[OverlayNode] = []
    ports: list[IListeningPort] = []
    first, first_port = await start_peer(reactor, None)
    nodes.append(first)
    ports.append(first_port)
    bootstrap = f"tcp:127.0.0.1:{first.advertised_port}"
    say(f"  bootstrap {id_short(first.node_id)} listening on {bootstrap}")
    for index in range(1, PEERS):
        node, port = await start_peer(reactor, bootstrap)
        nodes.append(node)
        ports.append(port)
        say(f"  peer {index} {id_short(node.node_id)} joined on port {node.advertised_port}")
    say("Letting the ring stabilise ...")
    await task.deferLater(reactor, 3.0, lambda: None)

    say("\nThe ring (clockwise):")
    for node in sorted(nodes, key=lambda n: n.node_id):
        say(
            f"  {id_short(node.node_id)}  pred {id_short(node.topology.predecessor or 0)}"
            f"  succ {id_short(node.topology.successor or 0)}  port {node.advertised_port}"
        )

    say("\nStoring values through different peers:")
    users = ["alice", "bob", "carol", "dave", "erin"]
    for index, user in enumerate(users):
        origin = nodes[index % len(nodes)]
        result = await origin.put(
            f"sip:{user}@demo.p2psip.test", f"sip:{user}@127.0.0.1:5062".encode()
        )
        say(
            f"  put {user:<6} via {id_short(origin.node_id)} -> stored at {id_short(result.responsible)}"
            f", replicas {', '.join(id_short(r) for r in result.replicas) or '-'}"
        )

    say("\nLooking them up from other peers (route and hop count):")
    hops = []
    for index, user in enumerate(users):
        origin = nodes[(index + 3) % len(nodes)]
        got = await origin.get(f"sip:{user}@demo.p2psip.test")
        route = " -> ".join(id_short(hop) for hop in got.route)
        hops.append(got.hops)
        say(
            f"  get {user:<6} from {id_short(origin.node_id)}: {got.value.decode() if got.value else 'NOT FOUND'}"
        )
        say(f"      route {route}  ({got.hops} hops)")
        if not got.found:
            raise SystemExit(f"value for {user} was not found")

    setup_ms = await run_sip_demo(reactor, nodes, say)

    say("\nEvery peer leaves gracefully ...")
    for node, port in zip(reversed(nodes), reversed(ports)):
        await node.leave()
        stopped = port.stopListening()
        if stopped is not None:
            await stopped
    say(
        f"\nDone: {PEERS} peers, {len(users)} values, mean lookup {sum(hops) / len(hops):.1f} hops,"
        f" one call set up in {setup_ms:.1f} ms, {time.monotonic() - started:.1f} s."
    )


def run() -> None:
    task.react(main)


if __name__ == "__main__":
    run()

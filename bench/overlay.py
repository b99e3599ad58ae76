"""
Overlay benchmark: rings of N peers in one process over real loopback TLS.

For each N prints join convergence time, lookup hops (mean, p99, against
the Chord reference 1/2*log2(N) and the target 1/2*log2(N)+1), lookup
latency p50/p99, lookups/s and memory per node.  Run: ``make bench`` or
``python bench/overlay.py 16 64 256``; with ``--secure`` the nodes hold
certificates from one overlay CA and trust only its root (an enrolled ring),
without it they are self-signed (``--insecure``).  Links are TLS either way.
"""

from __future__ import annotations

import bisect
import math
import random
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort

from p2psip.enrolment.authority import OverlayAuthority
from p2psip.overlay.certificates import SelfSignedTrust, TrustPolicy
from p2psip.overlay.identity import NodeIdentity
from p2psip.overlay.links import StreamConnector, inbound_link_factory
from p2psip.overlay.node import OverlayConfig, OverlayNode
from p2psip.overlay.tls import LinkSecurity
from p2psip.testing import enrolled_identity
from p2psip.util.reactor import IRoleReactor

#: Production-like timers: the whole ring shares one process and one core.
BENCH_CONFIG = OverlayConfig(
    overlay_name="bench.p2psip.test",
    update_interval_seconds=10.0,
    ping_interval_seconds=10.0,
    request_timeout_seconds=10.0,
)

LOOKUPS = 2000
CONCURRENCY = 32


def start_peer(
    reactor: IRoleReactor,
    bootstrap: str | None,
    config: OverlayConfig = BENCH_CONFIG,
    identity: NodeIdentity | None = None,
    trust: TrustPolicy | None = None,
) -> Deferred[tuple[OverlayNode, IListeningPort]]:
    """
    A peer listening on 127.0.0.1 (a port the OS picks): the ring's first
    when ``bootstrap`` is None, else joined through that endpoint.

    ``identity`` and ``trust`` are the peer's enrolled certificate and the
    overlay root's trust policy; without them it is a self-signed
    node.  ``reactor`` must provide IReactorTCP as well (the
    peer's listener and links); the benchmark passes the global reactor.
    """
    return Deferred.fromCoroutine(_start_peer(reactor, bootstrap, config, identity, trust))


async def _start_peer(
    reactor: IRoleReactor,
    bootstrap: str | None,
    config: OverlayConfig,
    identity: NodeIdentity | None,
    trust: TrustPolicy | None,
) -> tuple[OverlayNode, IListeningPort]:
    identity = identity or NodeIdentity.generate()
    # Without an enrolled identity: self-signed mode (RFC 6940 s13.4).
    trust = trust or SelfSignedTrust()
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


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def enrolled_peers(secure: bool) -> Callable[[Any, str | None], Any]:
    """
    ``start_peer`` for this run: self-signed nodes (an ``--insecure`` ring),
    or with ``secure`` nodes holding certificates from one overlay CA and
    trusting only its root, as an enrolled ring's roles do.
    """
    if not secure:
        return lambda reactor, bootstrap: start_peer(reactor, bootstrap, BENCH_CONFIG)
    now = time.time()
    authority = OverlayAuthority.create(BENCH_CONFIG.overlay_name, now)

    def start(reactor: Any, bootstrap: str | None) -> Any:
        identity = enrolled_identity(authority, now=now)
        trust = authority.trust(reactor.seconds)
        return start_peer(reactor, bootstrap, BENCH_CONFIG, identity, trust)

    return start


@inlineCallbacks
def ring(reactor: Any, size: int, secure: bool = False) -> Any:
    start_one = enrolled_peers(secure)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    before = rss_kib()
    started = time.monotonic()
    first, port = yield start_one(reactor, None)
    nodes, ports = [first], [port]
    bootstrap = f"tcp:127.0.0.1:{first.advertised_port}"
    for index in range(1, size):
        for attempt in range(3):
            # A join can time out while the ring is still converging around
            # the new id; the roles retry too (see OverlayService).
            try:
                node, port = yield start_one(reactor, bootstrap)
                break
            except Exception as error:
                sys.stderr.write(f"  join {index} attempt {attempt + 1} failed: {error}\n")
        else:
            raise RuntimeError(f"peer {index} could not join")
        nodes.append(node)
        ports.append(port)
        if index % 32 == 0:
            sys.stderr.write(f"  {index}/{size} joined\n")
    joined = time.monotonic() - started
    ids = sorted(n.node_id for n in nodes)

    def converged() -> bool:
        for node in nodes:
            i = ids.index(node.node_id)
            if (
                node.topology.successor != ids[(i + 1) % size]
                or node.topology.predecessor != ids[i - 1]
            ):
                return False
        return True

    while not converged():
        yield task.deferLater(reactor, 0.2, lambda: None)
        if time.monotonic() - started > 600:
            break
    convergence = time.monotonic() - started
    # Let finger repair run a few rounds before measuring routes.
    yield task.deferLater(reactor, 3.0, lambda: None)
    memory_per_node = (rss_kib() - before) / size

    rng = random.Random(size)
    hops: list[int] = []
    latencies: list[float] = []
    correct = 0

    def owner(target: int) -> int:
        return ids[bisect.bisect_left(ids, target) % size]

    @inlineCallbacks
    def one() -> Any:
        nonlocal correct
        origin = rng.choice(nodes)
        target = rng.getrandbits(128)
        t0 = time.monotonic()
        result = yield origin.lookup_id(target)
        latencies.append(time.monotonic() - t0)
        hops.append(result.hops)
        correct += result.responsible == owner(target)

    lookups_started = time.monotonic()
    for _ in range(LOOKUPS // CONCURRENCY):
        yield DeferredList([one() for _ in range(CONCURRENCY)], consumeErrors=True)
    elapsed = time.monotonic() - lookups_started
    reference = 0.5 * math.log2(size)
    print(
        f"| {size} | {joined:.1f} | {convergence:.1f} | {sum(hops) / len(hops):.2f} | {percentile(hops, 0.99):.0f}"
        f" | {reference:.2f} / {reference + 1:.2f} | {percentile(latencies, 0.5) * 1000:.2f} | {percentile(latencies, 0.99) * 1000:.2f}"
        f" | {len(hops) / elapsed:.0f} | {100 * correct / len(hops):.1f}% | {memory_per_node:.0f} |",
        flush=True,
    )
    for node, port in zip(nodes, ports):
        node.stop()
        yield port.stopListening()


@inlineCallbacks
def main(reactor: Any, *arguments: str) -> Any:
    secure = "--secure" in arguments
    sizes = [argument for argument in arguments if argument != "--secure"]
    print(
        "ring of enrolled nodes (overlay CA)"
        if secure
        else "ring of self-signed nodes (--insecure)"
    )
    print(
        "| N | all joined s | converged s | mean hops | p99 hops | ½·log2N / target | p50 ms | p99 ms | lookups/s | correct | KiB/node |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in [int(s) for s in sizes] or [16, 64, 256]:
        yield ring(reactor, size, secure)


if __name__ == "__main__":
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    # Node logs go to a file so the table on stdout stays readable.
    log_file = open("bench-overlay.log", "w")
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(log_file), [predicate])], redirectStandardIO=False
    )
    task.react(main, sys.argv[1:])

"""
``make demo``: a local p2psip overlay on loopback, end to end, enrolled.

Makes an overlay CA with enrolment accounts and starts its HTTPS enrolment
server on 127.0.0.1, as a bootstrap does.  Each peer of the ring gets its
certificate from that server (RFC 6940 s11.3, the CA pinned by its
fingerprint, the Node-ID chosen by the CA) and believes only certificates
from that CA.  The peers, each with its own TLS listener on 127.0.0.1
(ports chosen by the OS), join through the first one; the demo stores and
fetches values across the ring, prints the ring and each lookup's route
and hop count, then (:mod:`p2psip.demo_sip`) gets Alice's and Bob's user
certificates for their super-nodes, registers two SIP phones there and has
one call the other through the overlay; then (:mod:`p2psip.demo_clients`)
alice and bob each run a thin client (a RELOAD client attached to one
peer, with the client role's SIP adaptor), call each other through it,
and keep calling after bob's attachment peer is killed.  Finally every
surviving peer leaves and the demo exits 0.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTime

from p2psip.util.reactor import IRoleReactor, as_role_reactor
from p2psip.demo_clients import run_client_demo
from p2psip.demo_sip import PASSWORDS as USER_PASSWORDS, run_sip_demo
from p2psip.enrolment.accounts import AccountsFile, Grant
from p2psip.enrolment.authority import OverlayAuthority
from p2psip.enrolment.client import RootPin, enrol_node, enrol_user
from p2psip.enrolment.configuration import OverlayConfiguration, describe_kinds
from p2psip.enrolment.fingerprints import parse_fingerprint, root_fingerprint
from p2psip.enrolment.server import build_enrolment_server
from p2psip.overlay.certificates import SelfSignedTrust, TrustPolicy
from p2psip.overlay.identity import NodeIdentity
from p2psip.overlay.kinds import DEFAULT_KINDS
from p2psip.overlay.links import StreamConnector, inbound_link_factory
from p2psip.overlay.node import OverlayConfig, OverlayNode
from p2psip.overlay.tls import LinkSecurity
from p2psip.util.ids import id_short

PEERS = 4
#: The enrolment account the demo's peers enrol under (a real ring's operator makes
#: it with `p2psip accounts add --peer`).
PEER_ACCOUNT = "demo-peers@demo.p2psip.test"
PEER_PASSWORD = "demo-peers-password"
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
    reactor: IRoleReactor,
    bootstrap: str | None,
    config: OverlayConfig = DEMO_CONFIG,
    identity: NodeIdentity | None = None,
    trust: TrustPolicy | None = None,
) -> Deferred[tuple[OverlayNode, IListeningPort]]:
    """
    A peer listening on 127.0.0.1 (a port the OS picks): the ring's first
    when ``bootstrap`` is None, else joined through that endpoint.

    ``identity`` and ``trust`` are the peer's enrolled certificate and the
    overlay root's trust policy; without them (``bench/overlay.py``) it is
    a self-signed node.  ``reactor`` must provide IReactorTCP as well (the
    peer's listener and links); the demo passes the global reactor.
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


async def main(react_reactor: IReactorTime) -> None:
    reactor = as_role_reactor(react_reactor)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="p2psip-demo-ca-") as scratch:
        ca = DemoCA(reactor, Path(scratch))
        ca.server.startService()
        try:
            await _run_demo(reactor, ca, started)
        finally:
            await ca.server.stopService()


class DemoCA:
    """The demo's overlay CA, its accounts and its HTTPS enrolment server on 127.0.0.1."""

    def __init__(self, reactor: IRoleReactor, directory: Path) -> None:
        self.reactor = reactor
        now = reactor.seconds()
        self.authority = OverlayAuthority.create(DEMO_CONFIG.overlay_name, now)
        self.accounts = AccountsFile.load(directory / "enrolment-accounts", missing_ok=True)
        self.accounts.set_account(PEER_ACCOUNT, PEER_PASSWORD, [Grant.PEER])
        for name, password in USER_PASSWORDS.items():
            self.accounts.set_account(self.user_name(name), password, [Grant.USER])
        self.accounts.save()
        self.pin = RootPin(fingerprint=parse_fingerprint(root_fingerprint(self.authority.root_der)))
        self.trust = self.authority.trust(reactor.seconds)
        self.server = build_enrolment_server(
            reactor,
            authority=self.authority,
            accounts=self.accounts,
            listen="ssl:0:interface=127.0.0.1",
            hosts=["127.0.0.1"],
            describe=self._describe,
            announce=True,
        )

    @staticmethod
    def user_name(name: str) -> str:
        return f"{name}@{DEMO_CONFIG.overlay_name}"

    def _describe(self) -> OverlayConfiguration:
        return OverlayConfiguration(
            instance_name=DEMO_CONFIG.overlay_name,
            sequence=0,
            expiration=0,
            root_der=self.authority.root_der,
            enrolment_servers=(self.url,),
            bootstrap_nodes=(),
            kinds=describe_kinds(DEFAULT_KINDS.values()),
            max_message_size=DEMO_CONFIG.limits.max_message_bytes,
            initial_ttl=DEMO_CONFIG.initial_ttl,
            chord_ping_interval_seconds=max(1, round(DEMO_CONFIG.ping_interval_seconds)),
            chord_update_interval_seconds=max(1, round(DEMO_CONFIG.update_interval_seconds)),
        )

    @property
    def url(self) -> str:
        url = self.server.url
        assert url is not None, "the enrolment server is not listening yet"
        return url

    async def enrol_peer(self) -> tuple[ec.EllipticCurvePrivateKey, NodeIdentity]:
        """A fresh key and the node certificate the enrolment server grants it, over HTTPS."""
        key = ec.generate_private_key(ec.SECP256R1())
        enrolment = await enrol_node(
            self.reactor,
            enrol_url=self.url,
            pin=self.pin,
            account=PEER_ACCOUNT,
            password=PEER_PASSWORD,
            key=key,
            overlay_name=DEMO_CONFIG.overlay_name,
        )
        return key, NodeIdentity(key, enrolment.certificate_der)

    async def enrol_user(
        self, node: NodeIdentity, key: ec.EllipticCurvePrivateKey, name: str
    ) -> bytes:
        """``name``'s user certificate bound to ``node`` (whose key is ``key``), over HTTPS."""
        enrolment = await enrol_user(
            self.reactor,
            enrol_url=self.url,
            pin=self.pin,
            user=self.user_name(name),
            password=USER_PASSWORDS[name],
            node=node,
            key=key,
            overlay_name=DEMO_CONFIG.overlay_name,
        )
        return enrolment.certificate_der


async def _run_demo(reactor: IRoleReactor, ca: DemoCA, started: float) -> None:
    say(f"Overlay CA {root_fingerprint(ca.authority.root_der)[:23]}..., enrolment server {ca.url}")
    say(f"Starting a ring of {PEERS} peers on 127.0.0.1, each enrolled over HTTPS ...")
    nodes: list[OverlayNode] = []
    ports: list[IListeningPort] = []
    keys: dict[int, ec.EllipticCurvePrivateKey] = {}

    async def enrolled_peer(bootstrap: str | None) -> tuple[OverlayNode, IListeningPort]:
        key, identity = await ca.enrol_peer()
        node, port = await start_peer(reactor, bootstrap, identity=identity, trust=ca.trust)
        keys[node.node_id] = key
        return node, port

    first, first_port = await enrolled_peer(None)
    nodes.append(first)
    ports.append(first_port)
    bootstrap = f"tcp:127.0.0.1:{first.advertised_port}"
    say(f"  bootstrap {id_short(first.node_id)} listening on {bootstrap}")
    for index in range(1, PEERS):
        node, port = await enrolled_peer(bootstrap)
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

    async def user_certificate(node: OverlayNode, name: str) -> bytes:
        return await ca.enrol_user(node.identity, keys[node.node_id], name)

    setup_ms = await run_sip_demo(reactor, nodes, say, user_certificate)

    async def client_user_certificate(
        identity: NodeIdentity, key: ec.EllipticCurvePrivateKey, name: str
    ) -> bytes:
        return await ca.enrol_user(identity, key, name)

    figures = await run_client_demo(
        reactor, nodes, ports, ca.trust, say, ca.enrol_peer, client_user_certificate
    )

    say("\nEvery peer leaves gracefully ...")
    for node, port in zip(reversed(nodes), reversed(ports)):
        await node.leave()
        stopped = port.stopListening()
        if stopped is not None:
            await stopped
    say(
        f"\nDone: {PEERS} peers ({PEERS - len(nodes)} killed), {len(users)} values, mean lookup "
        f"{sum(hops) / len(hops):.1f} hops, super-node call set up in {setup_ms:.1f} ms, "
        f"thin-client calls in {figures['client_call_ms']:.1f} ms and, after bob's peer died and "
        f"his client re-attached in {figures['reattach_ms']:.0f} ms, "
        f"{figures['second_call_ms']:.1f} ms; {time.monotonic() - started:.1f} s."
    )


def run() -> None:
    task.react(main)


if __name__ == "__main__":
    run()

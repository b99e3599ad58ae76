"""
The thin-client part of ``make demo``: alice and bob each run a thin
client, as ``twistd p2psip-client`` does, and call each other through the
overlay; then bob's attachment peer is killed and the call path recovers.

Each client is a RELOAD client (:class:`~p2psip.overlay.client.OverlayClient`)
enrolled by the demo's CA (a node certificate of its own and its user's
certificate bound to it), attached over TLS to the peer responsible for
its Node-ID, with the role's SIP adaptor (:func:`~p2psip.roles.sip_service.build_sip_stack`
on the client, loopback only, no Digest) in front of a phone.  The
account printed: which peer each client is attached to and that no peer
lists it in its ring tables, where bob's registration is stored and the
lookup's route, the call's set-up time and signalling path (adaptor to
adaptor, found by AppAttach), and, after bob's peer dies, how long bob's
client took to attach elsewhere and the second call.

Media: the calls are signalling only.  Once the media relay exists, the
relayed second of RTP belongs between :func:`_call` and the hang-up.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import task
from twisted.internet.interfaces import IListeningPort

from p2psip.enrolment.user_certificates import UserCertificates
from p2psip.overlay.certificates import TrustPolicy
from p2psip.overlay.client import OverlayClient
from p2psip.overlay.identity import NodeIdentity
from p2psip.overlay.links import StreamConnector
from p2psip.overlay.node import OverlayNode
from p2psip.overlay.tls import LinkSecurity
from p2psip.roles.ring_options import SipConfig
from p2psip.roles.sip_service import SipService, build_sip_stack
from p2psip.sip.registrar import Registrar
from p2psip.sip.transaction import Hop
from p2psip.sip.transport import SipTransport
from p2psip.sip.user_agent import Dialog, SimpleUserAgent
from p2psip.usages.sip import registration_resource_name
from p2psip.util.ids import id_short
from p2psip.util.reactor import IRoleReactor, as_udp_reactor

#: A fresh enrolled identity (key and node certificate) for a client.
EnrolClient = Callable[[], Awaitable[tuple[ec.EllipticCurvePrivateKey, NodeIdentity]]]
#: A user's certificate bound to an identity (``p2psip enrol --user``).
EnrolUser = Callable[[NodeIdentity, ec.EllipticCurvePrivateKey, str], Awaitable[bytes]]

#: The thin clients' users.
CLIENT_USERS = ("alice", "bob")


class _ThinClient:
    """One user's thin client: the RELOAD client, its SIP adaptor and the user's phone."""

    def __init__(
        self, name: str, client: OverlayClient, service: SipService, phone: SimpleUserAgent
    ) -> None:
        self.name = name
        self.client = client
        self.service = service
        self.phone = phone
        self.transport = phone.transport


def _adaptor_config(domain: str) -> SipConfig:
    """What ``twistd p2psip-client`` runs by default: loopback only, so no Digest."""
    return SipConfig(
        domain=domain,
        listeners=("udp:0:interface=127.0.0.1",),
        users_path=None,
        digest_algorithms=("SHA-256", "MD5"),
        advertise=None,
        trusted_network=True,
    )


async def _start_client(
    reactor: IRoleReactor,
    name: str,
    directory: Path,
    bootstrap: str,
    nodes: list[OverlayNode],
    trust: TrustPolicy,
    enrol_client: EnrolClient,
    enrol_user: EnrolUser,
) -> _ThinClient:
    key, identity = await enrol_client()
    config = nodes[0].config
    domain = config.overlay_name
    security = LinkSecurity(identity, trust, reactor)
    client = OverlayClient(
        identity=identity,
        clock=reactor,
        connector=StreamConnector(reactor, reactor, config.limits.max_message_bytes, security),
        config=config,
        trust=trust,
    )
    await client.attach([bootstrap])
    (directory / name).mkdir()
    certificates = UserCertificates(directory / name)
    certificates.save(f"{name}@{domain}", await enrol_user(identity, key, name))
    stack = build_sip_stack(_adaptor_config(domain), client, reactor, None, None, "127.0.0.1")
    service = SipService(stack, reactor, freeze_gc=False, user_certificates=certificates)
    service.startService()
    client.attachment_observers.append(lambda peer: _republish(stack.registrar))
    transport = SipTransport(as_udp_reactor(reactor))
    await transport.listen("udp:0:interface=127.0.0.1")
    assert service.advertised is not None
    phone = SimpleUserAgent(
        f"sip:{name}@{domain}", None, transport, Hop("UDP", *service.advertised), reactor
    )
    return _ThinClient(name, client, service, phone)


def _republish(registrar: Registrar) -> None:
    """After a re-attachment, the client stores its phone's registration again (as the role does)."""
    registrar.republish()


async def _call(
    caller: _ThinClient, callee: _ThinClient, names: dict[str, str]
) -> tuple[float, str]:
    """A call from one phone to the other; its set-up time (ms) and signalling path."""
    started = time.monotonic()
    dialog: Dialog = await caller.phone.call(str(callee.phone.aor))
    setup_ms = (time.monotonic() - started) * 1000.0
    path = " -> ".join(
        names.get(f"{getattr(r.uri, 'host', '')}:{getattr(r.uri, 'port', '')}", "?")
        for r in dialog.route_set
    )
    await caller.phone.hang_up(dialog)
    return setup_ms, path


async def run_client_demo(
    reactor: IRoleReactor,
    nodes: list[OverlayNode],
    ports: list[IListeningPort],
    trust: TrustPolicy,
    say: Callable[[str], None],
    enrol_client: EnrolClient,
    enrol_user: EnrolUser,
) -> dict[str, Any]:
    """
    Run alice's and bob's thin clients, call, kill bob's peer, call again.

    The killed peer is removed from ``nodes`` and ``ports`` (it is gone).
    :returns: the figures for the demo's last line.
    """
    bootstrap = f"tcp:127.0.0.1:{nodes[0].advertised_port}"
    clients: list[_ThinClient] = []
    with tempfile.TemporaryDirectory(prefix="p2psip-demo-clients-") as scratch:
        try:
            for name in CLIENT_USERS:
                clients.append(
                    await _start_client(
                        reactor,
                        name,
                        Path(scratch),
                        bootstrap,
                        nodes,
                        trust,
                        enrol_client,
                        enrol_user,
                    )
                )
            alice, bob = clients
            say("\nThin clients: alice and bob each run one (a RELOAD client, not in the ring):")
            for each in clients:
                peer = each.client.attachment_peer or 0
                listed = [n for n in nodes if each.client.node_id in n.topology.known_peers()]
                say(
                    f"  {each.name:<5} client {id_short(each.client.node_id)} attached to peer "
                    f"{id_short(peer)} (the owner of its Node-ID); in {len(listed)} peers' tables; "
                    f"SIP adaptor {each.service.status()['address']}"
                )
            for each in clients:
                await each.phone.register()
            aor = str(bob.phone.aor)
            found = await alice.client.lookup(registration_resource_name(aor))
            route = " -> ".join(id_short(hop) for hop in found.route)
            say(
                f"  both phones registered at their own client; bob's registration is stored at "
                f"{id_short(found.responsible)}, found from alice's client by route {route} "
                f"({found.hops} hops)"
            )
            names = {c.service.status()["address"]: f"{c.name}'s client" for c in clients}
            first_ms, path = await _call(alice, bob, names)
            say(f"\nalice calls bob: INVITE -> 200 OK in {first_ms:.1f} ms")
            say(
                f"  signalling path: alice -> {path} -> bob (adaptor to adaptor, found by AppAttach)"
            )

            victim_id = bob.client.attachment_peer
            [victim] = [n for n in nodes if n.node_id == victim_id]
            index = nodes.index(victim)
            port = ports.pop(index)
            nodes.remove(victim)
            killed = time.monotonic()
            # As SIGKILL would: the node's connections close, it says no Leave.
            victim.stop()
            stopped = port.stopListening()
            if stopped is not None:
                await stopped
            say(f"\nKilling bob's attachment peer {id_short(victim.node_id)} (no Leave) ...")
            while bob.client.attachment_peer in (None, victim.node_id):
                if time.monotonic() - killed > 30:
                    raise SystemExit("bob's client did not attach to another peer within 30 s")
                await task.deferLater(reactor, 0.02, lambda: None)
            reattach_ms = (bob.client.attacher.last_reattach_seconds or 0.0) * 1000.0
            say(
                f"  bob's client attached to peer {id_short(bob.client.attachment_peer or 0)} "
                f"{reattach_ms:.0f} ms after losing its peer, and stored bob's registration again"
            )
            # The peers around the dead one notice it too; let the ring repair.
            await task.deferLater(reactor, 1.5, lambda: None)
            second_ms, path = await _call(alice, bob, names)
            recovered_ms = (time.monotonic() - killed) * 1000.0
            say(
                f"  alice calls bob again: 200 OK in {second_ms:.1f} ms "
                f"({recovered_ms:.0f} ms after the kill)"
            )
            return {
                "client_call_ms": first_ms,
                "reattach_ms": reattach_ms,
                "second_call_ms": second_ms,
            }
        finally:
            for each in clients:
                each.phone.stop()
                await each.transport.stop()
                stopped_service = each.service.stopService()
                if stopped_service is not None:
                    await stopped_service
                each.client.stop()


__all__ = ["run_client_demo", "CLIENT_USERS"]

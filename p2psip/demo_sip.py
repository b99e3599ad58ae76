"""
The SIP part of ``make demo``: two phones, two super-nodes, one call.

Two nodes of the demo ring become SIP super-nodes (the same
:class:`~p2psip.roles.sip_service.SipService` the peer role runs, with
Digest authentication and a users file in a temporary directory).  Alice's
phone registers at one, Bob's at the other, both with the project's own
minimal user agent over loopback UDP; Bob calls Alice.  The demo prints
where Alice's registration is stored in the DHT, the route of the lookup,
the route of the call and how long call setup (INVITE to 200) took.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from twisted.internet.defer import Deferred

from p2psip.util.reactor import IRoleReactor
from p2psip.enrolment.user_certificates import UserCertificates
from p2psip.overlay.node import OverlayNode
from p2psip.roles.ring_options import SipConfig
from p2psip.roles.sip_service import SipService, build_sip_stack, load_or_create_secret
from p2psip.sip.transaction import Hop
from p2psip.sip.transport import SipTransport
from p2psip.sip.uri import URI, SipURI
from p2psip.sip.user_agent import SimpleUserAgent
from p2psip.sip.users import UsersFile
from p2psip.usages.sip import SIP_REGISTRATION_KIND, registration_resource_name
from p2psip.util.ids import id_short
from p2psip.util.reactor import as_udp_reactor

PASSWORDS = {"alice": "alice-demo-password", "bob": "bob-demo-password"}


def _sip_config(domain: str, users: Path) -> SipConfig:
    return SipConfig(
        domain=domain,
        listeners=("udp:0:interface=127.0.0.1",),
        users_path=users,
        digest_algorithms=("SHA-256", "MD5"),
        advertise=None,
        trusted_network=False,
    )


def _route_name(uri: URI, names: dict[str, str]) -> str:
    """Which super-node a Record-Route URI names (by its host:port), or ``?``."""
    if not isinstance(uri, SipURI):
        return "?"
    return names.get(f"{uri.host}:{uri.port}", "?")


#: Gets a user's certificate bound to a super-node (``p2psip enrol --user``).
UserCertificateSource = Callable[[OverlayNode, str], Awaitable[bytes]]


def run_sip_demo(
    reactor: IRoleReactor,
    nodes: list[OverlayNode],
    say: Callable[[str], None],
    user_certificate: UserCertificateSource | None = None,
) -> Deferred[float]:
    """
    Register Alice and Bob at two super-nodes of ``nodes`` and have Bob call Alice.

    With ``user_certificate`` each super-node first gets its user's
    certificate from the overlay CA, bound to its Node-ID, and keeps it in
    its data directory's ``user-certs/`` as a super-node does.  ``reactor``
    must have UDP sockets as well (the phones and the super-nodes' SIP
    listeners).  :returns: call setup time (INVITE to 200) in milliseconds.
    """
    return Deferred.fromCoroutine(_run_sip_demo(reactor, nodes, say, user_certificate))


async def _run_sip_demo(
    reactor: IRoleReactor,
    nodes: list[OverlayNode],
    say: Callable[[str], None],
    user_certificate: UserCertificateSource | None,
) -> float:
    udp = as_udp_reactor(reactor)
    domain = nodes[0].config.overlay_name
    aor = {name: f"sip:{name}@{domain}" for name in PASSWORDS}
    with tempfile.TemporaryDirectory(prefix="p2psip-demo-") as scratch:
        directory = Path(scratch)
        users = UsersFile.load(directory / "users", missing_ok=True)
        for name, password in PASSWORDS.items():
            users.set_password(aor[name], password)
        users.save()
        alice_node, bob_node = nodes[1], nodes[len(nodes) // 2 + 1]
        services: list[SipService] = []
        agents: dict[str, SimpleUserAgent] = {}
        transports: list[SipTransport] = []
        bound: list[str] = []
        try:
            for label, node in (("alice", alice_node), ("bob", bob_node)):
                (directory / label).mkdir()
                if user_certificate is not None:
                    certificate = await user_certificate(node, label)
                    UserCertificates(directory / label).save(f"{label}@{domain}", certificate)
                    bound.append(
                        f"  {label}'s user certificate from the CA is bound to super-node "
                        f"{id_short(node.local_node_id)}"
                    )
                stack = build_sip_stack(
                    _sip_config(domain, users.path),
                    node,
                    reactor,
                    users,
                    load_or_create_secret(directory / label),
                    node.advertised_host,
                )
                service = SipService(
                    stack,
                    reactor,
                    freeze_gc=False,
                    user_certificates=(
                        UserCertificates(directory / label)
                        if user_certificate is not None
                        else None
                    ),
                )
                service.startService()
                services.append(service)
                transport = SipTransport(udp)
                transports.append(transport)
                await transport.listen("udp:0:interface=127.0.0.1")
                assert service.advertised is not None
                agents[label] = SimpleUserAgent(
                    aor[label],
                    PASSWORDS[label],
                    transport,
                    Hop("UDP", *service.advertised),
                    reactor,
                )
            say("\nSIP: two super-nodes with Digest authentication, two phones on 127.0.0.1:")
            for line in bound:
                say(line)
            for label, service in zip(("alice", "bob"), services):
                await agents[label].register()
                say(
                    f"  {label:<5} registered at super-node {id_short(service.stack.node.local_node_id)} "
                    f"(SIP {service.status()['address']})"
                )

            # Registrations live under the user's name (RFC 7904 USER-NODE-MATCH).
            alice_resource = registration_resource_name(aor["alice"])
            found = await bob_node.lookup(alice_resource)
            stored = await bob_node.get_dictionary(alice_resource, SIP_REGISTRATION_KIND)
            say(
                f"\nAlice's registration ({aor['alice']}, {len(stored)} entry) is stored at "
                f"{id_short(found.responsible)}, with copies on its next successors;"
            )
            route = " -> ".join(id_short(hop) for hop in found.route)
            say(f"  Bob's super-node finds it by route {route} ({found.hops} hops)")

            started = time.monotonic()
            dialog = await agents["bob"].call(aor["alice"])
            setup_ms = (time.monotonic() - started) * 1000.0
            names = {s.status()["address"]: id_short(s.stack.node.local_node_id) for s in services}
            hops = " -> ".join(f"super-node {_route_name(r.uri, names)}" for r in dialog.route_set)
            say(f"\nBob calls Alice: INVITE -> 200 OK in {setup_ms:.1f} ms")
            say(f"  signalling path: bob -> {hops} -> alice ({dialog.remote_target})")
            await agents["bob"].hang_up(dialog)
            say(
                f"  ACK and BYE took the same path; Alice answered {agents['alice'].calls_answered} call, "
                f"got {agents['alice'].byes_received} BYE"
            )
            # Unregister (Expires: 0): the thin clients that follow serve these users.
            for agent in agents.values():
                await agent.register(0)
            return setup_ms
        finally:
            for agent in agents.values():
                agent.stop()
            for transport in transports:
                await transport.stop()
            for service in services:
                stopped = service.stopService()
                if stopped is not None:
                    await stopped


__all__ = ["run_sip_demo"]

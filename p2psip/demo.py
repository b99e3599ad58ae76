"""
``make demo``: the whole system on loopback, as separate role processes.

Starts, each as ``twistd -n`` with its own data directory (a temporary
one) and ports the OS hands out on 127.0.0.1:

* a mediator (``p2psip-mediator``), which every ring member logs in to;
* a bootstrap (``p2psip-bootstrap``), which holds the overlay CA;
* four SIP super-nodes (``p2psip-peer --sip``), two of them with a media
  relay (``--media-relay always``) that they list in the overlay;
* alice's and bob's thin clients (``p2psip-client --media-relay always``),
  RELOAD clients attached to the peer that owns their Node-ID, each with
  its loopback SIP adaptor.

Then alice's and bob's phones (:class:`~p2psip.sip.user_agent.SimpleUserAgent`
in this process) register at their own client, which stores the
registration in the overlay; alice calls bob: her client looks bob up,
sends the INVITE through a super-node's relay (found in the overlay, the
client has no relay ports) which rewrites the SDP, and on to bob's
client, found by AppAttach.  RTP flows for a second each way through the
relay (:mod:`p2psip.demo_media`), counted by the relay itself.  Then bob's
attachment peer is SIGKILLed by its pid; bob's client attaches to the next
peer and stores his registration again, and alice calls until the call
path works again (timed).  Everything is stopped (SIGTERM: the peers leave
the ring) and the account printed on the way.

The CA places every node (:class:`~p2psip.demo_roles.DemoCA`): the top
byte of each Node-ID is fixed, so each run attaches, relays and kills the
same roles; the rest is random.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from p2psip.demo_media import RtpEndpoint, sdp_destination, stream_both_ways
from p2psip.demo_roles import (
    DemoCA,
    RoleProcess,
    free_port_range,
    free_udp_and_tcp_port,
    wait_for_status,
)
from p2psip.nat.control_auth import derive_client_secret
from p2psip.sip.transaction import Hop
from p2psip.sip.transport import SipTransport
from p2psip.sip.user_agent import Dialog, SimpleUserAgent
from p2psip.testing import free_port
from p2psip.util.ids import id_hex
from p2psip.util.reactor import IRoleReactor, as_role_reactor, as_udp_reactor

OVERLAY = "demo.p2psip.test"
#: Fast timers: a dead peer is noticed within seconds.
TIMERS = ["--update-interval", "1", "--ping-interval", "1", "--request-timeout", "3"]
#: The ring: name, top byte of the Node-ID, runs a media relay.
SUPER_NODES = (
    ("super-node 1", 0x40, False),
    ("super-node 2", 0x80, False),
    ("super-node 3", 0xB0, True),
    ("super-node 4", 0xE0, True),
)
BOOTSTRAP_BYTE = 0x08
#: Thin clients: user and top byte (alice's is owned by super-node 1, bob's by super-node 2).
CLIENTS = (("alice", 0x30), ("bob", 0x70))
#: Seconds of RTP each way.
MEDIA_SECONDS = 1.0
#: The whole demo's deadline, and one call attempt's.
DEADLINE_SECONDS = 120.0
CALL_ATTEMPT_SECONDS = 6.0


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def placed_id(top_byte: int) -> int:
    """A Node-ID whose top byte is ``top_byte`` (its place on the ring), the rest random."""
    return (top_byte << 120) | int.from_bytes(os.urandom(15), "big")


def converged(statuses: list[dict[str, Any]]) -> bool:
    """Every member joined, with the true predecessor and successor."""
    ring = sorted(status["node_id"] for status in statuses)
    for status in statuses:
        if status.get("state") != "joined":
            return False
        if not status["predecessors"] or not status["successors"]:
            return False
        index = ring.index(status["node_id"])
        if status["predecessors"][0]["node_id"] != ring[index - 1]:
            return False
        if status["successors"][0]["node_id"] != ring[(index + 1) % len(ring)]:
            return False
    return True


class Phone:
    """A user's phone in this process: SIP user agent and RTP socket, at a thin client's adaptor."""

    def __init__(self, user: str, agent: SimpleUserAgent, rtp: RtpEndpoint) -> None:
        self.user = user
        self.agent = agent
        self.rtp = rtp

    @classmethod
    async def start(cls, reactor: IRoleReactor, user: str, adaptor_port: int) -> Phone:
        transport = SipTransport(as_udp_reactor(reactor))
        await transport.listen("udp:0:interface=127.0.0.1")
        rtp = RtpEndpoint(reactor)
        media_port = rtp.listen(as_udp_reactor(reactor))
        agent = SimpleUserAgent(
            f"sip:{user}@{OVERLAY}",
            None,
            transport,
            Hop("UDP", "127.0.0.1", adaptor_port),
            reactor,
            media_port=media_port,
        )
        return cls(user, agent, rtp)

    async def stop(self) -> None:
        self.agent.stop()
        self.rtp.close()
        await self.agent.transport.stop()


class Demo:
    """The processes of one run, what the account names them by, and the steps."""

    def __init__(self, reactor: IRoleReactor, directory: Path) -> None:
        self.reactor = reactor
        self.directory = directory
        self.started = reactor.seconds()
        self.processes: list[RoleProcess] = []
        #: Display names by Node-ID (hex) and by SIP address (host:port).
        self.names: dict[str, str] = {}
        self.sip_names: dict[str, str] = {}
        self.phones: list[Phone] = []
        #: The super-nodes with a media relay.
        self.relays: list[RoleProcess] = []

    def name_of(self, node_id: str | None) -> str:
        if node_id is None:
            return "nobody"
        return f"{self.names.get(node_id, '?')} ({node_id[:8]})"

    def elapsed(self) -> float:
        return float(self.reactor.seconds() - self.started)

    def start(self, name: str, role: str, arguments: list[str]) -> RoleProcess:
        process = RoleProcess(name, role, self.directory / name.replace(" ", "-"), arguments)
        self.processes.append(process)
        return process

    async def status(self, process: RoleProcess) -> dict[str, Any]:
        return await wait_for_status(self.reactor, process, lambda s: True, 10, "/status")

    # -- the steps -------------------------------------------------------------

    async def run(self) -> None:
        secret = os.urandom(16).hex()
        mediator = self.start_mediator(secret)
        ca = DemoCA(self.directory / "bootstrap" / "data", OVERLAY, self.reactor.seconds())
        say(
            f"Starting on 127.0.0.1: a mediator, a bootstrap (the overlay CA), "
            f"{len(SUPER_NODES)} SIP super-nodes and thin clients for "
            f"{' and '.join(user for user, _ in CLIENTS)}, each a twistd process ..."
        )
        members, entry = await self.start_ring(ca, secret, mediator)
        # After the ring: each client attaches to its owner at once, and
        # reads a list of relays in which every relay has published itself.
        clients = await self.start_clients(ca, entry)
        await self.show_ring(members, clients, mediator)

        alice_client, bob_client = clients
        alice, bob = [
            await Phone.start(self.reactor, client.name.split("'")[0], client.sip_port)
            for client in clients
        ]
        self.phones = [alice, bob]
        for phone in self.phones:
            await phone.agent.register()
        await self.show_records(alice_client, bob_client, members)

        setup_ms, dialog = await self.call(alice, bob, "alice calls bob")
        relayed = await self.media(alice, bob, dialog, MEDIA_SECONDS)
        await alice.agent.hang_up(dialog)

        victim_id = (await self.status(bob_client))["attachment"]["peer"]
        [victim] = [m for m in members if m.node_id == victim_id]
        recovery_ms, reattach_ms = await self.kill_and_recover(victim, alice, bob, bob_client)
        members.remove(victim)
        await self.show_client_status(clients)

        say("\nStopping everything (SIGTERM by pid: the clients detach, the peers leave) ...")
        await self.stop_all()
        say(
            f"\nDone: a ring of {len(SUPER_NODES) + 1} ({len(SUPER_NODES)} SIP super-nodes), "
            f"a mediator, 2 thin clients; call set up in {setup_ms:.1f} ms; "
            f"{relayed[0]} + {relayed[1]} RTP packets relayed; "
            f"after {victim.name} was killed bob's client re-attached in {reattach_ms:.0f} ms "
            f"and the call path was back in {recovery_ms:.0f} ms; {self.elapsed():.1f} s in all."
        )

    async def start_ring(
        self, ca: DemoCA, secret: str, mediator: RoleProcess
    ) -> tuple[list[RoleProcess], str]:
        """The bootstrap, then the super-nodes joining through it; the members and its endpoint."""
        overlay_port = free_port()
        bootstrap = self.start_ring_member(
            "bootstrap",
            "p2psip-bootstrap",
            placed_id(BOOTSTRAP_BYTE),
            ca,
            secret,
            mediator,
            overlay_port,
            ["--enrol-listen", f"ssl:{free_port()}:interface=127.0.0.1"],
        )
        await wait_for_status(
            self.reactor, bootstrap, lambda s: s.get("state") == "alone", 30, "the bootstrap"
        )
        entry = f"tcp:127.0.0.1:{overlay_port}"
        members = [bootstrap]
        for name, top, relay in SUPER_NODES:
            sip_port = free_udp_and_tcp_port()
            arguments = [
                "--bootstrap",
                entry,
                "--sip",
                f"udp:{sip_port}:interface=127.0.0.1",
                "--sip",
                f"tcp:{sip_port}:interface=127.0.0.1",
                "--sip-trusted-network",
            ]
            if relay:
                low, high = free_port_range(8)
                arguments += ["--media-relay", "always", "--media-ports", f"{low}-{high}"]
            member = self.start_ring_member(
                name, "p2psip-peer", placed_id(top), ca, secret, mediator, free_port(), arguments
            )
            self.sip_names[f"127.0.0.1:{sip_port}"] = name
            members.append(member)
            if relay:
                self.relays.append(member)
        await self.wait_ring(members)
        return members, entry

    async def start_clients(self, ca: DemoCA, entry: str) -> list[RoleProcess]:
        """alice's and bob's clients, attached, alice's knowing every relay."""
        clients = [self.start_client(user, top, ca, entry) for user, top in CLIENTS]
        for client in clients:
            await wait_for_status(
                self.reactor,
                client,
                lambda s: s.get("state") == "attached",
                30,
                f"{client.name} to attach",
            )
        await wait_for_status(
            self.reactor,
            clients[0],
            lambda s: len(s["sip"]["media_relay"]["overlay"]["other_relays"]) == len(self.relays),
            20,
            "alice's client to read the overlay's list of media relays",
        )
        return clients

    def start_mediator(self, secret: str) -> RoleProcess:
        control = free_port()
        self.mediator_endpoint = f"tcp:127.0.0.1:{control}"
        return self.start(
            "mediator",
            "p2psip-mediator",
            [
                "--secret",
                secret,
                "--control",
                f"tcp:{control}:interface=127.0.0.1",
                "--stun",
                f"tcp:{free_port()}:interface=127.0.0.1",
                "--stun",
                f"udp:{free_udp_and_tcp_port()}:interface=127.0.0.1",
            ],
        )

    def start_ring_member(
        self,
        name: str,
        role: str,
        node_id: int,
        ca: DemoCA,
        secret: str,
        mediator: RoleProcess,
        overlay_port: int,
        arguments: list[str],
    ) -> RoleProcess:
        data = self.directory / name.replace(" ", "-") / "data"
        ca.issue_node(data, node_id)
        node = id_hex(node_id)
        process = self.start(
            name,
            role,
            [
                "--overlay",
                f"tcp:{overlay_port}:interface=127.0.0.1",
                "--data-dir",
                str(data),
                "--overlay-name",
                OVERLAY,
                *TIMERS,
                "--mediator",
                self.mediator_endpoint,
                "--mediator-secret",
                derive_client_secret(secret.encode(), node).decode("ascii"),
                *arguments,
            ],
        )
        process.node_id = node
        self.names[node] = name
        return process

    def start_client(self, user: str, top: int, ca: DemoCA, entry: str) -> RoleProcess:
        name = f"{user}'s client"
        data = self.directory / f"client-{user}" / "data"
        node_id = placed_id(top)
        ca.issue_node(data, node_id, (f"{user}@{OVERLAY}",))
        sip_port = free_udp_and_tcp_port()
        process = RoleProcess(
            name,
            "p2psip-client",
            self.directory / f"client-{user}",
            [
                "--bootstrap",
                entry,
                "--data-dir",
                str(data),
                "--overlay-name",
                OVERLAY,
                *TIMERS,
                "--sip",
                f"udp:{sip_port}:interface=127.0.0.1",
                "--sip",
                f"tcp:{sip_port}:interface=127.0.0.1",
                "--media-relay",
                "always",
            ],
        )
        self.processes.append(process)
        process.sip_port = sip_port
        process.node_id = id_hex(node_id)
        self.names[id_hex(node_id)] = name
        self.sip_names[f"127.0.0.1:{sip_port}"] = name
        return process

    async def wait_ring(self, members: list[RoleProcess]) -> None:
        for member in members:
            await wait_for_status(
                self.reactor, member, lambda s: s.get("state") == "joined", 40, "a peer to join"
            )
        waited = self.reactor.seconds()
        while True:
            statuses = [await self.status(member) for member in members]
            if converged(statuses):
                return
            if self.reactor.seconds() - waited > 60:
                raise SystemExit("the ring did not converge within 60 s")
            await task.deferLater(self.reactor, 0.2, lambda: None)

    async def show_ring(
        self,
        members: list[RoleProcess],
        clients: list[RoleProcess],
        mediator: RoleProcess,
    ) -> None:
        say(f"\nThe ring, clockwise (up in {self.elapsed():.1f} s):")
        statuses = {m.name: await self.status(m) for m in members}
        for member in sorted(members, key=lambda m: m.node_id):
            status = statuses[member.name]
            sip = status.get("sip")
            relay = (sip or {}).get("media_relay", {})
            parts = [f"  {status['node_id'][:8]}  {member.name:<13} pid {member.pid:<7}"]
            parts.append(f"overlay {status['address']}")
            if sip is not None:
                parts.append(f"SIP {sip['address']}")
            if relay.get("policy", "never") != "never":
                parts.append(f"media relay {relay['ports']}")
            if status["clients"]:
                parts.append("clients: " + ", ".join(self.name_of(c) for c in status["clients"]))
            mediator_state = status.get("mediator", {})
            parts.append("at the mediator" if mediator_state.get("registered") else "")
            say("  ".join(p for p in parts if p))
        mediator_status = await self.status(mediator)
        say(
            f"  mediator pid {mediator.pid}: {mediator_status['clients_online']} ring members "
            "logged in (they would link through it from behind NATs)"
        )
        say("\nThin clients (RELOAD clients: attached to one peer, in no peer's ring tables):")
        listed = {
            peer["node_id"]
            for status in statuses.values()
            for peer in status["predecessors"] + status["successors"]
        }
        for client in clients:
            status = await self.status(client)
            say(
                f"  {status['node_id'][:8]}  {client.name:<14} pid {client.pid:<7} attached to "
                f"{self.name_of(status['attachment']['peer'])}, the owner of its Node-ID; "
                f"in ring tables: {'yes' if status['node_id'] in listed else 'no'}; "
                f"SIP adaptor {status['sip']['address']}"
            )
        alice_relays = (await self.status(clients[0]))["sip"]["media_relay"]["overlay"]
        say(
            "  media relays in the overlay's list: "
            + ", ".join(
                f"{self.name_of(self.node_by_prefix(r['node']))} {r['free_pairs']} free"
                for r in alice_relays["other_relays"]
            )
        )

    def node_by_prefix(self, prefix: str) -> str | None:
        return next((n for n in self.names if n.startswith(prefix)), None)

    async def show_records(
        self, alice_client: RoleProcess, bob_client: RoleProcess, members: list[RoleProcess]
    ) -> None:
        say("\nalice's and bob's phones registered at their own client; their records:")
        successors = {
            (status := await self.status(m))["node_id"]: [
                p["node_id"] for p in status["successors"]
            ]
            for m in members
        }
        for user, asker in (("alice", bob_client), ("bob", alice_client)):
            aor = f"sip:{user}@{OVERLAY}"
            found = await self.wait_registration(asker, aor)
            stored = found["stored_at"]
            replicas = successors.get(stored, [])[:2]
            served = [self.name_of(b["served_by"]) for b in found["bindings"]]
            route = " -> ".join(self.name_of(hop) for hop in found["route"])
            say(
                f"  {aor}: stored at {self.name_of(stored)}, replicas at "
                f"{', '.join(self.name_of(r) for r in replicas)}; served by {', '.join(served)}"
            )
            say(
                f"      looked up from {asker.name}: route {route} "
                f"({found['hops']} hop{'s' if found['hops'] != 1 else ''})"
            )

    async def wait_registration(self, asker: RoleProcess, aor: str) -> dict[str, Any]:
        waited = self.reactor.seconds()
        while True:
            found: dict[str, Any] = await asker.call("get", aor)
            if found.get("found"):
                return found
            if self.reactor.seconds() - waited > 15:
                raise SystemExit(f"{aor}'s registration was not found from {asker.name}")
            await task.deferLater(self.reactor, 0.2, lambda: None)

    async def call(self, caller: Phone, callee: Phone, what: str) -> tuple[float, Dialog]:
        dialog = await caller.agent.call(str(callee.agent.aor))
        setup_ms = dialog.setup_seconds * 1000.0
        hops = [
            self.sip_names.get(
                f"{getattr(r.uri, 'host', '')}:{getattr(r.uri, 'port', '')}", str(r.uri)
            )
            for r in dialog.route_set
        ]
        say(f"\n{what}: INVITE -> 200 OK in {setup_ms:.1f} ms")
        say(f"  signalling path: {caller.user} -> {' -> '.join(hops)} -> {callee.user}")
        return setup_ms, dialog

    async def media(
        self,
        caller: Phone,
        callee: Phone,
        dialog: Dialog,
        seconds: float,
    ) -> tuple[int, int]:
        """RTP both ways for ``seconds``; the packets the relay counted each way."""
        relays = [r for r in self.relays if r.running]
        before = {r.name: await self.relay_totals(r) for r in relays}
        caller_sends_to = sdp_destination(dialog.remote_sdp)
        callee_sends_to = sdp_destination(callee.agent.offers_received[-1])
        sent = (caller.rtp.sent, callee.rtp.sent)
        received = (caller.rtp.received, callee.rtp.received)
        await stream_both_ways(
            self.reactor, caller.rtp, caller_sends_to, callee.rtp, callee_sends_to, seconds
        )
        after = {r.name: await self.relay_totals(r) for r in relays}
        used = [
            (name, after[name][0] - before[name][0], after[name][1] - before[name][1])
            for name in after
            if after[name] != before[name]
        ]
        if not used:
            raise SystemExit("no relay counted the call's RTP")
        [(name, forward, backward)] = used
        say(
            f"  RTP for {seconds:g} s through {name}'s relay (the SDP of both sides points at "
            f"{caller_sends_to[0]}:{caller_sends_to[1]} and :{callee_sends_to[1]}):"
        )
        say(
            f"  relay counted {forward} packets {caller.user} -> {callee.user} and {backward} "
            f"{callee.user} -> {caller.user}; {caller.user} sent {caller.rtp.sent - sent[0]} "
            f"and got {caller.rtp.received - received[0]}, {callee.user} sent "
            f"{callee.rtp.sent - sent[1]} and got {callee.rtp.received - received[1]}"
        )
        return forward, backward

    async def relay_totals(self, relay: RoleProcess) -> tuple[int, int]:
        totals = (await self.status(relay))["sip"]["media_relay"]["totals"]
        return totals["from_callers"]["packets"], totals["from_callees"]["packets"]

    async def kill_and_recover(
        self, victim: RoleProcess, alice: Phone, bob: Phone, bob_client: RoleProcess
    ) -> tuple[float, float]:
        say(f"\nKilling bob's attachment peer, {victim.name} (SIGKILL to pid {victim.pid}) ...")
        killed = self.reactor.seconds()
        victim.kill()
        old = victim.node_id

        def moved(status: dict[str, Any]) -> bool:
            return status["state"] == "attached" and status["attachment"]["peer"] not in (
                None,
                old,
            )

        status = await wait_for_status(
            self.reactor, bob_client, moved, 30, "bob's client to re-attach", poll_seconds=0.05
        )
        reattach_ms = (status["attachment"]["last_reattach_seconds"] or 0.0) * 1000.0
        say(
            f"  bob's client attached to {self.name_of(status['attachment']['peer'])} "
            f"{reattach_ms:.0f} ms after losing its peer, and stored bob's registration again"
        )
        attempts = 0
        while True:
            attempts += 1
            try:
                attempt: Deferred[Dialog] = alice.agent.call(str(bob.agent.aor))
                attempt.addTimeout(CALL_ATTEMPT_SECONDS, self.reactor)
                dialog = await attempt
                break
            except Exception as error:
                if self.reactor.seconds() - killed > 40:
                    raise SystemExit(f"the call path did not recover within 40 s: {error}")
                await task.deferLater(self.reactor, 0.2, lambda: None)
        recovery_ms = (self.reactor.seconds() - killed) * 1000.0
        say(
            f"  alice calls bob again: 200 OK in {dialog.setup_seconds * 1000.0:.1f} ms, "
            f"{recovery_ms:.0f} ms after the kill ({attempts} attempt"
            f"{'s' if attempts != 1 else ''})"
        )
        await self.media(alice, bob, dialog, 0.5)
        await alice.agent.hang_up(dialog)
        return recovery_ms, reattach_ms

    async def show_client_status(self, clients: list[RoleProcess]) -> None:
        say("\nThe clients' /status (peer, registration, calls):")
        for client in clients:
            status = await self.status(client)
            registered = status["sip"]["registered"]
            calls = status["calls"]
            say(
                f"  {client.name:<14} peer {self.name_of(status['attachment']['peer'])}, "
                f"{status['attachment']['attachments']} attachment(s); registered "
                f"{', '.join(r['aor'] for r in registered) or 'nobody'}; calls "
                f"{calls['started']} started, {calls['answered']} answered, "
                f"{calls['failed']} failed"
            )

    async def stop_all(self) -> None:
        for phone in self.phones:
            await phone.stop()
        self.phones = []
        for process in reversed(self.processes):
            process.terminate()
        for process in reversed(self.processes):
            process.wait_exit(15.0)

    def kill_all(self) -> None:
        for process in self.processes:
            process.kill()


async def main(reactor: IReactorTime) -> None:
    with tempfile.TemporaryDirectory(prefix="p2psip-demo-") as scratch:
        demo = Demo(as_role_reactor(reactor), Path(scratch))
        timeout = reactor.callLater(DEADLINE_SECONDS, demo.kill_all)
        try:
            await demo.run()
        finally:
            if timeout.active():
                timeout.cancel()
            for phone in demo.phones:
                await phone.stop()
            demo.kill_all()


def run() -> None:
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor)))


if __name__ == "__main__":
    run()

"""
A rogue member of an enrolled ring, at the level of messages: signatures,
replays, answers, replicas, hearsay and floods.  (What it may store is
``test_rogue_peer.py``'s subject.)

Every node of the ring holds a certificate from the ring's CA and trusts
only that CA (``OverlayRootTrust``).  The rogue is one of them: a valid
certificate for its own Node-ID, a real node, joined like any other; what
makes it a rogue is what the tests make it send.  Each test replays,
re-addresses, forges or floods, and checks that the honest nodes refuse
it, count it, and keep their tables and data.

Ring positions: ``victim`` is some node; the rogue is the victim's fourth
successor (the last of its successor list), so the victim routes through
the rogue to ``owner``, the fifth node after the victim, whose range holds
alice's resource.  With ten nodes and tables of four successors and four
predecessors, the owner is the only node the victim does not list.
"""

from __future__ import annotations

from typing import Any

from attrs import evolve
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from p2psip.enrolment.authority import OverlayAuthority
from p2psip.overlay import bodies
from p2psip.overlay.errors import RequestFailed
from p2psip.overlay.kinds import DATA
from p2psip.overlay.links import Link
from p2psip.overlay.message import (
    Destination,
    ErrorCode,
    MessageCode,
    decode_message,
    peek_code,
    peek_header,
    replace_header,
)
from p2psip.overlay.messaging import Reply
from p2psip.overlay.node import OverlayNode
from p2psip.testing import TEST_CERTIFICATE_EPOCH
from p2psip.util.ids import between_right_inclusive, resource_id
from p2psip.util.token_bucket import TokenBuckets
from tests.overlay.ringsim import PORT, SIMULATION_CONFIG, RingSimulation

OVERLAY = "rogue.test"
CONFIG = evolve(SIMULATION_CONFIG, overlay_name=OVERLAY)
PEERS = 10
ALICE_CONTACT = b"sip:alice@192.0.2.10"


def name_in(start: int, end: int, prefix: str) -> str:
    """A resource name whose Resource-ID lies in (start, end]."""
    for index in range(1_000_000):
        name = f"{prefix}-{index}"
        if between_right_inclusive(resource_id(name), start, end):
            return name
    raise AssertionError("no name found for that arc")


class RogueRing:
    """An enrolled ring of ten, its victim, its rogue, alice's owner, and what the rogue overhears."""

    def __init__(self, test: SynchronousTestCase, seed: int = 5) -> None:
        authority = OverlayAuthority.create(OVERLAY, TEST_CERTIFICATE_EPOCH)
        self.sim = sim = RingSimulation(CONFIG, seed=seed, authority=authority)
        test.addCleanup(sim.stop_all)
        sim.grow(PEERS)
        sim.run_until(sim.consistent, 120)
        sim.run(2 * CONFIG.update_interval_seconds)
        ring = sim.sorted_ids()
        self.victim = self.node(ring[0])
        self.rogue = self.node(ring[4])
        self.owner = self.node(ring[5])
        assert self.victim.topology.successors[-1] == self.rogue.node_id
        self.alice = name_in(self.rogue.node_id, self.owner.node_id, "alice")
        self.alice_id = resource_id(self.alice)
        sim.wait(self.victim.put(self.alice, ALICE_CONTACT))
        #: Every message delivered to the rogue, as (link, bytes).
        self.overheard: list[tuple[Link, bytes]] = []
        listen = self.rogue.message_received

        def overhear(link: Link, data: bytes) -> None:
            self.overheard.append((link, data))
            listen(link, data)

        self.rogue.message_received = overhear  # type: ignore[method-assign]
        # A round of stabilisation, so the rogue has overheard its neighbours' Updates.
        sim.run(CONFIG.update_interval_seconds + 1)

    def node(self, node_id: int) -> OverlayNode:
        return next(node for node in self.sim.live() if node.node_id == node_id)

    def overheard_from(
        self, sender: OverlayNode, code: MessageCode, to: Destination | None = None
    ) -> bytes:
        """The last message of ``code`` (for ``to``) that ``sender`` signed and the rogue received."""
        for _, data in reversed(self.overheard):
            header, message_code = peek_code(data)
            if message_code != code or (to is not None and header.destination_list[0] != to):
                continue
            message = decode_message(data)
            signer = self.rogue.certificates.identity_for(message.security.signature.identity)
            if signer is not None and signer.node_id == sender.node_id:
                return data
        raise AssertionError(f"the rogue never received a {code.name} from that node")

    def rogue_connection(self, target: OverlayNode) -> Link:
        """A fresh connection from the rogue's address to ``target``'s listener."""
        connector = self.sim.network.connector(self.rogue.advertised_host, PORT)
        d = connector.connect(self.rogue, target.advertised_host, PORT)
        self.sim.run(0.5)
        link: Link = self.sim.wait(d)
        return link

    def rogue_link_to(self, target: OverlayNode) -> Link:
        link = self.rogue.links.link_for(target.node_id)
        assert link is not None
        return link

    def rogue_request(
        self,
        target: OverlayNode,
        code: MessageCode,
        body: bytes,
        via: tuple[int, ...] = (),
        signer: OverlayNode | None = None,
    ) -> bytes:
        """A request to ``target`` signed by ``signer`` (the rogue), with the via list it likes."""
        messenger = (signer or self.rogue).messenger
        data = messenger.encode(
            code,
            body,
            (Destination.node(target.node_id),),
            messenger.transactions.new_transaction_id(),
        )
        header = peek_header(data)
        return replace_header(
            data, evolve(header, via_list=tuple(Destination.node(v) for v in via))
        )

    def answers_to_rogue(self, link: Link, transaction_id: int) -> list[Any]:
        """Decoded messages the rogue received over ``link`` for ``transaction_id``."""
        return [
            decode_message(data)
            for over, data in self.overheard
            if over is link and peek_header(data).transaction_id == transaction_id
        ]


def error_code(message: Any) -> int:
    code: int = bodies.ErrorResponse.decode(message.body).error_code
    return code


class RogueReplayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ring = RogueRing(self)
        self.sim = self.ring.sim

    def test_replayed_update_over_a_new_connection_leaves_the_table_intact(self) -> None:
        """An Update the victim sent the rogue, re-addressed to a neighbour over a new connection, takes nothing over."""
        ring = self.ring
        neighbour = ring.node(ring.victim.topology.successors[0])
        captured = ring.overheard_from(ring.victim, MessageCode.UPDATE_REQ)
        header = peek_header(captured)
        copy = replace_header(
            captured,
            evolve(header, destination_list=(Destination.node(neighbour.node_id),)),
        )
        connection = ring.rogue_connection(neighbour)
        connection.send(copy)
        for _ in range(int(2 * CONFIG.request_timeout_seconds)):
            self.sim.run(1)
            self.assertIn(ring.victim.node_id, neighbour.topology.neighbours())
            used = neighbour.links.link_for(ring.victim.node_id)
            self.assertTrue(used is not None and neighbour.links.is_confirmed(used))
        self.assertTrue(connection.closed)
        self.assertEqual(neighbour.counters["links_not_confirmed"], 1)
        self.assertTrue(self.sim.consistent())
        # The same copy again is refused as a replay before it names anything.
        again = ring.rogue_connection(neighbour)
        again.send(copy)
        self.sim.run(1)
        self.assertEqual(neighbour.counters["replayed_requests"], 1)

    def test_replayed_ping_is_answered_once(self) -> None:
        """A signed Ping sent 500 times is answered once; the copies are counted and warned about once."""
        ring = self.ring
        target = ring.victim
        link = ring.rogue_link_to(target)
        ping = ring.rogue_request(target, MessageCode.PING_REQ, bodies.PingReq().encode())
        with capturedLogs() as events:
            for _ in range(500):
                link.send(ping)
            self.sim.run(1)
        answers = ring.answers_to_rogue(link, peek_header(ping).transaction_id)
        self.assertEqual([m.code for m in answers], [MessageCode.PING_ANS])
        self.assertEqual(target.counters["replayed_requests"], 499)
        warnings = [
            e for e in events if e["log_level"] == LogLevel.warn and "replay" in formatEvent(e)
        ]
        self.assertEqual(len(warnings), 1)

    def test_readdressed_replay_of_a_forwarded_request(self) -> None:
        """A request the rogue forwarded, sent again with a new forwarding header, is refused by its target."""
        ring = self.ring
        self.sim.wait(ring.victim.lookup_id(ring.alice_id))
        captured = ring.overheard_from(
            ring.victim, MessageCode.PING_REQ, to=Destination.resource(ring.alice_id)
        )
        header = peek_header(captured)
        copy = replace_header(
            captured,
            evolve(
                header,
                ttl=header.ttl - 5,
                # As the rogue forwards it: the originator first in the via list.
                via_list=(Destination.node(ring.victim.node_id),),
                destination_list=(Destination.node(ring.owner.node_id),),
            ),
        )
        link = ring.rogue_link_to(ring.owner)
        answered = len(ring.answers_to_rogue(link, header.transaction_id))
        link.send(copy)
        self.sim.run(1)
        self.assertEqual(len(ring.answers_to_rogue(link, header.transaction_id)), answered)
        self.assertEqual(ring.owner.counters["replayed_requests"], 1)


class RogueForgeryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ring = RogueRing(self)
        self.sim = self.ring.sim

    def test_via_list_naming_another_originator(self) -> None:
        """A Store the rogue signed but whose via list names the victim as originator is dropped."""
        ring = self.ring
        entry = ring.rogue.storage._stored_data(
            ring.alice_id, DATA.kind_id, bodies.DataValue(True, b"sip:mallory@203.0.113.6"), 60
        )
        body = bodies.StoreReq(
            ring.alice_id, 0, (bodies.StoreKindData(DATA.kind_id, 0, (entry,)),)
        ).encode()
        link = ring.rogue_link_to(ring.owner)
        link.send(
            ring.rogue_request(ring.owner, MessageCode.STORE_REQ, body, via=(ring.victim.node_id,))
        )
        self.sim.run(1)
        self.assertEqual(ring.owner.counters["signer_mismatches"], 1)
        got = self.sim.wait(ring.victim.get(ring.alice))
        self.assertEqual(got.value, ALICE_CONTACT)

    def test_copy_of_anothers_request_over_the_rogues_own_link(self) -> None:
        """The victim's signed request sent over the rogue's own link is answered Error_Forbidden."""
        ring = self.ring
        captured = ring.overheard_from(ring.victim, MessageCode.UPDATE_REQ)
        target = ring.owner
        header = peek_header(captured)
        copy = replace_header(
            captured, evolve(header, destination_list=(Destination.node(target.node_id),))
        )
        link = ring.rogue_link_to(target)
        link.send(copy)
        self.sim.run(1)
        [answer] = ring.answers_to_rogue(link, header.transaction_id)
        self.assertEqual(error_code(answer), ErrorCode.FORBIDDEN)
        self.assertEqual(target.counters["signer_mismatches"], 1)

    def test_replica_store_from_a_non_holder(self) -> None:
        """A replica of alice's resource from the rogue is refused with Error_Forbidden by its holders."""
        ring = self.ring
        forged = ring.rogue.storage._stored_data(
            ring.alice_id, DATA.kind_id, bodies.DataValue(True, b"sip:mallory@203.0.113.6"), 3600
        )
        body = bodies.StoreReq(
            ring.alice_id, 1, (bodies.StoreKindData(DATA.kind_id, 7, (forged,)),)
        ).encode()
        holders = [ring.owner, ring.node(ring.owner.topology.successors[0])]
        for holder in holders:
            d = ring.rogue.messenger.request(
                Destination.node(holder.node_id), MessageCode.STORE_REQ, body
            )
            [failure] = self.sim.wait(d.addErrback(lambda f: [f]))
            self.assertIsInstance(failure.value, RequestFailed)
            self.assertEqual(failure.value.error_code, ErrorCode.FORBIDDEN)
            self.assertEqual(holder.counters["replicas_refused"], 1)
        for node in self.sim.live():
            got = self.sim.wait(node.get(ring.alice))
            self.assertEqual(got.value, ALICE_CONTACT)

    def test_forged_fetch_answer_from_a_node_on_the_path(self) -> None:
        """The rogue answers the victim's Fetch with its own binding: refused, and alice's comes by retry."""
        ring = self.ring
        forward = ring.rogue.messenger._forward
        forged_answers: list[int] = []

        def answer_instead(
            link: Link, data: bytes, header: Any, destination: Destination, request: bool
        ) -> None:
            _, code = peek_code(data)
            if request and code == MessageCode.FETCH_REQ and destination.value == ring.alice_id:
                forged = ring.rogue.storage._stored_data(
                    ring.alice_id,
                    DATA.kind_id,
                    bodies.DataValue(True, b"sip:mallory@203.0.113.6"),
                    3600,
                )
                answer = bodies.FetchAns(
                    (bodies.FetchKindResponse(DATA.kind_id, 9, (forged,)),)
                ).encode()
                ring.rogue.messenger.reply(
                    link, decode_message(data), Reply(MessageCode.FETCH_ANS, answer)
                )
                forged_answers.append(1)
                return
            forward(link, data, header, destination, request)

        ring.rogue.messenger._forward = answer_instead  # type: ignore[method-assign]
        got = self.sim.wait(ring.victim.get(ring.alice))
        self.assertEqual(forged_answers, [1])
        self.assertEqual(got.value, ALICE_CONTACT)
        self.assertEqual(got.responsible, ring.owner.node_id)
        self.assertEqual(ring.victim.counters["answers_not_from_owner"], 1)

    def test_bit_flips_in_body_or_signature(self) -> None:
        """A flipped bit in a signed request's body or signature makes it vanish, counted."""
        ring = self.ring
        target = ring.owner
        link = ring.rogue_link_to(target)
        sent = []
        for position in ("body", "signature"):
            data = bytearray(
                ring.rogue_request(target, MessageCode.PING_REQ, bodies.PingReq(b"x" * 16).encode())
            )
            if position == "body":
                data[data.index(b"x" * 16)] ^= 0x01
            else:
                data[-5] ^= 0x01
            sent.append(peek_header(bytes(data)).transaction_id)
            link.send(bytes(data))
        self.sim.run(1)
        for transaction_id in sent:
            self.assertEqual(ring.answers_to_rogue(link, transaction_id), [])
        self.assertEqual(target.counters["bad_signatures"], 2)


class RogueFloodTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ring = RogueRing(self)
        self.sim = self.ring.sim

    @staticmethod
    def made_up(near: int, count: int) -> tuple[int, ...]:
        """``count`` Node-IDs nobody has, just after ``near``."""
        return tuple((near + 1 + index * 2**96) % 2**128 for index in range(count))

    def made_up_update(self, near: int, count: int) -> bytes:
        made_up = self.made_up(near, count)
        return bodies.UpdateReq(
            uptime=1,
            type=bodies.ChordUpdateType.NEIGHBORS,
            predecessors=made_up[: count // 2],
            successors=made_up[count // 2 :],
            fingers=(),
        ).encode()

    def attaches_sent(self, node: OverlayNode) -> list[int]:
        sent: list[int] = []
        request = node.messenger.request

        def counting(destination: Destination, code: int, *args: Any, **kw: Any) -> Any:
            if code == MessageCode.ATTACH_REQ:
                sent.append(int(destination.value))  # type: ignore[arg-type]
            return request(destination, code, *args, **kw)

        node.messenger.request = counting  # type: ignore[method-assign]
        return sent

    def test_update_from_a_neighbour_naming_a_thousand_made_up_peers(self) -> None:
        """A neighbour's Update naming 1,000 peers that do not exist makes us try a table's worth."""
        ring = self.ring
        victim = ring.victim
        attaches = self.attaches_sent(victim)
        link = ring.rogue_link_to(victim)
        link.send(
            ring.rogue_request(
                victim, MessageCode.UPDATE_REQ, self.made_up_update(victim.node_id, 1000)
            )
        )
        self.sim.run(2 * CONFIG.request_timeout_seconds)
        table = CONFIG.successors + CONFIG.predecessors
        tried = set(attaches) & set(self.made_up(victim.node_id, 1000))
        self.assertLessEqual(len(tried), table)
        self.assertGreater(len(tried), 0)
        self.assertTrue(self.sim.consistent())

    def test_update_from_a_non_neighbour_contacts_nobody(self) -> None:
        """An Update from a peer that is not our neighbour makes us contact none of the peers it names."""
        ring = self.ring
        # The owner is the only node the victim does not list; the victim
        # is not in the owner's table either.
        assert ring.owner.node_id not in ring.victim.topology.neighbours()
        attaches = self.attaches_sent(ring.victim)
        d = ring.owner.messenger.request(
            Destination.node(ring.victim.node_id),
            MessageCode.UPDATE_REQ,
            self.made_up_update(ring.victim.node_id, 1000),
        )
        self.sim.wait(d)
        self.sim.run(2 * CONFIG.request_timeout_seconds)
        self.assertEqual(set(attaches) & set(self.made_up(ring.victim.node_id, 1000)), set())

    def test_request_flood_meets_the_signer_limit(self) -> None:
        """Past the per-signer limit (here a burst of 20) a rogue's requests are answered with Error_Forbidden."""
        ring = self.ring
        target = ring.victim
        target.messenger.signer_requests = TokenBuckets(1.0, 20)
        link = ring.rogue_link_to(target)
        pings = [
            ring.rogue_request(target, MessageCode.PING_REQ, bodies.PingReq().encode())
            for _ in range(25)
        ]
        for ping in pings:
            link.send(ping)
        self.sim.run(0.5)
        answers = []
        for ping in pings:
            [answer] = ring.answers_to_rogue(link, peek_header(ping).transaction_id)
            answers.append(answer)
        codes = [answer.code for answer in answers]
        self.assertEqual(codes, [MessageCode.PING_ANS] * 20 + [MessageCode.ERROR] * 5)
        self.assertEqual(error_code(answers[-1]), ErrorCode.FORBIDDEN)
        self.assertEqual(target.counters["requests_over_signer_limit"], 5)

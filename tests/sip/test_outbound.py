"""
SIP Outbound (RFC 5626): the registrar's flows, the instance in the
overlay, one INVITE per phone instance with failover to its other flow,
and STUN keepalives on the SIP UDP port (p2psip.sip.outbound and its hooks).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.nat import stun
from p2psip.sip.location import Binding, decode_contact_prefs, encode_contact_prefs
from p2psip.sip.message import NameAddress, Request, make_response
from p2psip.sip.proxy import NODE_PARAMETER
from p2psip.sip.outbound import (
    FLOW_TIMER_SECONDS,
    group_by_instance,
    instance_of,
    reg_id_of,
)
from p2psip.sip.response_context import FAILOVER_ANSWER_SECONDS
from p2psip.sip.transaction import Hop
from p2psip.sip.transport import SipDatagramProtocol, SipTransport
from p2psip.testing import MemoryUDPReactor

from .test_transport import FakeDatagramTransport, RecordingReceiver
from .test_proxy import (
    ADDRESS_A,
    ADDRESS_B,
    DOMAIN,
    NODE_A,
    NODE_B,
    NOW,
    Node,
    message_text,
    parse_request,
)

NODE_C = 0xCCCC0000000000000000000000000003
ADDRESS_C = ("203.0.113.3", 5060)
INSTANCE = "urn:uuid:00000000-0000-1000-8000-000a95a0e128"
AOR = f"sip:alice@{DOMAIN}"
FLOW_1 = Hop("UDP", "192.0.2.7", 40001)
FLOW_2 = Hop("UDP", "192.0.2.7", 40002)


def outbound_register(
    reg_id: int | None = 1,
    contact: str = "<sip:alice@10.0.0.5:5062>",
    supported: bool = True,
    call_id: str = "reg-1",
    cseq: int = 1,
    extra: str = "",
) -> Request:
    parameters = f';+sip.instance="<{INSTANCE}>"'
    if reg_id is not None:
        parameters += f";reg-id={reg_id}"
    lines = [
        f"REGISTER sip:{DOMAIN} SIP/2.0",
        f"Via: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bKob{call_id}{cseq};rport",
        f"From: <{AOR}>;tag=r1",
        f"To: <{AOR}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        "Max-Forwards: 70",
        f"Contact: {contact}{parameters}",
        "Expires: 600",
    ]
    if supported:
        lines.append("Supported: path, outbound")
    if extra:
        lines.append(extra)
    return parse_request(("\r\n".join(lines) + "\r\n\r\n").encode())


def three_nodes(test: SynchronousTestCase) -> tuple[Clock, Node, Node, Node]:
    clock = Clock()
    clock.advance(NOW)
    shared: dict[tuple[str, int], dict[bytes, tuple[bytes, float]]] = {}
    applications: dict[tuple[int, int], tuple[str, int]] = {}
    nodes = [
        Node(node_id, address, clock, shared, applications)
        for node_id, address in ((NODE_A, ADDRESS_A), (NODE_B, ADDRESS_B), (NODE_C, ADDRESS_C))
    ]
    for node in nodes:
        test.addCleanup(node.registrar.stop)
        test.addCleanup(node.proxy.transactions.terminate_all)
    return clock, nodes[0], nodes[1], nodes[2]


class ContactParameterTests(SynchronousTestCase):
    def test_instance_and_reg_id(self) -> None:
        """The instance loses its quotes and brackets; odd values are no instance or reg-id."""
        contact = NameAddress.parse(f'<sip:a@h>;+sip.instance="<{INSTANCE}>";reg-id=2')
        self.assertEqual((instance_of(contact), reg_id_of(contact)), (INSTANCE, 2))
        for odd in ('"<urn, bad>"', '""', '"<>"'):
            self.assertIsNone(instance_of(NameAddress.parse(f"<sip:a@h>;+sip.instance={odd}")))
        for odd in ("0", "-1", "x", "99999999999"):
            self.assertIsNone(reg_id_of(NameAddress.parse(f"<sip:a@h>;reg-id={odd}")))

    def test_group_by_instance(self) -> None:
        """One group per instance in first-seen order; items without one stand alone."""
        items = [("x", 1), (None, 2), ("y", 3), ("x", 4), (None, 5)]
        self.assertEqual(
            group_by_instance(items, lambda item: item[0]),
            [[("x", 1), ("x", 4)], [(None, 2)], [("y", 3)], [(None, 5)]],
        )

    def test_instance_travels_in_the_overlay(self) -> None:
        """The overlay's contact list carries instance and reg-id; readers drop damaged ones."""
        bindings = [
            Binding(AOR, "sip:alice@10.0.0.5", NOW + 60, 1.0, NODE_A, INSTANCE, 1),
            Binding(AOR, "sip:alice@10.0.0.6", NOW + 60, 0.5, NODE_A),
        ]
        text = encode_contact_prefs(bindings)
        self.assertEqual(decode_contact_prefs(text, AOR, NODE_A), bindings)
        damaged = text.replace(";reg-id=1", ";reg-id=0")
        self.assertEqual(decode_contact_prefs(damaged, AOR, NODE_A)[0].instance, None)


class RegistrarOutboundTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock, self.a, self.b, _c = three_nodes(self)

    def register(self, request: Request, flow: Hop = FLOW_1) -> Any:
        self.a.receive(request, flow)
        return self.a.sender.responses[-1][0]

    def test_outbound_registration(self) -> None:
        """The 200 requires outbound, gives a Flow-Timer and echoes the instance; the flow is used."""
        response = self.register(outbound_register())
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers.values("Require"), ["outbound"])
        self.assertEqual(response.headers.get("Flow-Timer"), str(FLOW_TIMER_SECONDS))
        [contact] = response.contacts
        self.assertEqual((instance_of(contact), reg_id_of(contact)), (INSTANCE, 1))
        [binding] = self.a.registrar.local_bindings(AOR)
        self.assertTrue(binding.outbound and binding.reached_over_flow)
        self.assertEqual(binding.flow, FLOW_1)

    def test_binding_is_instance_and_reg_id(self) -> None:
        """Same instance and reg-id replaces the binding (any contact); another reg-id adds one."""
        self.register(outbound_register())
        self.register(
            outbound_register(contact="<sip:alice@10.0.0.9:5062>", cseq=2), Hop("UDP", "1.2.3.4", 9)
        )
        [binding] = self.a.registrar.local_bindings(AOR)
        self.assertEqual(
            (str(binding.contact.uri), binding.flow),
            ("sip:alice@10.0.0.9:5062", Hop("UDP", "1.2.3.4", 9)),
        )
        self.register(outbound_register(reg_id=2, call_id="reg-2"), FLOW_2)
        self.assertEqual(
            sorted(b.reg_id or 0 for b in self.a.registrar.local_bindings(AOR)), [1, 2]
        )

    def test_refusals_and_plain_registrations(self) -> None:
        """Two reg-ids in one REGISTER are a 400; Require: outbound is accepted; without
        Supported: outbound the contact is an ordinary binding."""
        two = outbound_register(
            extra=f'Contact: <sip:alice@10.0.0.5:5064>;+sip.instance="<{INSTANCE}>";reg-id=2'
        )
        self.assertEqual(self.register(two).status, 400)
        self.assertEqual(
            self.register(outbound_register(extra="Require: outbound", cseq=2)).status, 200
        )
        self.assertEqual(self.register(outbound_register(extra="Require: foo", cseq=3)).status, 420)
        response = self.register(outbound_register(supported=False, call_id="plain"))
        self.assertEqual(response.headers.values("Require"), [])
        plain = [b for b in self.a.registrar.local_bindings(AOR) if b.call_id == "plain"]
        self.assertEqual([b.outbound for b in plain], [False])


class ProxyOutboundTests(SynchronousTestCase):
    """A phone registered through A (reg-id 1) and B (reg-id 2), called through C."""

    def setUp(self) -> None:
        self.clock, self.a, self.b, self.c = three_nodes(self)
        self.a.receive(outbound_register(reg_id=1), FLOW_1)
        self.b.receive(outbound_register(reg_id=2, call_id="reg-2"), FLOW_2)
        self.assertEqual(
            [r.status for r, _ in self.a.sender.responses + self.b.sender.responses], [200, 200]
        )

    def invites(self, node: Node) -> list[tuple[Request, Hop]]:
        return [(r, hop) for r, hop in node.sender.requests if r.method == "INVITE"]

    def test_one_invite_over_the_first_flow(self) -> None:
        """C sends one INVITE, to A (the lowest reg-id); A sends it over the phone's flow."""
        self.c.receive(message_text())
        [(invite, hop)] = self.invites(self.c)
        self.assertEqual((hop.host, hop.port), ADDRESS_A)
        self.a.receive(invite, Hop("UDP", *ADDRESS_C))
        [(_, phone)] = self.invites(self.a)
        self.assertEqual(phone, FLOW_1)

    def test_silent_super_node_fails_over(self) -> None:
        """When A does not answer at all, C sends the INVITE to B after a short wait, not before."""
        self.c.receive(message_text())
        self.clock.advance(FAILOVER_ANSWER_SECONDS - 0.1)
        # Only A so far (the INVITE retransmitted to it over UDP).
        self.assertEqual({hop.host for _, hop in self.invites(self.c)}, {ADDRESS_A[0]})
        self.clock.advance(0.2)
        self.assertEqual(self.invites(self.c)[-1][1].host, ADDRESS_B[0])
        invite, _ = self.invites(self.c)[-1]
        self.b.receive(invite, Hop("UDP", *ADDRESS_C))
        self.assertEqual(self.invites(self.b)[-1][1], FLOW_2)

    def test_flow_failed_fails_over(self) -> None:
        """A 430 from A (its flow to the phone failed) sends the INVITE on to B."""
        self.c.receive(message_text())
        [(invite, hop)] = self.invites(self.c)
        self.c.receive(make_response(invite, 100), hop)
        self.clock.advance(FAILOVER_ANSWER_SECONDS * 2)
        self.assertEqual(len(self.invites(self.c)), 1, "100 Trying: A lives")
        failed = make_response(invite, 430, "Flow Failed")
        failed.headers.set("To", str(invite.to) + ";tag=a1")
        self.c.receive(failed, hop)
        self.assertEqual(self.invites(self.c)[-1][1].host, ADDRESS_B[0])

    def test_dead_flow_answers_430(self) -> None:
        """A super-node whose only flow to the phone fails answers 430 Flow Failed."""
        self.a.sender.fail_to.add(FLOW_1)
        self.a.receive(message_text(uri=f"sip:alice@{DOMAIN};{NODE_PARAMETER}={NODE_A:032x}"))
        self.assertEqual(self.a.sender.statuses()[-1], 430)

    def test_silent_flow_answers_430_soon(self) -> None:
        """A phone silent on its only flow here: 430 after the short wait, not Timer B's 32 s."""
        self.a.receive(message_text(uri=f"sip:alice@{DOMAIN};{NODE_PARAMETER}={NODE_A:032x}"))
        self.assertEqual(self.invites(self.a)[-1][1], FLOW_1)
        self.clock.advance(FAILOVER_ANSWER_SECONDS - 0.1)
        self.assertNotIn(430, self.a.sender.statuses())
        self.clock.advance(0.2)
        self.assertEqual(self.a.sender.statuses()[-1], 430)

    def test_answering_flow_is_kept(self) -> None:
        """A phone that answered (100 Trying) keeps its call however long it rings."""
        self.a.receive(message_text(uri=f"sip:alice@{DOMAIN};{NODE_PARAMETER}={NODE_A:032x}"))
        [(invite, flow)] = self.invites(self.a)
        self.a.receive(make_response(invite, 100), flow)
        self.clock.advance(FAILOVER_ANSWER_SECONDS * 5)
        self.assertNotIn(430, self.a.sender.statuses())


class _DatagramTransport(FakeDatagramTransport):
    def getHost(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("UDP", "203.0.113.1", 5060)


class StunKeepaliveTests(SynchronousTestCase):
    def test_stun_on_the_sip_port(self) -> None:
        """A STUN Binding request on the SIP UDP socket is answered with the phone's address."""
        receiver = RecordingReceiver()
        owner = SipTransport(MemoryUDPReactor(), receiver)
        protocol = SipDatagramProtocol(owner)
        fake = _DatagramTransport()
        protocol.transport = fake  # type: ignore[assignment]
        request = stun.binding_request()
        protocol.datagramReceived(stun.encode_message(request), ("198.51.100.7", 40000))
        [(reply, address)] = fake.written
        self.assertEqual(address, ("198.51.100.7", 40000))
        answer = stun.decode_message(reply)
        self.assertEqual(answer.transaction_id, request.transaction_id)
        self.assertEqual(answer.xor_mapped_address(), ("198.51.100.7", 40000))
        self.assertEqual((receiver.received, owner.metrics()["stun_keepalives"]), ([], 1))

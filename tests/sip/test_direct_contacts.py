"""
Calls that skip the callee's super-node: the ``direct`` mark a registrar
writes (:mod:`p2psip.sip.direct_contacts`), what a caller's proxy does with
it, and when either side refuses it.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip.direct_contacts import (
    TARGET_PARAMETER,
    DialogTargets,
    DirectContacts,
    direct_contact_policy,
)
from p2psip.sip.location import Binding, decode_contact_prefs, encode_contact_prefs
from p2psip.sip.proxy import NODE_PARAMETER
from p2psip.sip.registrar import Registrar
from p2psip.sip.transaction import Hop
from p2psip.sip.uri import parse_uri

from .test_proxy import (
    ADDRESS_B,
    DOMAIN,
    NODE_B,
    NOW,
    Node,
    message_text,
    register_request,
    ring_of_two,
)

#: Globally routable addresses (no packet is sent: the transports are fakes).
PUBLIC_PHONE = "93.184.216.34"
PUBLIC_PHONE_2 = "93.184.216.35"
PHONE_FLOW = Hop("UDP", PUBLIC_PHONE, 5062)


class PolicyTests(SynchronousTestCase):
    def reachable(self, policy: str, contact: str, source: str, transport: str = "UDP") -> bool:
        return DirectContacts(policy).reachable_directly(
            parse_uri(contact), source, transport, outbound=False
        )

    def test_public_phone_on_its_own_address(self) -> None:
        self.assertTrue(self.reachable("public", f"sip:a@{PUBLIC_PHONE}:5062", PUBLIC_PHONE))

    def test_private_address_only_with_any(self) -> None:
        self.assertFalse(self.reachable("public", "sip:a@10.0.0.5:5062", "10.0.0.5"))
        self.assertFalse(self.reachable("public", "sip:a@127.0.0.1:5062", "127.0.0.1"))
        self.assertTrue(self.reachable("any", "sip:a@127.0.0.1:5062", "127.0.0.1"))

    def test_off_never(self) -> None:
        self.assertFalse(self.reachable("off", f"sip:a@{PUBLIC_PHONE}", PUBLIC_PHONE))

    def test_nat_evidence_refuses(self) -> None:
        """A contact unlike the REGISTER's source address was rewritten by a NAT (or is a third party)."""
        self.assertFalse(self.reachable("any", "sip:a@10.0.0.5:5062", PUBLIC_PHONE))

    def test_only_plain_udp_ip_contacts(self) -> None:
        for contact in (
            f"sip:a@{PUBLIC_PHONE};transport=tcp",
            f"sips:a@{PUBLIC_PHONE}",
            "sip:a@phone.example.com",
            "tel:+15551234",
        ):
            with self.subTest(contact=contact):
                self.assertFalse(self.reachable("any", contact, PUBLIC_PHONE))
        self.assertFalse(self.reachable("any", f"sip:a@{PUBLIC_PHONE}", PUBLIC_PHONE, "TCP"))
        self.assertTrue(self.reachable("any", f"sip:a@{PUBLIC_PHONE};transport=UDP", PUBLIC_PHONE))

    def test_outbound_and_relaying_nodes_refuse(self) -> None:
        contact = parse_uri(f"sip:a@{PUBLIC_PHONE}")
        self.assertFalse(
            DirectContacts("any").reachable_directly(contact, PUBLIC_PHONE, "UDP", outbound=True)
        )
        self.assertFalse(
            DirectContacts("any", relays_every_call=True).reachable_directly(
                contact, PUBLIC_PHONE, "UDP", outbound=False
            )
        )

    def test_caller_side_checks_what_another_node_wrote(self) -> None:
        """A value in the overlay must not aim this node at its own network or at itself."""
        public = DirectContacts("public")
        self.assertIsNotNone(public.may_call_directly(f"sip:a@{PUBLIC_PHONE}:5062"))
        for contact in (
            "sip:a@192.168.1.1",
            "sip:a@127.0.0.1:5060",
            "sip:a@0.0.0.0",
            "sip:a@224.0.0.1",
            f"sip:a@{PUBLIC_PHONE};transport=tcp",
            "not a uri",
        ):
            with self.subTest(contact=contact):
                self.assertIsNone(public.may_call_directly(contact))
        self.assertIsNotNone(DirectContacts("any").may_call_directly("sip:a@127.0.0.1:5062"))
        self.assertIsNone(DirectContacts("off").may_call_directly(f"sip:a@{PUBLIC_PHONE}"))

    def test_policy_names(self) -> None:
        self.assertEqual(direct_contact_policy(" ANY "), "any")
        with self.assertRaisesRegex(ValueError, "public, any, off"):
            direct_contact_policy("sometimes")


class StoredFormTests(SynchronousTestCase):
    def test_mark_survives_the_overlay(self) -> None:
        bindings = [
            Binding("alice@example.org", f"sip:a@{PUBLIC_PHONE}", NOW + 60, direct=True),
            Binding("alice@example.org", "sip:a@10.0.0.5", NOW + 60),
        ]
        text = encode_contact_prefs(bindings)
        self.assertIn(";direct", text)
        decoded = decode_contact_prefs(text, "alice@example.org", NODE_B)
        assert decoded is not None
        self.assertEqual([b.direct for b in decoded], [True, False])

    def test_outbound_binding_is_never_direct(self) -> None:
        """A flow of SIP Outbound is reached through its node, whatever the value says."""
        instance = "urn:uuid:00000000-0000-1000-8000-000a95a0e128"
        text = f"<sip:a@{PUBLIC_PHONE}>;q=1;expires-at={int(NOW) + 60};instance={instance};reg-id=1;direct"
        [binding] = decode_contact_prefs(text, "alice@example.org", NODE_B) or []
        self.assertEqual(binding.instance, instance)
        self.assertFalse(binding.direct)
        damaged = text.replace(instance, "<not an instance>")
        [binding] = decode_contact_prefs(damaged, "alice@example.org", NODE_B) or []
        self.assertFalse(binding.direct)


def _policy_node(policy: str) -> type[Node]:
    class PolicyNode(Node):
        def make_registrar(self, node_id: int, clock: Clock) -> Registrar:
            return Registrar(
                DOMAIN,
                self.location,
                clock,
                trusted_network=True,
                direct_contacts=DirectContacts(policy),
            )

    return PolicyNode


class DirectCallTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock, self.a, self.b = ring_of_two(self, _policy_node("public"))

    def register_at(self, node: Node, contact: str, flow: Hop) -> None:
        node.receive(register_request(contact), flow)
        self.assertEqual(node.sender.responses[-1][0].status, 200)

    def invites(self, node: Node) -> list[tuple[str, Hop]]:
        return [(str(r.uri), hop) for r, hop in node.sender.requests if r.method == "INVITE"]

    def test_public_phone_called_without_its_super_node(self) -> None:
        """A's INVITE goes straight to the phone B serves, Record-Routed by A alone."""
        self.register_at(self.b, f"<sip:alice@{PUBLIC_PHONE}:5062>", PHONE_FLOW)
        self.a.receive(message_text())
        [request] = [r for r, _ in self.a.sender.requests if r.method == "INVITE"]
        self.assertEqual(
            self.invites(self.a),
            [(f"sip:alice@{PUBLIC_PHONE}:5062", Hop("UDP", PUBLIC_PHONE, 5062))],
        )
        self.assertEqual(len(request.record_routes), 1)
        self.assertEqual(self.b.sender.requests, [])

    def test_phone_behind_nat_goes_through_its_super_node(self) -> None:
        self.register_at(self.b, "<sip:alice@10.0.0.5:5062>", PHONE_FLOW)
        self.a.receive(message_text())
        [(uri, hop)] = self.invites(self.a)
        self.assertEqual(hop, Hop("UDP", *ADDRESS_B))
        self.assertIn(f"{NODE_PARAMETER}={NODE_B:032x}", uri)

    def test_one_served_binding_keeps_the_aor_at_its_node(self) -> None:
        """A public phone and a NATed one at B: B forks to both, so neither rings twice."""
        self.register_at(self.b, f"<sip:alice@{PUBLIC_PHONE}:5062>", PHONE_FLOW)
        self.register_at(self.b, "<sip:alice@10.0.0.5:5062>", Hop("UDP", PUBLIC_PHONE_2, 4000))
        self.a.receive(message_text())
        [(_, hop)] = self.invites(self.a)
        self.assertEqual(hop, Hop("UDP", *ADDRESS_B))

    def test_caller_with_policy_off_keeps_two_hops(self) -> None:
        clock, a, b = ring_of_two(self, _policy_node("off"))
        b.registrar.direct_contacts = DirectContacts("public")  # B still marks it
        self.register_at(b, f"<sip:alice@{PUBLIC_PHONE}:5062>", PHONE_FLOW)
        a.receive(message_text())
        [(_, hop)] = self.invites(a)
        self.assertEqual(hop, Hop("UDP", *ADDRESS_B))

    def test_loopback_ring_with_any(self) -> None:
        clock, a, b = ring_of_two(self, _policy_node("any"))
        flow = Hop("UDP", "127.0.0.1", 5062)
        self.register_at(b, "<sip:alice@127.0.0.1:5062>", flow)
        a.receive(message_text())
        self.assertEqual(self.invites(a), [("sip:alice@127.0.0.1:5062", flow)])

    def direct_call_route(self) -> str:
        """Call the public phone served at B through A; A's Record-Route entry as a Route."""
        self.register_at(self.b, f"<sip:alice@{PUBLIC_PHONE}:5062>", PHONE_FLOW)
        self.a.receive(message_text())
        [invite] = [r for r, _ in self.a.sender.requests if r.method == "INVITE"]
        [record_route] = invite.headers.values("Record-Route")
        self.assertIn(f";{TARGET_PARAMETER}=", record_route)
        return f"Route: {record_route}"

    def test_dialog_requests_reach_the_phone(self) -> None:
        """ACK and BYE follow A's route set to the phone: the Route's proof names it."""
        route = self.direct_call_route()
        contact = f"sip:alice@{PUBLIC_PHONE}:5062"
        for method, branch in (("ACK", "z9hG4bKack1"), ("BYE", "z9hG4bKbye1")):
            self.a.receive(
                message_text(method, uri=contact, branch=branch, extra=route, to_tag=";tag=uas1")
            )
            [(request, hop)] = [(r, h) for r, h in self.a.sender.requests if r.method == method]
            self.assertEqual((str(request.uri), hop), (contact, PHONE_FLOW))
            self.assertEqual(request.headers.values("Route"), [])

    def test_proof_does_not_open_a_relay(self) -> None:
        """The proof is for this Call-ID and this address only, and cannot be forged."""
        route = self.direct_call_route()
        token = route.split(f"{TARGET_PARAMETER}=", 1)[1][:16]
        attempts = [
            # another address, same dialog
            (f"sip:alice@{PUBLIC_PHONE_2}:5062", route, "call-xyz@198.51.100.10"),
            # same address, another dialog
            (f"sip:alice@{PUBLIC_PHONE}:5062", route, "other-call"),
            # a made-up proof
            (
                f"sip:alice@{PUBLIC_PHONE}:5062",
                route.replace(token, "0123456789abcdef"),
                "call-xyz@198.51.100.10",
            ),
        ]
        for number, (uri, extra, call_id) in enumerate(attempts):
            with self.subTest(number=number):
                text = message_text(
                    "BYE", uri=uri, branch=f"z9hG4bKbad{number}", extra=extra, to_tag=";tag=x"
                ).replace(b"call-xyz@198.51.100.10", call_id.encode())
                self.a.receive(text)
                self.assertEqual(self.a.sender.responses[-1][0].status, 403)
        self.assertEqual([r for r, _ in self.a.sender.requests if r.method == "BYE"], [])

    def test_calls_to_phones_served_here_carry_no_proof(self) -> None:
        self.register_at(self.a, f"<sip:alice@{PUBLIC_PHONE}:5062>", PHONE_FLOW)
        self.a.receive(message_text())
        [invite] = [r for r, _ in self.a.sender.requests if r.method == "INVITE"]
        self.assertNotIn(TARGET_PARAMETER, invite.headers.values("Record-Route")[0])


class DialogTargetTests(SynchronousTestCase):
    def test_token_binds_call_and_address(self) -> None:
        targets = DialogTargets(b"k" * 32)
        token = targets.token("call-1", "[2001:DB8::1]", 5060)
        self.assertTrue(targets.allows(token.upper(), "call-1", "2001:db8::1", 5060))
        self.assertFalse(targets.allows(token, "call-2", "2001:db8::1", 5060))
        self.assertFalse(targets.allows(token, "call-1", "2001:db8::1", 5062))
        self.assertFalse(DialogTargets(b"x" * 32).allows(token, "call-1", "2001:db8::1", 5060))
        with self.assertRaises(ValueError):
            DialogTargets(b"short")

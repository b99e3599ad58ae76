"""
A SIPp call between two super-nodes whose RTP really crosses the relay.

Super-nodes "a" and "b" share an in-memory DHT (the SIP service tests'
``start_super_nodes``) and listen on loopback.  The callee, a SIPp UAS
that echoes RTP (``-rtp_echo``), is registered at b; the caller, a SIPp
UAC streaming a mu-law WAV, calls it through a.  Under ``nat-only`` the
caller looks NATed (its Via names a private address while it sends from
127.0.0.1), so only a relays; under ``always`` both do.  The relays'
counters show the RTP of both directions, and every port is free after BYE.
"""

from __future__ import annotations

import socket
from collections.abc import Generator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from p2psip.roles.sip_service import SipService
from p2psip.sip.message import Request, parse_message
from p2psip.sip.transaction import Hop
from p2psip.sip.users import UsersFile
from p2psip.testing import free_port, require_tool
from p2psip.usages.media_relay import MEDIA_RELAY_KIND, MEDIA_RELAY_RESOURCE
from p2psip.util.ids import id_to_bytes
from tests.integration.test_peer_sip_service import NODE_A, NODE_B, MemoryNode, start_super_nodes
from tests.media.audio import write_mulaw_wav
from tests.media.processes import spawn
from tests.media.test_relay_loopback import port_range
from tests.roles.test_peer import DOMAIN

SCENARIOS = Path(__file__).parent / "sipp"
SHARED_SCENARIOS = Path(__file__).parent.parent / "integration" / "sipp"


def register_request(user: str, contact: tuple[str, int], source_port: int) -> Request:
    """A REGISTER of ``user`` at DOMAIN whose Via and Contact name ``contact``."""
    host, port = contact
    message = parse_message(
        (
            f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKreg{source_port};rport\r\n"
            f"From: <sip:{user}@{DOMAIN}>;tag=r1\r\nTo: <sip:{user}@{DOMAIN}>\r\n"
            f"Call-ID: reg-{user}-{source_port}\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
            f"Contact: <sip:{user}@{host}:{port}>\r\nExpires: 3600\r\n\r\n"
        ).encode()
    )
    assert isinstance(message, Request)
    return message


class SippCalls(TestCase):
    """Super-nodes, a SIPp callee registered at the second, a SIPp caller at the first."""

    timeout = 60

    def start(self, policies: dict[str, str]) -> list[SipService]:
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        users_path = self.directory / "users"
        UsersFile.load(users_path, missing_ok=True).save()
        extra = {}
        for name, policy in policies.items():
            low, high = port_range(8)
            extra[name] = [
                "--sip-trusted-network",
                "--media-relay",
                policy,
                "--media-ports",
                f"{low}-{high}",
            ]
        return start_super_nodes(self, self.directory, DOMAIN, users_path, extra)

    @inlineCallbacks
    def call(
        self, services: list[SipService], caller_via: str
    ) -> Generator[Deferred[Any], Any, None]:
        """A SIPp call from a phone at ``services[0]`` to one at ``services[1]`` (may be the same)."""
        sipp = require_tool("sipp")
        a, b = services
        uas_port = free_port(socket.SOCK_DGRAM)
        registered = yield b.registrar.register_received(
            register_request("callee0000", ("127.0.0.1", uas_port), uas_port),
            Hop("UDP", "127.0.0.1", uas_port),
        )
        self.assertEqual(registered.status, 200)
        callees = self.directory / "callees.csv"
        callees.write_text("SEQUENTIAL\ncallee0000\n")
        write_mulaw_wav(self.directory / "tone.wav", seconds=1.0)
        callee = spawn(
            self,
            sipp,
            [
                "-sf",
                str(SHARED_SCENARIOS / "uas.xml"),
                "-i",
                "127.0.0.1",
                "-p",
                str(uas_port),
                "-mp",
                str(free_port(socket.SOCK_DGRAM)),
                "-rtp_echo",
                "-m",
                "1",
                "-nostdin",
                "-timeout",
                "30s",
            ],
            self.directory,
        )
        assert a.advertised is not None
        caller = spawn(
            self,
            sipp,
            [
                f"127.0.0.1:{a.advertised[1]}",
                "-sf",
                str(SCENARIOS / "uac_rtp.xml"),
                "-inf",
                str(callees),
                "-key",
                "domain",
                DOMAIN,
                "-key",
                "caller_domain",
                "caller.test",
                "-key",
                "via_host",
                caller_via,
                "-i",
                "127.0.0.1",
                "-p",
                str(free_port(socket.SOCK_DGRAM)),
                "-mp",
                str(free_port(socket.SOCK_DGRAM)),
                "-m",
                "1",
                "-nostdin",
                "-timeout",
                "30s",
            ],
            self.directory,
        )
        caller_status = yield caller.ended
        self.assertEqual(caller_status, 0, caller.tail())
        callee_status = yield callee.ended
        self.assertEqual(callee_status, 0, callee.tail())

    def assertRelayed(self, service: SipService) -> None:
        """The relay carried RTP both ways, and ended the call on BYE with its ports free."""
        media = service.stack.media
        assert media is not None
        sessions = media.sessions
        from_caller = sessions.totals(from_caller=True)["packets"]
        from_callee = sessions.totals(from_caller=False)["packets"]
        self.assertGreater(from_caller, 10)
        self.assertGreater(from_callee, 10)
        self.assertEqual(dict(sessions.ended), {"bye": 1})
        self.assertEqual((len(sessions), sessions.pool.in_use), (0, 0))


class SippRelayTests(SippCalls):
    @inlineCallbacks
    def test_nat_only_relays_at_the_nated_callers_super_node(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """A NATed caller's super-node relays; the callee's (public callee) does not."""
        services = self.start({"a": "nat-only", "b": "nat-only"})
        yield self.call(services, "192.168.1.10")
        self.assertRelayed(services[0])
        b_media = services[1].stack.media
        assert b_media is not None
        self.assertEqual(
            (b_media.sessions.totals()["packets"], sum(b_media.sessions.ended.values())), (0, 0)
        )

    @inlineCallbacks
    def test_always_relays_at_both_super_nodes(self) -> Generator[Deferred[Any], Any, None]:
        """With always, each super-node relays for its own phone: RTP crosses both relays."""
        services = self.start({"a": "always", "b": "always"})
        registry = CollectorRegistry()
        services[0].add_metrics(registry)
        yield self.call(services, "127.0.0.1")
        self.assertRelayed(services[0])
        self.assertRelayed(services[1])
        for sender in ("caller", "callee"):
            packets = registry.get_sample_value("p2psip_media_packets_total", {"sender": sender})
            self.assertGreater(packets or 0, 10)
        self.assertEqual(
            registry.get_sample_value("p2psip_media_sessions_ended_total", {"reason": "bye"}), 1
        )
        status = services[0].status()["media_relay"]
        self.assertEqual(
            (status["policy"], status["sessions"], status["ended"]), ("always", 0, {"bye": 1})
        )
        self.assertGreater(status["totals"]["from_callees"]["packets"], 10)


class RelayListingNode(MemoryNode):
    """The in-memory DHT, also taking MEDIA-RELAY entries a node signs for its own Node-ID."""

    def _signed_for(self, resource_name: str, signer: object) -> bool:
        if resource_name == MEDIA_RELAY_RESOURCE and signer is None:
            return True
        return bool(super()._signed_for(resource_name, signer))

    def put_dictionary_entry(
        self,
        resource_name: str,
        kind_id: int,
        key: bytes,
        value: bytes,
        lifetime_seconds: int,
        signer: object = None,
    ) -> Deferred[None]:
        if kind_id == MEDIA_RELAY_KIND and key != id_to_bytes(self.local_node_id):
            raise AssertionError("NODE-KEY-MATCH: a node writes only its own entry")
        result: Deferred[None] = super().put_dictionary_entry(
            resource_name, kind_id, key, value, lifetime_seconds, signer
        )
        return result


NODE_R = 0xCCCC0000000000000000000000000003


class OverlayRelayTests(SippCalls):
    """A super-node without relay ports sends the call through a relay found in the overlay."""

    def start_three(self) -> list[SipService]:
        """r with relay ports, a with none (both always), b without a relay."""
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        users_path = self.directory / "users"
        UsersFile.load(users_path, missing_ok=True).save()
        low, high = port_range(8)
        relay = ["--sip-trusted-network", "--media-relay", "always"]
        return start_super_nodes(
            self,
            self.directory,
            DOMAIN,
            users_path,
            {
                "r": [*relay, "--media-ports", f"{low}-{high}"],
                "a": [*relay, "--media-ports", "none"],
                "b": ["--sip-trusted-network"],
            },
            nodes=(("r", NODE_R), ("a", NODE_A), ("b", NODE_B)),
            node_class=RelayListingNode,
        )

    @inlineCallbacks
    def found_relay(self, a: SipService) -> Generator[Deferred[Any], Any, None]:
        assert a.directory is not None
        yield a.directory.refresh()
        self.assertEqual([entry.node_id for entry, _ in a.directory.reachable()], [NODE_R])

    def assertDetoured(self, r: SipService, a: SipService) -> None:
        self.assertRelayed(r)
        assert a.stack.media is not None
        self.assertEqual((a.stack.media.detoured, len(a.stack.media.sessions)), (1, 0))

    @inlineCallbacks
    def test_call_through_a_relay_found_in_the_overlay(self) -> Generator[Deferred[Any], Any, None]:
        """a has media-ports none; r lists its relay in the overlay; the RTP crosses r."""
        r, a, b = self.start_three()
        yield self.found_relay(a)
        yield self.call([a, b], "127.0.0.1")
        self.assertDetoured(r, a)

    @inlineCallbacks
    def test_call_between_phones_of_one_node_through_a_relay(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """Both phones at a: the INVITE goes to r and comes back to a for its own phone."""
        r, a, _ = self.start_three()
        yield self.found_relay(a)
        yield self.call([a, a], "127.0.0.1")
        self.assertDetoured(r, a)

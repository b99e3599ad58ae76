"""
The peer role's SIP service over real loopback UDP: two super-nodes that
share one in-memory DHT, with real user agents registering and calling.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from p2psip.interfaces import ISuperNodeOverlay
from p2psip.roles.sip_service import SipService, build_sip_stack, load_or_create_secret, load_users
from p2psip.sip.transaction import Hop
from p2psip.sip.transport import SipTransport
from p2psip.sip.user_agent import CallFailed, SimpleUserAgent
from p2psip.sip.users import UsersFile
from tests.roles.test_peer import DOMAIN, parse
from tests.sip.memory_storage import MemoryOverlayStorage

NODE_A = 0xAAAA0000000000000000000000000001
NODE_B = 0xBBBB0000000000000000000000000002


@implementer(ISuperNodeOverlay)
class MemoryNode(MemoryOverlayStorage):
    advertised_host = "127.0.0.1"

    def set_application_address(self, application: int, host: str, port: int) -> None:
        self.applications[(self.local_node_id, application)] = (host, port)


def start_super_nodes(
    test: TestCase,
    directory: Path,
    domain: str,
    users_path: Path,
    extra: dict[str, list[str]] | None = None,
    nodes: Sequence[tuple[str, int]] = (("a", NODE_A), ("b", NODE_B)),
    node_class: type[MemoryNode] | None = None,
) -> list[SipService]:
    """
    Super-nodes "a" (NODE_A) and "b" (NODE_B) of one in-memory DHT (or
    ``nodes``, as ``node_class``), with SIP on loopback UDP and ``extra``
    role options per name; stopped at cleanup.
    """
    entries: dict[Any, Any] = {}
    applications: dict[Any, Any] = {}
    services = []
    for name, node_id in nodes:
        options = parse(
            "--overlay-name",
            domain,
            "--sip",
            "udp:0:interface=127.0.0.1",
            *(extra or {}).get(name, []),
            "--users",
            str(users_path),
            "--data-dir",
            str(directory / name),
        )
        config = options.config
        assert config.sip is not None
        os.makedirs(config.data_dir)
        stack = build_sip_stack(
            config.sip,
            (node_class or MemoryNode)(node_id, reactor, entries, applications),
            reactor,
            load_users(config.sip),
            load_or_create_secret(config.data_dir),
            "127.0.0.1",
        )
        service = SipService(stack, reactor, freeze_gc=False)
        service.startService()
        test.addCleanup(service.stopService)
        services.append(service)
    return services


class SipServiceTests(TestCase):
    """Two super-nodes sharing one in-memory DHT; users register and call over loopback UDP."""

    timeout = 30

    def setUp(self) -> None:
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        self.users_path = directory / "users"
        users = UsersFile.load(self.users_path, missing_ok=True)
        users.set_password(f"sip:alice@{DOMAIN}", "alice-secret")
        users.set_password(f"sip:bob@{DOMAIN}", "bob-secret")
        users.save()
        self.services = start_super_nodes(self, directory, DOMAIN, self.users_path)

    @inlineCallbacks
    def user_agent(self, aor: str, password: str, service: SipService) -> Any:
        transport = SipTransport(reactor)
        yield transport.listen("udp:0:interface=127.0.0.1")
        self.addCleanup(transport.stop)
        assert service.advertised is not None
        agent = SimpleUserAgent(aor, password, transport, Hop("UDP", *service.advertised), reactor)
        self.addCleanup(agent.stop)
        return agent

    @inlineCallbacks
    def test_register_and_call_across_super_nodes(self) -> Any:
        """Alice registers at A with Digest, Bob at B; Bob's call reaches Alice through B and A."""
        a, b = self.services
        alice = yield self.user_agent(f"sip:alice@{DOMAIN}", "alice-secret", a)
        bob = yield self.user_agent(f"sip:bob@{DOMAIN}", "bob-secret", b)
        yield alice.register()
        yield bob.register()
        self.assertEqual(a.status()["registrations"], {"aors": 1, "bindings": 1})
        dialog = yield bob.call(f"sip:alice@{DOMAIN}")
        self.assertEqual(len(dialog.route_set), 2)  # both super-nodes record-routed
        yield bob.hang_up(dialog)
        self.assertEqual((alice.calls_answered, alice.byes_received), (1, 1))
        self.assertEqual(b.status()["final_responses"]["INVITE"], {"200": 1})
        self.assertEqual(a.status()["final_responses"]["REGISTER"], {"200": 1, "401": 1})

    @inlineCallbacks
    def test_wrong_password_and_unknown_user(self) -> Any:
        """
        A wrong password gets 403, for REGISTER and for a call as that user
        (after the 407); a call to a user not in the users file gets 480,
        like an offline one.
        """
        a, _ = self.services
        mallory = yield self.user_agent(f"sip:alice@{DOMAIN}", "wrong", a)
        failure = yield self.assertFailure(mallory.register(), CallFailed)
        self.assertEqual(failure.response.status, 403)
        failure = yield self.assertFailure(mallory.call(f"sip:bob@{DOMAIN}"), CallFailed)
        self.assertEqual(failure.response.status, 403)
        roaming = yield self.user_agent(f"sip:alice@{DOMAIN}", "alice-secret", a)
        failure = yield self.assertFailure(roaming.call(f"sip:nobody@{DOMAIN}"), CallFailed)
        self.assertEqual(failure.response.status, 480)
        self.assertEqual(a.status()["final_responses"]["INVITE"], {"403": 1, "407": 2, "480": 1})

    @inlineCallbacks
    def test_metrics(self) -> Any:
        """A call across both super-nodes shows in each one's SIP metrics."""
        a, b = self.services
        registries = [CollectorRegistry(), CollectorRegistry()]
        for service, registry in zip(self.services, registries):
            service.add_metrics(registry)
        alice = yield self.user_agent(f"sip:alice@{DOMAIN}", "alice-secret", a)
        bob = yield self.user_agent(f"sip:bob@{DOMAIN}", "bob-secret", b)
        yield alice.register()
        yield bob.register()
        dialog = yield bob.call(f"sip:alice@{DOMAIN}")
        yield bob.hang_up(dialog)
        value = registries[1].get_sample_value
        self.assertEqual(
            value("p2psip_sip_final_responses_total", {"method": "INVITE", "status": "200"}), 1.0
        )
        self.assertEqual(value("p2psip_sip_registered_aors"), 1.0)
        self.assertEqual(value("p2psip_sip_bindings"), 1.0)
        self.assertGreater(
            value("p2psip_sip_transport_events_total", {"event": "messages_received"}) or 0, 0
        )
        # Alice's phone answers without ringing, so the set-up ends at the 200.
        for histogram in (
            "p2psip_sip_call_setup_seconds",
            "p2psip_sip_call_final_response_seconds",
        ):
            for registry in registries:
                self.assertEqual(
                    registry.get_sample_value(histogram + "_count", {"status_class": "2xx"}), 1.0
                )

"""Every role's /metrics, scraped over HTTP from the site its makeService builds, in memory."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import IService
from twisted.trial.unittest import SynchronousTestCase

from p2psip.roles import bootstrap, client, mediator, peer
from p2psip.roles.super_node import RingRole
from p2psip.testing import MemoryUDPReactor
from p2psip.util import gc_tuning
from tests.web.test_site import Connection, http_request

HTTP_PORT = 18084
OVERLAY_PORT = 16084

#: What every role exports about its process (Linux, as the roles are deployed).
PROCESS_FAMILIES = {
    "process_start_time_seconds": "gauge",
    "process_open_fds": "gauge",
    "process_max_resident_memory_bytes": "gauge",
    "process_cpu_seconds": "counter",
}
OVERLAY_FAMILIES = {
    "p2psip_overlay_events": "counter",
    "p2psip_overlay_links": "gauge",
    "p2psip_overlay_links_by_path": "gauge",
    "p2psip_overlay_stored_resources": "gauge",
    "p2psip_overlay_pending_transactions": "gauge",
    "p2psip_overlay_request_seconds": "histogram",
}
SIP_FAMILIES = {
    "p2psip_sip_final_responses": "counter",
    "p2psip_sip_registered_aors": "gauge",
    "p2psip_sip_bindings": "gauge",
    "p2psip_sip_transport_events": "counter",
    "p2psip_sip_tcp_connections": "gauge",
    "p2psip_sip_transactions": "gauge",
    "p2psip_sip_transaction_events": "counter",
    "p2psip_sip_requests_in_progress": "gauge",
    "p2psip_sip_location_cache_lookups": "counter",
    "p2psip_sip_location_cache_events": "counter",
    "p2psip_sip_location_cache_entries": "gauge",
    "p2psip_sip_call_setup_seconds": "histogram",
    "p2psip_sip_call_final_response_seconds": "histogram",
}
MEDIATOR_FAMILIES = {
    "p2psip_mediator_attempts": "counter",
    "p2psip_mediator_successes": "counter",
    "p2psip_mediator_failures": "counter",
    "p2psip_mediator_auth_failures": "counter",
    "p2psip_mediator_rejected_connections": "counter",
    "p2psip_mediator_relayed_bytes": "counter",
    "p2psip_mediator_relay_sessions": "counter",
    "p2psip_mediator_clients_online": "gauge",
    "p2psip_mediator_sessions_in_progress": "gauge",
    "p2psip_mediator_relays_active": "gauge",
    "p2psip_mediator_stun_requests": "counter",
    "p2psip_mediator_stun_responses": "counter",
    "p2psip_mediator_stun_errors": "counter",
    "p2psip_mediator_stun_dropped": "counter",
}


class RoleMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryUDPReactor()
        # The SIP service tunes and freezes the garbage collector of the
        # process it runs in; that is not this test's to change.
        self.patch(gc_tuning, "tune_for_server", lambda: (0, 0, 0))
        self.patch(gc_tuning, "freeze_after_start_up", lambda: 0)

    def start(self, service: IService) -> IService:
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def scrape(self) -> dict[str, Metric]:
        """GET /metrics from the role's site; the families by name, after checking the answer."""
        [site] = [factory for port, factory, *_ in self.reactor.tcpServers if port == HTTP_PORT]
        connection = Connection(site)
        connection.send(http_request("GET", "/metrics"))
        response = connection.response()
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8"
        )
        families = list(text_string_to_metric_families(response.body.decode("utf-8")))
        names = [family.name for family in families]
        self.assertEqual(len(names), len(set(names)), "a family is exported twice")
        return {family.name: family for family in families}

    def assertFamilies(self, families: dict[str, Metric], expected: dict[str, str]) -> None:
        self.assertEqual(
            {name: families[name].type for name in expected if name in families}, expected
        )

    def value(self, family: Metric, sample_name: str, **labels: str) -> float:
        [value] = [s.value for s in family.samples if s.name == sample_name and s.labels == labels]
        return value

    def overlay_options(self, options: Any, *argv: str) -> Any:
        # Every interface: the advertised host would come from this host's routes.
        options.find_default_address = lambda family: "192.0.2.62"
        options.parseOptions(
            [
                "--overlay",
                f"tcp:{OVERLAY_PORT}",
                "--http",
                f"tcp:{HTTP_PORT}",
                "--data-dir",
                self.mktemp(),
                *argv,
            ]
        )
        return options

    def test_bootstrap(self) -> None:
        """The bootstrap's /metrics has the process and overlay families, read from the live node."""
        options = self.overlay_options(bootstrap.Options())
        top = self.start(bootstrap.makeService(options, self.reactor))
        assert isinstance(top, RingRole)
        node = top.node
        self.successResultOf(node.put("alice", b"sip:alice@192.0.2.1"))
        # What the node tells its request observers reaches the role's histogram.
        for observer in node.request_observers:
            observer("PING_REQ", 0.3, True)
        families = self.scrape()
        requests = families["p2psip_overlay_request_seconds"]
        labels = {"method": "ping", "outcome": "answered"}
        self.assertEqual(self.value(requests, "p2psip_overlay_request_seconds_count", **labels), 1)
        self.assertFamilies(families, {**PROCESS_FAMILIES, **OVERLAY_FAMILIES})
        stored = families["p2psip_overlay_stored_resources"]
        self.assertEqual(self.value(stored, "p2psip_overlay_stored_resources"), 1.0)
        self.assertEqual(
            self.value(families["p2psip_overlay_links"], "p2psip_overlay_links"),
            node.open_link_count(),
        )
        self.assertNotIn("p2psip_sip_final_responses", families)

    def test_peer_with_sip(self) -> None:
        """A peer with --sip adds the SIP families, call set-up histograms included."""
        options = self.overlay_options(
            peer.Options(),
            "--bootstrap",
            "tcp:192.0.2.1:6084",
            "--sip",
            "udp:15060",
            "--sip-trusted-network",
            "--insecure",
        )
        top = self.start(peer.makeService(options, self.reactor))
        assert isinstance(top, RingRole) and top.sip is not None
        sip = top.sip
        # What the proxy tells its call set-up observers reaches the role's histograms.
        for observer in sip.proxy.call_setup_observers:
            observer.first_response_sent(180, 1.5)
        families = self.scrape()
        setup = families["p2psip_sip_call_setup_seconds"]
        self.assertEqual(
            self.value(setup, "p2psip_sip_call_setup_seconds_sum", status_class="1xx"), 1.5
        )
        self.assertFamilies(families, {**PROCESS_FAMILIES, **OVERLAY_FAMILIES, **SIP_FAMILIES})
        transactions = families["p2psip_sip_transactions"]
        self.assertEqual(
            sorted((s.labels["kind"], s.value) for s in transactions.samples),
            [("client", 0.0), ("server", 0.0)],
        )

    def test_mediator(self) -> None:
        """The mediator's /metrics has the process, broker and STUN families."""
        options = mediator.Options()
        options.parseOptions(["--secret", "x", "--http", f"tcp:{HTTP_PORT}"])
        top = self.start(mediator.makeService(options, reactor=self.reactor))
        top.broker.metrics.attempted("direct")  # type: ignore[attr-defined]
        families = self.scrape()
        self.assertFamilies(families, {**PROCESS_FAMILIES, **MEDIATOR_FAMILIES})
        attempts = families["p2psip_mediator_attempts"]
        self.assertEqual(
            self.value(attempts, "p2psip_mediator_attempts_total", method="direct"), 1.0
        )

    def get(self, path: str) -> Any:
        [site] = [factory for port, factory, *_ in self.reactor.tcpServers if port == HTTP_PORT]
        connection = Connection(site)
        connection.send(http_request("GET", path))
        response = connection.response()
        self.assertEqual(response.code, 200, path)
        return response

    def client_options(self) -> client.Options:
        options = client.Options()
        options.parseOptions(
            [
                "--bootstrap",
                "tcp:192.0.2.1:6084",
                "--http",
                f"tcp:{HTTP_PORT}",
                "--data-dir",
                self.mktemp(),
                "--sip",
                "udp:0:interface=127.0.0.1",
                "--insecure",
            ]
        )
        return options

    def test_status_is_json_on_every_role(self) -> None:
        """Every role's /status is one JSON object, and its /metrics parses, before and after start."""
        sip = ("--sip", "udp:15060", "--sip-trusted-network")
        relay = mediator.Options()
        relay.parseOptions(["--secret", "x", "--http", f"tcp:{HTTP_PORT}"])
        builders = {
            "bootstrap": lambda: bootstrap.makeService(
                self.overlay_options(bootstrap.Options(), *sip, "--insecure"), self.reactor
            ),
            "peer": lambda: peer.makeService(
                self.overlay_options(
                    peer.Options(), "--bootstrap", "tcp:192.0.2.1:6084", *sip, "--insecure"
                ),
                self.reactor,
            ),
            "mediator": lambda: mediator.makeService(relay, reactor=self.reactor),
            "client": lambda: client.makeService(self.client_options(), self.reactor),
        }
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins

        roles = {
            maker.tapname.removeprefix("p2psip-")
            for maker in getPlugins(IServiceMaker)
            if maker.tapname.startswith("p2psip-")
        }
        self.assertEqual(set(builders), roles, "a role without this check: add its builder here")
        for role, build in builders.items():
            with self.subTest(role=role):
                self.reactor = MemoryUDPReactor()
                service = self.start(build())
                response = self.get("/status")
                self.assertEqual(response.headers["content-type"].split(";")[0], "application/json")
                status = json.loads(response.body.decode("utf-8"))
                self.assertIsInstance(status, dict)
                self.assertTrue(status)
                self.assertTrue(self.scrape())
                self.successResultOf(service.stopService())

    def test_roles_leave_the_global_registry_alone(self) -> None:
        """Building and starting roles registers nothing in prometheus_client's default registry."""
        before = {family.name for family in REGISTRY.collect()}
        options = mediator.Options()
        options.parseOptions(["--secret", "x", "--http", "tcp:18087"])
        self.start(mediator.makeService(options, reactor=self.reactor))
        sip = ("--sip", "udp:15060", "--sip-trusted-network")
        self.start(
            bootstrap.makeService(self.overlay_options(bootstrap.Options(), *sip), self.reactor)
        )
        self.assertEqual({family.name for family in REGISTRY.collect()}, before)

    def test_no_timers_after_stop_even_if_neighbours_change(self) -> None:
        """A neighbour change while the node leaves schedules nothing on a stopped role (SIP's saver included)."""
        options = self.overlay_options(
            bootstrap.Options(), "--sip", "udp:15060", "--sip-trusted-network"
        )
        top = bootstrap.makeService(options, self.reactor)
        assert isinstance(top, RingRole)
        top.startService()
        self.successResultOf(top.stopService())
        for observer in top.node.neighbour_observers:
            observer()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stopping_leaves_no_timers(self) -> None:
        """A role scraped and stopped leaves nothing scheduled on its clock."""
        options = self.overlay_options(bootstrap.Options())
        top = bootstrap.makeService(options, self.reactor)
        top.startService()
        self.scrape()
        self.successResultOf(top.stopService())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

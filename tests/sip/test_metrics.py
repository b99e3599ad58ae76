"""The SIP super-node's metrics: the stack's numbers at scrape time and the call set-up histograms."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip.message import make_response
from p2psip.sip.metrics import CallSetupTimes, SipCollector, status_class
from p2psip.sip.transport import SipTransport

from .test_proxy import ALICE_FLOW, NODE_A, NOW, ADDRESS_A, Node, message_text, register_request


class SipMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.node = Node(NODE_A, ADDRESS_A, self.clock, {}, {})
        self.addCleanup(self.node.registrar.stop)
        self.transport = SipTransport(self.clock)
        self.registry = CollectorRegistry(auto_describe=True)
        self.started = True

        def registrations() -> tuple[int, int]:
            aors = self.node.registrar.served_aors()
            return len(aors), sum(len(self.node.registrar.local_bindings(a)) for a in aors)

        self.registry.register(
            SipCollector(
                lambda: self.node.proxy if self.started else None,
                lambda: self.transport if self.started else None,
                registrations,
            )
        )
        self.times = CallSetupTimes(self.registry)
        self.times.watch(self.node.proxy)

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def call(self, ring_after: float, answer_after: float) -> None:
        """Alice is called; her phone rings and answers after the given seconds."""
        self.node.receive(message_text())
        [(invite, hop)] = [(r, h) for r, h in self.node.sender.requests if r.method == "INVITE"]
        self.clock.advance(ring_after)
        self.node.receive(make_response(invite, 180).to_bytes(), hop)
        self.clock.advance(answer_after - ring_after)
        ok = make_response(invite, 200)
        ok.headers.set("To", str(invite.to) + ";tag=uas1")
        self.node.receive(ok.to_bytes(), hop)

    def test_registrations_and_responses(self) -> None:
        """A REGISTER shows as a binding and as a counted 200, by method and status."""
        self.node.receive(register_request("<sip:alice@10.0.0.5:5062>"), ALICE_FLOW)
        self.node.receive(message_text(uri="sip:mallory@example.org"))
        self.assertEqual(self.value("p2psip_sip_registered_aors"), 1.0)
        self.assertEqual(self.value("p2psip_sip_bindings"), 1.0)
        self.assertEqual(
            self.value("p2psip_sip_final_responses_total", method="REGISTER", status="200"), 1.0
        )
        self.assertEqual(
            self.value("p2psip_sip_final_responses_total", method="INVITE", status="480"), 1.0
        )

    def test_levels_and_events_split(self) -> None:
        """Live transactions and TCP connections are gauges; the other numbers are counters."""
        self.node.receive(message_text(uri="sip:mallory@example.org"))
        self.assertEqual(self.value("p2psip_sip_transactions", kind="server"), 1.0)
        self.assertEqual(self.value("p2psip_sip_transactions", kind="client"), 0.0)
        self.assertEqual(self.value("p2psip_sip_tcp_connections"), 0.0)
        text = generate_latest(self.registry).decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        self.assertEqual(
            sorted(
                s.labels["event"]
                for s in families["p2psip_sip_transport_events"].samples
                if s.name.endswith("_total")
            ),
            sorted(set(self.transport.metrics()) - {"tcp_connections"}),
        )
        self.assertEqual(
            sorted(
                s.labels["event"]
                for s in families["p2psip_sip_transaction_events"].samples
                if s.name.endswith("_total")
            ),
            ["retransmissions", "stray_responses", "timeouts", "transport_errors"],
        )
        self.assertEqual(families["p2psip_sip_requests_in_progress"].type, "gauge")

    def test_call_setup_histograms(self) -> None:
        """Ringing after 1.5 s lands in the post-dial histogram, the answer at 12 s in the final one."""
        self.node.receive(register_request("<sip:alice@10.0.0.5:5062>"), ALICE_FLOW)
        self.call(ring_after=1.5, answer_after=12.0)
        self.assertEqual(
            self.value("p2psip_sip_call_setup_seconds_bucket", le="1.0", status_class="1xx"), 0.0
        )
        self.assertEqual(
            self.value("p2psip_sip_call_setup_seconds_bucket", le="2.0", status_class="1xx"), 1.0
        )
        self.assertEqual(self.value("p2psip_sip_call_setup_seconds_sum", status_class="1xx"), 1.5)
        self.assertEqual(
            self.value("p2psip_sip_call_final_response_seconds_sum", status_class="2xx"), 12.0
        )
        self.assertEqual(
            self.value(
                "p2psip_sip_call_final_response_seconds_bucket", le="10.0", status_class="2xx"
            ),
            0.0,
        )
        self.assertIsNone(self.value("p2psip_sip_call_setup_seconds_count", status_class="2xx"))

    def test_location_cache(self) -> None:
        """The location cache's lookups are counted by kind and result."""
        self.node.receive(register_request("<sip:alice@10.0.0.5:5062>"), ALICE_FLOW)
        self.node.receive(message_text())
        self.assertEqual(
            self.value("p2psip_sip_location_cache_lookups_total", kind="aor", result="miss"), 1.0
        )
        self.assertEqual(
            self.value("p2psip_sip_location_cache_lookups_total", kind="aor", result="hit"), 0.0
        )
        self.assertEqual(
            self.value("p2psip_sip_location_cache_events_total", event="invalidations"), 0.0
        )
        self.assertEqual(self.value("p2psip_sip_location_cache_entries"), 0.0)

    def test_before_start(self) -> None:
        """Before the SIP service has a proxy the families exist without samples."""
        self.started = False
        text = generate_latest(self.registry).decode()
        families = [f for f in text_string_to_metric_families(text) if "call_" not in f.name]
        self.assertEqual(len(families), 11)
        self.assertEqual([s for f in families for s in f.samples], [])

    def test_status_class(self) -> None:
        """Status codes collapse to their class."""
        self.assertEqual(
            [status_class(s) for s in (180, 200, 302, 486, 503, 603)],
            ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"],
        )

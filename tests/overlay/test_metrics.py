"""The overlay node's metrics: scrape-time counters and levels, and the request-time histogram."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.message import MessageCode
from p2psip.overlay.metrics import NodeCollector, OverlayMetrics, RequestTimes, method_label
from tests.overlay.ringsim import RingSimulation

FAMILIES = [
    ("p2psip_overlay_events", "counter"),
    ("p2psip_overlay_links", "gauge"),
    ("p2psip_overlay_links_by_path", "gauge"),
    ("p2psip_overlay_stored_resources", "gauge"),
    ("p2psip_overlay_pending_transactions", "gauge"),
]


class FakeNode:
    """The node's public metrics surface with set numbers."""

    def __init__(self) -> None:
        self.counters = {"requests_sent": 12, "links_opened": 3}
        self.request_observers: list[Callable[[str, float, bool], None]] = []
        self.paths = {"connect": 2, "relayed": 1}

    def open_link_count(self) -> int:
        return 3

    def links_by_path(self) -> dict[str, int]:
        return dict(self.paths)

    def stored_resource_count(self) -> int:
        return 40

    def pending_request_count(self) -> int:
        return 5


class NodeCollectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node: FakeNode | None = FakeNode()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(NodeCollector(lambda: self.node))

    def test_values_from_the_node(self) -> None:
        """Counters become ``_total`` samples by event; levels are gauges, links by path."""
        value = self.registry.get_sample_value
        self.assertEqual(value("p2psip_overlay_events_total", {"event": "requests_sent"}), 12.0)
        self.assertEqual(value("p2psip_overlay_events_total", {"event": "links_opened"}), 3.0)
        self.assertEqual(value("p2psip_overlay_links"), 3.0)
        self.assertEqual(value("p2psip_overlay_links_by_path", {"path": "relayed"}), 1.0)
        self.assertEqual(value("p2psip_overlay_stored_resources"), 40.0)
        self.assertEqual(value("p2psip_overlay_pending_transactions"), 5.0)

    def test_read_at_scrape_time(self) -> None:
        """A change in the node shows in the next scrape, with nothing copied in between."""
        assert self.node is not None
        self.node.counters["requests_sent"] += 1
        self.node.paths["udp-punch"] = 4
        value = self.registry.get_sample_value
        self.assertEqual(value("p2psip_overlay_events_total", {"event": "requests_sent"}), 13.0)
        self.assertEqual(value("p2psip_overlay_links_by_path", {"path": "udp-punch"}), 4.0)

    def test_families_parse_with_their_types(self) -> None:
        """The exposition parses back into the five families with their types."""
        text = generate_latest(self.registry).decode()
        self.assertEqual([(f.name, f.type) for f in text_string_to_metric_families(text)], FAMILIES)

    def test_before_the_node_exists(self) -> None:
        """Without a node every family is still there, with no samples rather than made-up zeros."""
        self.node = None
        families = list(text_string_to_metric_families(generate_latest(self.registry).decode()))
        self.assertEqual([(f.name, f.type) for f in families], FAMILIES)
        self.assertEqual([s for f in families for s in f.samples], [])


class RequestTimesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.times = RequestTimes(self.registry)

    def sample(self, suffix: str, **labels: str) -> float | None:
        return self.registry.get_sample_value("p2psip_overlay_request_seconds" + suffix, labels)

    def test_observer_fills_buckets(self) -> None:
        """An answered Store of 20 ms falls in the 25 ms bucket, not the 10 ms one."""
        node = FakeNode()
        self.times.watch(node)
        [observer] = node.request_observers
        observer(MessageCode.STORE_REQ.name, 0.02, True)
        labels = {"method": "store", "outcome": "answered"}
        self.assertEqual(self.sample("_bucket", le="0.01", **labels), 0.0)
        self.assertEqual(self.sample("_bucket", le="0.025", **labels), 1.0)
        self.assertEqual(self.sample("_count", **labels), 1.0)
        self.assertEqual(self.sample("_sum", **labels), 0.02)

    def test_failures_kept_apart(self) -> None:
        """A timed-out Fetch counts under outcome="failed", leaving the answered series alone."""
        self.times.request_completed("FETCH_REQ", 0.004, True)
        self.times.request_completed("FETCH_REQ", 15.0, False)
        self.assertEqual(self.sample("_count", method="fetch", outcome="answered"), 1.0)
        self.assertEqual(self.sample("_sum", method="fetch", outcome="failed"), 15.0)
        self.assertEqual(self.sample("_bucket", le="10.0", method="fetch", outcome="failed"), 0.0)

    def test_method_labels(self) -> None:
        """Labels are the RELOAD method in lower case, without the _REQ suffix."""
        self.assertEqual(
            [
                method_label(code.name)
                for code in (MessageCode.APP_ATTACH_REQ, MessageCode.PING_REQ)
            ],
            ["app_attach", "ping"],
        )


class RealNodeTests(SynchronousTestCase):
    """The metrics read a real OverlayNode through its public surface only."""

    def test_ring_traffic(self) -> None:
        """A peer joining through the founder gives the founder answered requests, timed on the clock."""
        sim = RingSimulation(seed=11)
        self.addCleanup(sim.stop_all)
        sim.network.latency_seconds = 0.01
        founder = sim.found()
        registry = CollectorRegistry(auto_describe=True)
        metrics = OverlayMetrics(registry, lambda: founder)
        metrics.watch(founder)
        sim.join()
        sim.wait(founder.put("alice", b"sip:alice@192.0.2.1"))
        families = {
            f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
        }
        histogram = families["p2psip_overlay_request_seconds"]
        counts = {
            (s.labels["method"], s.labels["outcome"]): s.value
            for s in histogram.samples
            if s.name.endswith("_count")
        }
        sums = {
            (s.labels["method"], s.labels["outcome"]): s.value
            for s in histogram.samples
            if s.name.endswith("_sum")
        }
        methods = {method_label(code.name) for code in MessageCode}
        self.assertTrue(counts)
        for (method, outcome), count in counts.items():
            self.assertIn(method, methods)
            self.assertEqual(outcome, "answered")
            # Each answer needs at least one round trip over a 10 ms link.
            self.assertGreaterEqual(sums[(method, outcome)], 0.02 * count - 1e-9)
        events = {
            s.labels["event"]: s.value
            for s in families["p2psip_overlay_events"].samples
            if s.name == "p2psip_overlay_events_total"
        }
        self.assertEqual(events, {name: float(n) for name, n in founder.counters.items()})
        [links] = families["p2psip_overlay_links"].samples
        self.assertEqual(links.value, float(founder.open_link_count()))

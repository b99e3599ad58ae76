"""The broker's metrics: counters read back for /status, levels read at scrape time."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.nat import broker, control_auth, control_protocol


class FakeLink:
    def send(self, message: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class BrokerMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.broker = broker.Broker(
            Clock(), control_auth.Secrets(shared=b"s"), registry=self.registry
        )
        self.metrics = self.broker.metrics

    def test_status_reads_the_counters(self) -> None:
        """/status numbers are the exported counters' values; methods never tried are left out."""
        self.metrics.attempted(control_protocol.DIRECT)
        self.metrics.attempted(control_protocol.DIRECT)
        self.metrics.attempted(control_protocol.RELAYED)
        self.metrics.succeeded(control_protocol.RELAYED)
        self.metrics.relayed(4096)
        self.metrics.failed()
        self.assertEqual(self.metrics.attempts, {"direct": 2, "relayed": 1})
        self.assertEqual(self.metrics.successes, {"relayed": 1})
        self.assertEqual((self.metrics.relayed_bytes, self.metrics.failures), (4096, 1))
        self.assertEqual(
            self.registry.get_sample_value("p2psip_mediator_attempts_total", {"method": "direct"}),
            2.0,
        )
        self.assertEqual(
            self.registry.get_sample_value("p2psip_mediator_relayed_bytes_total"), 4096.0
        )

    def test_every_method_exported_from_the_start(self) -> None:
        """Each method's counter exists at 0 before any attempt, so rate() works from the first scrape."""
        for method in (*control_protocol.TCP_METHODS, control_protocol.UDP_PUNCH):
            self.assertEqual(
                self.registry.get_sample_value(
                    "p2psip_mediator_successes_total", {"method": method}
                ),
                0.0,
            )

    def test_levels_at_scrape_time(self) -> None:
        """Clients online is read from the broker when scraped."""
        self.assertEqual(self.registry.get_sample_value("p2psip_mediator_clients_online"), 0.0)
        self.broker.clients["alice"] = FakeLink()
        self.assertEqual(self.registry.get_sample_value("p2psip_mediator_clients_online"), 1.0)
        self.assertEqual(self.registry.get_sample_value("p2psip_mediator_relays_active"), 0.0)

    def test_own_registry_by_default(self) -> None:
        """A broker built without a registry counts in a registry of its own."""
        other = broker.Broker(Clock(), control_auth.Secrets(shared=b"s"))
        other.metrics.auth_failed()
        self.assertEqual(
            other.metrics.registry.get_sample_value("p2psip_mediator_auth_failures_total"), 1.0
        )
        self.assertEqual(self.registry.get_sample_value("p2psip_mediator_auth_failures_total"), 0.0)

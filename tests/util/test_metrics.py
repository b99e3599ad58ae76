"""The shared parts of every role's metrics: the role registry and reading counters back."""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from twisted.trial.unittest import SynchronousTestCase

from p2psip.util.metrics import PeakMemoryCollector, counter_values, role_registry


class Clashing:
    """A collector exporting a name the process collector already uses."""

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("process_max_resident_memory_bytes", "Clash.", value=1.0)


class RoleRegistryTests(SynchronousTestCase):
    def test_process_metrics(self) -> None:
        """A role registry exports the process collector's metrics and the peak memory."""
        registry = role_registry()
        if sys.platform.startswith("linux"):
            self.assertGreater(registry.get_sample_value("process_start_time_seconds") or 0, 0)
            self.assertGreater(registry.get_sample_value("process_open_fds") or 0, 0)
        self.assertGreater(registry.get_sample_value("process_max_resident_memory_bytes") or 0, 0)

    def test_registries_are_separate(self) -> None:
        """Two roles' registries do not share metrics, so two nodes in one process can both count."""
        first, second = role_registry(), role_registry()
        Counter("p2psip_demo_total", "Demo.", registry=first).inc()
        Counter("p2psip_demo_total", "Demo.", registry=second).inc(5)
        self.assertEqual(
            (
                first.get_sample_value("p2psip_demo_total"),
                second.get_sample_value("p2psip_demo_total"),
            ),
            (1.0, 5.0),
        )

    def test_clash_refused_at_registration(self) -> None:
        """A second collector of an existing name is refused when registered, not at scrape time."""
        registry = role_registry()
        self.assertRaises(ValueError, registry.register, Clashing())

    def test_peak_memory_in_bytes(self) -> None:
        """The peak memory gauge converts the kernel's KiB to bytes (Linux)."""
        usage = resource.struct_rusage((0.0, 0.0, 2048) + (0,) * 13)
        self.patch(resource, "getrusage", lambda who: usage)
        [family] = PeakMemoryCollector().collect()
        [sample] = family.samples
        expected = 2048.0 if sys.platform == "darwin" else 2048.0 * 1024
        self.assertEqual(
            (family.name, family.type, sample.value),
            ("process_max_resident_memory_bytes", "gauge", expected),
        )


class CounterValuesTests(SynchronousTestCase):
    def test_labelled(self) -> None:
        """Values are keyed by label values in the counter's label order; _created is left out."""
        registry = CollectorRegistry()
        counter = Counter("p2psip_x_total", "X.", ["method", "outcome"], registry=registry)
        counter.labels("store", "answered").inc(2)
        counter.labels(outcome="failed", method="fetch").inc()
        self.assertEqual(
            counter_values(counter),
            {("store", "answered"): 2.0, ("fetch", "failed"): 1.0},
        )

    def test_unlabelled(self) -> None:
        """An unlabelled counter has one value, under the empty tuple."""
        counter = Counter("p2psip_y_total", "Y.", registry=CollectorRegistry())
        counter.inc(7)
        self.assertEqual(counter_values(counter), {(): 7.0})

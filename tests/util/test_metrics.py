"""Tests for the metrics registry and its Prometheus text rendering."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2psip.util.metrics import (
    CONTENT_TYPE,
    Counter,
    MetricError,
    Registry,
    format_value,
    register_process_metrics,
)


class CounterTests(SynchronousTestCase):
    def test_unlabelled_counter_renders_zero(self) -> None:
        """A fresh counter without labels renders HELP, TYPE and a zero sample."""
        registry = Registry()
        registry.counter("p2psip_joins_total", "Joins handled.")
        self.assertEqual(
            registry.render(),
            "# HELP p2psip_joins_total Joins handled.\n"
            "# TYPE p2psip_joins_total counter\n"
            "p2psip_joins_total 0\n",
        )

    def test_labelled_counter(self) -> None:
        """Label sets render sorted, by name or position, with their counts."""
        registry = Registry()
        counter = registry.counter("p2psip_messages_total", "Messages.", labels=("method", "dir"))
        counter.labels(method="store", dir="in").inc()
        counter.labels("fetch", "in").inc(2)
        counter.labels(method="store", dir="in").inc()
        self.assertEqual(
            registry.render().splitlines()[2:],
            [
                'p2psip_messages_total{method="fetch",dir="in"} 2',
                'p2psip_messages_total{method="store",dir="in"} 2',
            ],
        )

    def test_counter_refuses_negative(self) -> None:
        """A counter cannot go down."""
        counter = Counter("c_total", "c")
        self.assertRaises(MetricError, counter.inc, -1)

    def test_wrong_labels(self) -> None:
        """Using the wrong label names, or none where some are declared, is an error."""
        counter = Counter("c_total", "c", labels=("a",))
        self.assertRaises(MetricError, counter.labels, b="x")
        self.assertRaises(MetricError, counter.labels, "x", "y")
        self.assertRaises(MetricError, counter.inc)

    def test_label_values_are_escaped(self) -> None:
        """Backslash, quote and newline in label values are escaped."""
        registry = Registry()
        registry.counter("c_total", "c", labels=("v",)).labels(v='a\\b"c\nd').inc()
        self.assertIn('c_total{v="a\\\\b\\"c\\nd"} 1', registry.render())

    def test_help_is_escaped(self) -> None:
        """A newline in help text cannot start a new exposition line."""
        registry = Registry()
        registry.counter("c_total", "line one\nline two \\")
        self.assertIn("# HELP c_total line one\\nline two \\\\\n", registry.render())


class GaugeTests(SynchronousTestCase):
    def test_set_inc_dec(self) -> None:
        """A plain gauge follows set, inc and dec."""
        registry = Registry()
        gauge = registry.gauge("g", "g")
        gauge.set(5)
        gauge.inc(2)
        gauge.dec()
        self.assertEqual(gauge.value, 6)
        self.assertIn("\ng 6\n", registry.render())

    def test_computed_at_scrape_time(self) -> None:
        """A gauge with a function reports its value when rendered, not when created."""
        table = [1, 2]
        registry = Registry()
        registry.gauge("p2psip_successors", "Successors.", function=lambda: len(table))
        table.append(3)
        self.assertIn("p2psip_successors 3\n", registry.render())

    def test_labelled_function(self) -> None:
        """A labelled gauge's function returns a mapping from label values to numbers."""
        registry = Registry()
        registry.gauge(
            "p2psip_connections",
            "Connections.",
            labels=("state",),
            function=lambda: {("open",): 4, ("connecting",): 1},
        )
        self.assertEqual(
            registry.render().splitlines()[2:],
            ['p2psip_connections{state="connecting"} 1', 'p2psip_connections{state="open"} 4'],
        )

    def test_child_function(self) -> None:
        """One label set of a gauge can be computed while another is set."""
        registry = Registry()
        gauge = registry.gauge("t", "Table sizes.", labels=("table",))
        gauge.labels(table="fingers").set_function(lambda: 7)
        gauge.labels(table="storage").set(2)
        self.assertIn('t{table="fingers"} 7\nt{table="storage"} 2\n', registry.render())

    def test_failing_function_is_logged_and_skipped(self) -> None:
        """A function that raises is logged as a failure and only its metric is left out."""
        registry = Registry()
        registry.gauge("broken", "b", function=lambda: 1 / 0)
        registry.gauge("fine", "f").set(1)
        with capturedLogs() as events:
            text = registry.render()
        self.assertNotIn("broken", text)
        self.assertIn("fine 1\n", text)
        self.assertEqual([e["log_level"] for e in events], [LogLevel.critical])
        self.flushLoggedErrors(ZeroDivisionError)


class HistogramTests(SynchronousTestCase):
    def test_buckets_are_cumulative(self) -> None:
        """Buckets count observations at or below their bound, cumulatively, plus +Inf."""
        registry = Registry()
        histogram = registry.histogram("rtt_seconds", "RTT.", buckets=(0.1, 1.0))
        for value in (0.05, 0.1, 0.5, 3.0):
            histogram.observe(value)
        self.assertEqual(
            registry.render().splitlines()[2:],
            [
                'rtt_seconds_bucket{le="0.1"} 2',
                'rtt_seconds_bucket{le="1.0"} 3',
                'rtt_seconds_bucket{le="+Inf"} 4',
                "rtt_seconds_sum 3.65",
                "rtt_seconds_count 4",
            ],
        )

    def test_labelled_histogram(self) -> None:
        """The le label comes after the declared labels."""
        registry = Registry()
        histogram = registry.histogram("h", "h", labels=("method",), buckets=(1,))
        histogram.labels(method="fetch").observe(0.5)
        self.assertIn('h_bucket{method="fetch",le="1.0"} 1\n', registry.render())
        self.assertIn('h_count{method="fetch"} 1\n', registry.render())

    def test_observe_deferred(self) -> None:
        """observe_deferred records the clock time until the Deferred fires, success or failure."""
        clock = Clock()
        histogram = Registry().histogram("h", "h", labels=("outcome",), buckets=(1, 10))
        ok: Deferred[str] = Deferred()
        failed: Deferred[str] = Deferred()
        self.assertIs(histogram.labels(outcome="ok").observe_deferred(ok, clock), ok)
        histogram.labels(outcome="error").observe_deferred(failed, clock)
        clock.advance(0.5)
        ok.callback("answer")
        clock.advance(4.5)
        failed.errback(ValueError("timeout"))
        self.assertEqual(self.successResultOf(ok), "answer")
        self.failureResultOf(failed, ValueError)
        self.assertEqual(histogram.labels(outcome="ok").bucket_counts, [1, 0])
        self.assertEqual(histogram.labels(outcome="error").bucket_counts, [0, 1])
        self.assertEqual(histogram.labels(outcome="error").sum, 5.0)

    def test_unlabelled_observe_deferred(self) -> None:
        """An unlabelled histogram times Deferreds directly."""
        clock = Clock()
        registry = Registry()
        histogram = registry.histogram("h", "h", buckets=(1,))
        pending: Deferred[None] = Deferred()
        histogram.observe_deferred(pending, clock)
        clock.advance(2)
        pending.callback(None)
        self.assertIn('h_bucket{le="1.0"} 0\nh_bucket{le="+Inf"} 1\nh_sum 2\n', registry.render())

    def test_le_is_reserved(self) -> None:
        """A histogram cannot declare its own le label."""
        self.assertRaises(MetricError, Registry().histogram, "h", "h", labels=("le",))

    def test_buckets_must_increase(self) -> None:
        """Unsorted or empty buckets are refused."""
        self.assertRaises(MetricError, Registry().histogram, "h", "h", buckets=(2, 1))
        self.assertRaises(MetricError, Registry().histogram, "h", "h", buckets=())


class RegistryTests(SynchronousTestCase):
    def test_names_are_validated(self) -> None:
        """Metric and label names outside the Prometheus grammar are refused."""
        registry = Registry()
        for name in ("", "1abc", "a-b", "a b", "é"):
            self.assertRaises(MetricError, registry.counter, name, "x")
        for label in ("", "1a", "a-b", "__reserved"):
            self.assertRaises(MetricError, registry.counter, "ok_total", "x", labels=(label,))

    def test_duplicates_refused(self) -> None:
        """Registering a name twice, or one a histogram's samples use, is refused."""
        registry = Registry()
        registry.counter("x_total", "x")
        self.assertRaises(MetricError, registry.gauge, "x_total", "x")
        registry.histogram("lat", "l")
        self.assertRaises(MetricError, registry.gauge, "lat_count", "x")

    def test_lookup(self) -> None:
        """Registered metrics can be found by name."""
        registry = Registry()
        counter = registry.counter("x_total", "x")
        self.assertIs(registry["x_total"], counter)
        self.assertIn("x_total", registry)

    def test_empty_registry(self) -> None:
        """An empty registry renders as an empty document."""
        self.assertEqual(Registry().render(), "")

    def test_content_type(self) -> None:
        """The content type announces format version 0.0.4."""
        self.assertIn("version=0.0.4", CONTENT_TYPE)

    def test_process_metrics(self) -> None:
        """Process metrics report the start time from the injected clock."""
        clock = Clock()
        clock.advance(1000)
        registry = Registry()
        register_process_metrics(registry, clock)
        clock.advance(5)
        text = registry.render()
        self.assertIn("process_start_time_seconds 1000\n", text)
        self.assertIn("process_max_resident_memory_bytes ", text)


class FormatTests(SynchronousTestCase):
    def test_special_values(self) -> None:
        """Infinities and NaN use Prometheus spellings; integral floats print bare."""
        self.assertEqual(
            [format_value(v) for v in (math.inf, -math.inf, math.nan, 3.0, 0.25)],
            ["+Inf", "-Inf", "NaN", "3", "0.25"],
        )

    @settings(deadline=None)
    @given(st.floats(allow_nan=False))
    def test_round_trip(self, value: float) -> None:
        """Every float renders to text that parses back to the same float."""
        text = format_value(value).replace("+Inf", "inf").replace("-Inf", "-inf")
        self.assertEqual(float(text), value)

    @settings(deadline=None)
    @given(st.text())
    def test_any_label_value_stays_on_one_line(self, value: str) -> None:
        """Whatever the label value, each sample is one line that quotes it fully."""
        registry = Registry()
        registry.counter("c_total", "c", labels=("v",)).labels(v=value).inc()
        lines = registry.render().split("\n")
        self.assertEqual(len(lines), 4)
        self.assertTrue(lines[2].startswith('c_total{v="') and lines[2].endswith('"} 1'))

"""
A small metrics registry rendered in the Prometheus text exposition format.

Every role serves ``GET /metrics`` so that an operator's Prometheus (or
anything that reads format 0.0.4) can scrape it.  The format is line based::

    # HELP p2psip_messages_received_total RELOAD messages received, by method.
    # TYPE p2psip_messages_received_total counter
    p2psip_messages_received_total{method="store"} 12
    # HELP p2psip_request_seconds RELOAD transaction latency.
    # TYPE p2psip_request_seconds histogram
    p2psip_request_seconds_bucket{le="0.005"} 3
    ...
    p2psip_request_seconds_bucket{le="+Inf"} 9
    p2psip_request_seconds_sum 0.42
    p2psip_request_seconds_count 9

We keep our own registry instead of depending on ``prometheus_client``: the
roles need four metric types, no global state (tests build many nodes in one
process, each with its own registry) and gauges computed at scrape time from
the live topology.

Label values must come from a bounded set (method names, table names), never
from Internet input such as addresses: each distinct label set is kept for
the life of the process.
"""

from __future__ import annotations

import math
import os
import re
import resource
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

#: Bucket upper bounds for network latencies, in seconds (RELOAD transactions
#: time out after 15 s by default, so the buckets stop there).
DEFAULT_LATENCY_BUCKETS_SECONDS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    15.0,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

T = TypeVar("T")
LabelValues = tuple[str, ...]
GaugeFunction = Callable[[], Union[float, Mapping[LabelValues, float]]]


class MetricError(ValueError):
    """A metric or label name is invalid, or a metric is used with the wrong labels."""


def format_value(value: float) -> str:
    """Render a sample value the way Prometheus parses it (``+Inf``, ``NaN``, integers bare)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{name}="{_escape_label_value(value)}"' for name, value in zip(names, values))
    return "{" + pairs + "}"


class _Metric:
    """What every metric type shares: name, help text, label names and children."""

    kind = ""
    reserved_labels: frozenset[str] = frozenset()

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        if not METRIC_NAME.match(name):
            raise MetricError(f"invalid metric name {name!r}: use letters, digits, _ and :")
        for label in labels:
            if not LABEL_NAME.match(label) or label.startswith("__"):
                raise MetricError(f"invalid label name {label!r} on metric {name}")
            if label in self.reserved_labels:
                raise MetricError(f"label {label!r} is reserved on {self.kind} {name}")
        if len(set(labels)) != len(labels):
            raise MetricError(f"duplicate label names on metric {name}: {labels}")
        self.name = name
        self.help = help
        self.label_names: tuple[str, ...] = tuple(labels)
        self._children: dict[LabelValues, object] = {}

    def _new_child(self) -> object:
        raise NotImplementedError

    def _child(self, values: LabelValues) -> object:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._new_child()
        return child

    def _label_values(self, args: tuple[object, ...], kwargs: Mapping[str, object]) -> LabelValues:
        if args and kwargs:
            raise MetricError(f"{self.name}: give label values by position or by name, not both")
        if kwargs:
            if set(kwargs) != set(self.label_names):
                raise MetricError(
                    f"{self.name} takes labels {self.label_names}, got {tuple(sorted(kwargs))}"
                )
            return tuple(str(kwargs[name]) for name in self.label_names)
        if len(args) != len(self.label_names):
            raise MetricError(
                f"{self.name} takes labels {self.label_names}, got {len(args)} values"
            )
        return tuple(str(value) for value in args)

    def _unlabelled(self) -> object:
        if self.label_names:
            raise MetricError(f"{self.name} has labels {self.label_names}: call .labels(...) first")
        return self._child(())

    def header_lines(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def sample_names(self) -> tuple[str, ...]:
        """Every name this metric's samples use, to refuse clashing registrations."""
        return (self.name,)

    def samples(self) -> Iterator[tuple[str, Sequence[str], Sequence[str], float]]:
        """(sample name, label names, label values, value), in a stable order."""
        raise NotImplementedError


class CounterChild:
    """One label set of a counter: a value that only goes up."""

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise MetricError("a counter only goes up; use a gauge for values that go down")
        self.value += amount


class Counter(_Metric):
    """Counts events since the process started (name it ``..._total``)."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        if not self.label_names:
            self._child(())

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def labels(self, *values: object, **named: object) -> CounterChild:
        child = self._child(self._label_values(values, named))
        assert isinstance(child, CounterChild)
        return child

    def inc(self, amount: float = 1.0) -> None:
        child = self._unlabelled()
        assert isinstance(child, CounterChild)
        child.inc(amount)

    @property
    def value(self) -> float:
        child = self._unlabelled()
        assert isinstance(child, CounterChild)
        return child.value

    def samples(self) -> Iterator[tuple[str, Sequence[str], Sequence[str], float]]:
        for values, child in sorted(self._children.items()):
            assert isinstance(child, CounterChild)
            yield self.name, self.label_names, values, child.value


class GaugeChild:
    """One label set of a gauge: a value that is set, or computed when scraped."""

    def __init__(self) -> None:
        self._value = 0.0
        self._function: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        self._function = None
        self._value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        self._value += amount

    def dec(self, amount: float = 1.0) -> None:
        self._value -= amount

    def set_function(self, function: Callable[[], float]) -> None:
        """Compute the value at scrape time (for sizes of live tables)."""
        self._function = function

    @property
    def value(self) -> float:
        if self._function is not None:
            return float(self._function())
        return self._value


class Gauge(_Metric):
    """
    A value that goes up and down.

    ``function`` computes the whole gauge at scrape time: for an unlabelled
    gauge it returns a number, for a labelled one a mapping from label-value
    tuples to numbers (for example connections by state).
    """

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        function: GaugeFunction | None = None,
    ) -> None:
        super().__init__(name, help, labels)
        self._function = function
        if not self.label_names and function is None:
            self._child(())

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def labels(self, *values: object, **named: object) -> GaugeChild:
        child = self._child(self._label_values(values, named))
        assert isinstance(child, GaugeChild)
        return child

    def _single(self) -> GaugeChild:
        child = self._unlabelled()
        assert isinstance(child, GaugeChild)
        return child

    def set(self, value: float) -> None:
        self._single().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._single().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._single().dec(amount)

    def set_function(self, function: Callable[[], float]) -> None:
        self._single().set_function(function)

    @property
    def value(self) -> float:
        if self._function is not None and not self.label_names:
            return float(self._function())  # type: ignore[arg-type]
        return self._single().value

    def samples(self) -> Iterator[tuple[str, Sequence[str], Sequence[str], float]]:
        if self._function is not None:
            result = self._function()
            if isinstance(result, Mapping):
                for values, value in sorted(result.items()):
                    values = tuple(str(v) for v in values)
                    if len(values) != len(self.label_names):
                        raise MetricError(f"{self.name}: function gave label values {values}")
                    yield self.name, self.label_names, values, float(value)
            else:
                yield self.name, (), (), float(result)
            return
        for values, child in sorted(self._children.items()):
            assert isinstance(child, GaugeChild)
            yield self.name, self.label_names, values, child.value


class HistogramChild:
    """One label set of a histogram: counts per bucket, sum and count."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.bucket_counts = [0] * len(bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for index, bound in enumerate(self._bounds):
            if value <= bound:
                self.bucket_counts[index] += 1
                break

    def observe_deferred(self, deferred: Deferred[T], clock: IReactorTime) -> Deferred[T]:
        """
        Observe the seconds until ``deferred`` fires, with success or failure.

        Returns the same Deferred, so it chains where the request is made.
        """
        started = clock.seconds()

        def observed(result: T) -> T:
            self.observe(clock.seconds() - started)
            return result

        deferred.addBoth(observed)
        return deferred


class Histogram(_Metric):
    """Distribution of observations (latencies in seconds) over fixed buckets."""

    kind = "histogram"
    reserved_labels = frozenset({"le"})

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Iterable[float] = DEFAULT_LATENCY_BUCKETS_SECONDS,
    ) -> None:
        super().__init__(name, help, labels)
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise MetricError(f"{name}: buckets must be increasing and not empty")
        self.bounds = bounds
        if not self.label_names:
            self._child(())

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def labels(self, *values: object, **named: object) -> HistogramChild:
        child = self._child(self._label_values(values, named))
        assert isinstance(child, HistogramChild)
        return child

    def observe(self, value: float) -> None:
        child = self._unlabelled()
        assert isinstance(child, HistogramChild)
        child.observe(value)

    def observe_deferred(self, deferred: Deferred[T], clock: IReactorTime) -> Deferred[T]:
        """Observe the seconds until ``deferred`` fires (see HistogramChild.observe_deferred)."""
        child = self._unlabelled()
        assert isinstance(child, HistogramChild)
        return child.observe_deferred(deferred, clock)

    def sample_names(self) -> tuple[str, ...]:
        return (self.name + "_bucket", self.name + "_sum", self.name + "_count")

    def samples(self) -> Iterator[tuple[str, Sequence[str], Sequence[str], float]]:
        bucket_labels = (*self.label_names, "le")
        for values, child in sorted(self._children.items()):
            assert isinstance(child, HistogramChild)
            cumulative = 0
            for bound, count in zip(self.bounds, child.bucket_counts):
                cumulative += count
                yield self.name + "_bucket", bucket_labels, (*values, repr(bound)), cumulative
            yield self.name + "_bucket", bucket_labels, (*values, "+Inf"), child.count
            yield self.name + "_sum", self.label_names, values, child.sum
            yield self.name + "_count", self.label_names, values, child.count


Metric = Union[Counter, Gauge, Histogram]


class Registry:
    """The metrics of one node; ``render()`` is what ``/metrics`` serves."""

    log = Logger()

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}
        self._sample_names: set[str] = set()

    def register(self, metric: Metric) -> Metric:
        names = set(metric.sample_names()) | {metric.name}
        clash = names & (self._sample_names | set(self._metrics))
        if clash:
            raise MetricError(f"metric name(s) {sorted(clash)} already registered")
        self._metrics[metric.name] = metric
        self._sample_names |= names
        return metric

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help, labels)
        self.register(metric)
        return metric

    def gauge(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        function: GaugeFunction | None = None,
    ) -> Gauge:
        metric = Gauge(name, help, labels, function)
        self.register(metric)
        return metric

    def histogram(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Iterable[float] = DEFAULT_LATENCY_BUCKETS_SECONDS,
    ) -> Histogram:
        metric = Histogram(name, help, labels, buckets)
        self.register(metric)
        return metric

    def __getitem__(self, name: str) -> Metric:
        return self._metrics[name]

    def __contains__(self, name: object) -> bool:
        return name in self._metrics

    def render(self) -> str:
        """
        The whole registry in text format 0.0.4.

        A computed gauge that raises is logged and left out, so one broken
        callback cannot take the other metrics down with it.
        """
        lines: list[str] = []
        for metric in self._metrics.values():
            try:
                samples = list(metric.samples())
            except Exception:
                self.log.failure("while computing metric {name}", name=metric.name)
                continue
            lines.extend(metric.header_lines())
            for sample_name, label_names, label_values, value in samples:
                lines.append(
                    f"{sample_name}{_label_text(label_names, label_values)} {format_value(value)}"
                )
        return "\n".join(lines) + "\n" if lines else ""


def register_process_metrics(registry: Registry, clock: IReactorTime) -> None:
    """Add the standard process gauges every role exposes (start time, memory, open files)."""
    started = clock.seconds()
    registry.gauge(
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch in seconds.",
        function=lambda: started,
    )
    registry.gauge(
        "process_max_resident_memory_bytes",
        "Peak resident memory of the process in bytes.",
        # Linux reports ru_maxrss in KiB.
        function=lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
    if os.path.isdir("/proc/self/fd"):
        registry.gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            function=lambda: len(os.listdir("/proc/self/fd")),
        )

"""
An overlay node's ``/metrics``: its counters and table sizes, read when
Prometheus scrapes, and how long its RELOAD requests take.

Only the node's public metrics surface is used (:class:`NodeMetricsSource`),
so the node's internals can change without touching this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from p2psip.util.metrics import NETWORK_LATENCY_BUCKETS_SECONDS


class NodeMetricsSource(Protocol):
    """What the metrics read of an overlay node (``OverlayNode`` has all of it)."""

    @property
    def counters(self) -> Mapping[str, int]:
        """Events since start, by name (links_opened, requests_sent, ...)."""

    @property
    def request_observers(self) -> list[Callable[[str, float, bool], None]]:
        """Called as (method name, seconds, answered) when a request of ours completes."""

    def open_link_count(self) -> int: ...

    def links_by_path(self) -> dict[str, int]: ...

    def stored_resource_count(self) -> int: ...

    def pending_request_count(self) -> int: ...


class NodeCollector:
    """
    The node's counters and levels, computed at scrape time.

    ``node`` returns the node, or None before the overlay service has made
    it; the families are then exported without samples (there is nothing to
    count yet), which keeps their names known to the registry.
    """

    def __init__(self, node: Callable[[], NodeMetricsSource | None]) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        node = self._node()
        events = CounterMetricFamily(
            "p2psip_overlay_events_total", "Overlay events since start, by event.", labels=["event"]
        )
        links = GaugeMetricFamily("p2psip_overlay_links", "Open overlay links.")
        by_path = GaugeMetricFamily(
            "p2psip_overlay_links_by_path",
            "Open overlay links by how they were made: connect (plain), or the mediator's method.",
            labels=["path"],
        )
        stored = GaugeMetricFamily(
            "p2psip_overlay_stored_resources", "Resources stored on this node."
        )
        pending = GaugeMetricFamily(
            "p2psip_overlay_pending_transactions", "Outstanding RELOAD requests of this node."
        )
        if node is not None:
            for event, count in sorted(node.counters.items()):
                events.add_metric([event], float(count))
            links.add_metric([], float(node.open_link_count()))
            for path, count in sorted(node.links_by_path().items()):
                by_path.add_metric([path], float(count))
            stored.add_metric([], float(node.stored_resource_count()))
            pending.add_metric([], float(node.pending_request_count()))
        yield from (events, links, by_path, stored, pending)


#: The values of the ``outcome`` label of :data:`REQUEST_SECONDS`.
ANSWERED = "answered"
FAILED = "failed"


def method_label(method_name: str) -> str:
    """``STORE_REQ`` -> ``store``: the RELOAD method as the label shows it."""
    return method_name.removesuffix("_REQ").lower()


class RequestTimes:
    """
    ``p2psip_overlay_request_seconds``: seconds from sending a RELOAD request
    to its answer, by method and outcome.

    Failed requests (error answers, timeouts, lost links) are kept apart
    under ``outcome="failed"``: a timeout lasts the whole request timeout and
    would otherwise hide the real answer times in the upper buckets.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            "p2psip_overlay_request_seconds",
            "Seconds from sending a RELOAD request to its answer or failure, by method and outcome.",
            ["method", "outcome"],
            registry=registry,
            buckets=NETWORK_LATENCY_BUCKETS_SECONDS,
        )

    def watch(self, node: NodeMetricsSource) -> None:
        """Observe every request ``node`` sends from now on."""
        node.request_observers.append(self.request_completed)

    def request_completed(self, method_name: str, seconds: float, answered: bool) -> None:
        """The node's request observer (see ``OverlayNode.request_observers``)."""
        self.histogram.labels(method_label(method_name), ANSWERED if answered else FAILED).observe(
            seconds
        )


class OverlayMetrics:
    """Everything an overlay role exports about its node, in ``registry``."""

    def __init__(
        self, registry: CollectorRegistry, node: Callable[[], NodeMetricsSource | None]
    ) -> None:
        registry.register(NodeCollector(node))
        self.request_times = RequestTimes(registry)

    def watch(self, node: NodeMetricsSource) -> None:
        """Start timing the requests of ``node``; call once, when the node is made."""
        self.request_times.watch(node)


__all__ = [
    "ANSWERED",
    "FAILED",
    "NodeCollector",
    "NodeMetricsSource",
    "OverlayMetrics",
    "RequestTimes",
    "method_label",
]

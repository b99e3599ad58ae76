"""
What every role's ``/metrics`` shares, on top of ``prometheus_client``.

Each role builds one :class:`~prometheus_client.CollectorRegistry` with
:func:`role_registry` and hands it to ``p2psip.web.site.build_site``, which
serves it in the Prometheus text format.  The library's global default
registry is never used: tests build many nodes in one process, and each must
report only its own numbers.  Every ``Counter``, ``Gauge`` and ``Histogram``
made here is therefore given ``registry=`` explicitly.

Two kinds of sources feed a registry:

* values that already live in the role's state (a node's counters dict, the
  size of a table) are read when Prometheus scrapes, by a collector that
  yields ``CounterMetricFamily``/``GaugeMetricFamily`` objects; nothing is
  copied on the hot path;
* events that nothing else records (a request's latency) are observed into
  real ``Counter`` and ``Histogram`` objects as they happen.

Label values must come from a bounded set (method names, event names,
status classes), never from Internet input such as addresses: each distinct
label set is a time series kept for the life of the process.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

#: Bucket upper bounds for overlay (network) latencies, in seconds.  RELOAD
#: transactions time out after 15 s by default, so the buckets stop there.
NETWORK_LATENCY_BUCKETS_SECONDS: tuple[float, ...] = (
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


class PeakMemoryCollector:
    """
    ``process_max_resident_memory_bytes``: the peak resident set size.

    prometheus_client's process collector reports the current resident size;
    the peak is what tells an operator how much memory to provision, so the
    roles keep exporting it as they did before they used the library.
    """

    def collect(self) -> Iterator[Metric]:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports ru_maxrss in KiB, macOS in bytes.
        peak_bytes = peak if sys.platform == "darwin" else peak * 1024
        yield GaugeMetricFamily(
            "process_max_resident_memory_bytes",
            "Peak resident memory of the process in bytes.",
            value=float(peak_bytes),
        )


def role_registry() -> CollectorRegistry:
    """
    A new registry for one role, with the standard process metrics in it.

    ``auto_describe`` makes the registry collect each collector once when it
    is registered, so two collectors that would export the same name fail
    when the role is built (``ValueError``) rather than producing scrapes
    that Prometheus rejects.  The role's own collectors must therefore yield every family on
    every collect, with or without samples.
    """
    registry = CollectorRegistry(auto_describe=True)
    # process_start_time_seconds, process_cpu_seconds_total,
    # process_resident_memory_bytes, process_open_fds, ... read from /proc
    # (nothing on systems without it).
    ProcessCollector(registry=registry)
    registry.register(PeakMemoryCollector())
    return registry


def counter_values(counter: Counter) -> dict[tuple[str, ...], float]:
    """
    A ``Counter``'s current values, keyed by its label values in label order (``()`` without labels).

    ``/status`` shows the same numbers a real ``Counter`` exports; this reads
    them through its public ``collect()`` instead of keeping a second copy.
    """
    values: dict[tuple[str, ...], float] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name == metric.name + "_total":
                values[tuple(sample.labels.values())] = sample.value
    return values


__all__ = [
    "NETWORK_LATENCY_BUCKETS_SECONDS",
    "PeakMemoryCollector",
    "counter_values",
    "role_registry",
]

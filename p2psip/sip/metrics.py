"""
A SIP super-node's ``/metrics``: registrations, responses, transaction and
transport counters read when Prometheus scrapes, and call set-up times.

Call set-up is measured at the proxy that receives the INVITE (see
:class:`p2psip.sip.proxy.CallSetupObserver`), in two histograms:

``p2psip_sip_call_setup_seconds``
    INVITE received to the first response other than 100 Trying sent back:
    the post-dial delay, RFC 6076's Session Request Delay.  This is the one
    to alert on: it covers the overlay lookup, the hop to the serving
    super-node and the phone, and none of the time a human takes to answer.
``p2psip_sip_call_final_response_seconds``
    INVITE received to the first final response sent back.  For answered
    calls this includes the ringing, so it shows how long callers wait, not
    how fast the network is; for failures it shows how long a caller waits
    for the bad news.

Both are labelled with ``status_class`` (``1xx`` ... ``6xx``) of the
response that ended the measurement.  A call that crosses two super-nodes
is measured at both; each measures its own part and what follows it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from p2psip.sip.proxy import SipProxy
from p2psip.sip.transport import SipTransport
from p2psip.util.loop_lag import LoopLagProbe

#: Post-dial delay buckets, in seconds: phones ring within a second or two on
#: a healthy ring; 32 s is Timer B, after which the caller gets a 408.
CALL_SETUP_BUCKETS_SECONDS: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    3.0,
    5.0,
    8.0,
    13.0,
    20.0,
    32.0,
)
#: INVITE-to-final buckets, in seconds: up to Timer C (181 s, RFC 3261
#: s16.8) plus the 32 s the proxy waits for a cancelled branch's 487.
FINAL_RESPONSE_BUCKETS_SECONDS: tuple[float, ...] = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    45.0,
    60.0,
    90.0,
    120.0,
    181.0,
    213.0,
)

#: Keys of ``SipTransport.metrics()`` that are levels; the others count events.
TRANSPORT_LEVELS = frozenset({"tcp_connections"})
#: Keys of ``TransactionLayer.metrics()`` that are levels, with their ``kind`` label.
TRANSACTION_LEVELS: Mapping[str, str] = {
    "client_transactions": "client",
    "server_transactions": "server",
}


#: (kind, result, key of ``LocationCache.stats()``) of the cache lookup counter.
CACHE_LOOKUP_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("aor", "hit", "hits"),
    ("aor", "miss", "misses"),
    ("node", "hit", "address_hits"),
    ("node", "miss", "address_misses"),
)


def status_class(status: int) -> str:
    """``486`` -> ``4xx``: a label with six values, whatever a phone answers."""
    return f"{min(max(status // 100, 1), 6)}xx"


class CallSetupTimes:
    """The two call set-up histograms; a :class:`~p2psip.sip.proxy.CallSetupObserver`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.setup = Histogram(
            "p2psip_sip_call_setup_seconds",
            "Seconds from an initial INVITE received to the first response other than "
            "100 Trying sent back (post-dial delay), by status class of that response.",
            ["status_class"],
            registry=registry,
            buckets=CALL_SETUP_BUCKETS_SECONDS,
        )
        self.final = Histogram(
            "p2psip_sip_call_final_response_seconds",
            "Seconds from an initial INVITE received to the first final response sent back "
            "(ringing included), by status class.",
            ["status_class"],
            registry=registry,
            buckets=FINAL_RESPONSE_BUCKETS_SECONDS,
        )

    def watch(self, proxy: SipProxy) -> None:
        """Time every call ``proxy`` receives from now on."""
        proxy.call_setup_observers.append(self)

    def first_response_sent(self, status: int, seconds: float) -> None:
        self.setup.labels(status_class(status)).observe(seconds)

    def final_response_sent(self, status: int, seconds: float) -> None:
        self.final.labels(status_class(status)).observe(seconds)


class SipCollector:
    """
    The SIP stack's counters and levels, read at scrape time.

    The proxy and transport are made when the SIP service starts, so they
    are reached through callables that return None before that; the
    families are then exported without samples.  ``registrations`` returns
    (AORs served here, their bindings).
    """

    def __init__(
        self,
        proxy: Callable[[], SipProxy | None],
        transport: Callable[[], SipTransport | None],
        registrations: Callable[[], tuple[int, int]],
    ) -> None:
        self._proxy = proxy
        self._transport = transport
        self._registrations = registrations

    def collect(self) -> Iterator[Metric]:
        proxy = self._proxy()
        transport = self._transport()
        responses = CounterMetricFamily(
            "p2psip_sip_final_responses_total",
            "Final responses sent to received SIP requests since start.",
            labels=["method", "status"],
        )
        aors = GaugeMetricFamily(
            "p2psip_sip_registered_aors", "AORs with a binding served by this super-node."
        )
        bindings = GaugeMetricFamily(
            "p2psip_sip_bindings", "Contacts registered at this super-node."
        )
        transport_events = CounterMetricFamily(
            "p2psip_sip_transport_events_total",
            "SIP transport events since start, by event.",
            labels=["event"],
        )
        connections = GaugeMetricFamily("p2psip_sip_tcp_connections", "Open SIP TCP connections.")
        transactions = GaugeMetricFamily(
            "p2psip_sip_transactions", "SIP transactions live now, by kind.", labels=["kind"]
        )
        transaction_events = CounterMetricFamily(
            "p2psip_sip_transaction_events_total",
            "SIP transaction-layer events since start, by event.",
            labels=["event"],
        )
        in_progress = GaugeMetricFamily(
            "p2psip_sip_requests_in_progress", "Requests being proxied right now."
        )
        cache_lookups = CounterMetricFamily(
            "p2psip_sip_location_cache_lookups_total",
            "Lookups of an AOR (kind=aor) or a super-node's SIP address (kind=node) by whether "
            "the location cache answered them (hit) or the overlay did (miss).",
            labels=["kind", "result"],
        )
        cache_events = CounterMetricFamily(
            "p2psip_sip_location_cache_events_total",
            "Location cache events since start: background refreshes, invalidations, evictions.",
            labels=["event"],
        )
        cache_entries = GaugeMetricFamily(
            "p2psip_sip_location_cache_entries", "AORs held in the location cache."
        )
        if proxy is not None:
            for (method, status), count in sorted(proxy.outcomes.items()):
                responses.add_metric([method, str(status)], float(count))
            for name, value in sorted(proxy.transactions.metrics().items()):
                if name in TRANSACTION_LEVELS:
                    transactions.add_metric([TRANSACTION_LEVELS[name]], float(value))
                else:
                    transaction_events.add_metric([name], float(value))
            in_progress.add_metric([], float(proxy.pending_requests))
            cache = proxy.location_cache.stats()
            for kind, result, key in CACHE_LOOKUP_COUNTERS:
                cache_lookups.add_metric([kind, result], float(cache[key] or 0))
            for event in ("refreshes", "invalidations", "evictions"):
                cache_events.add_metric([event], float(cache[event] or 0))
            cache_entries.add_metric([], float(cache["entries"] or 0))
            served_aors, served_bindings = self._registrations()
            aors.add_metric([], float(served_aors))
            bindings.add_metric([], float(served_bindings))
        if transport is not None:
            for name, value in sorted(transport.metrics().items()):
                if name in TRANSPORT_LEVELS:
                    connections.add_metric([], float(value))
                else:
                    transport_events.add_metric([name], float(value))
        yield from (
            responses,
            aors,
            bindings,
            transport_events,
            connections,
            transactions,
            transaction_events,
            in_progress,
            cache_lookups,
            cache_events,
            cache_entries,
        )


class OverloadCollector:
    """
    The overload guard's refusals, the requests being worked on and the
    event loop's lag (:mod:`p2psip.sip.overload`), read at scrape time.
    """

    def __init__(self, proxy: Callable[[], SipProxy | None], loop_lag: LoopLagProbe | None) -> None:
        self._proxy = proxy
        self._loop_lag = loop_lag

    def collect(self) -> Iterator[Metric]:
        proxy = self._proxy()
        refused = CounterMetricFamily(
            "p2psip_sip_overload_refusals_total",
            "New INVITEs and REGISTERs answered 503 because the node was overloaded, "
            "by method and reason (pending: too many unanswered requests; lag: event-loop lag).",
            labels=["method", "reason"],
        )
        unanswered = GaugeMetricFamily(
            "p2psip_sip_unanswered_requests",
            "Server transactions without a final response yet (the overload guard's queue).",
        )
        lag = GaugeMetricFamily(
            "p2psip_event_loop_lag_seconds",
            "How late the event loop ran the probe's last call, and its smoothed value "
            "(which the overload guard compares with sip-overload-lag), by kind.",
            labels=["kind"],
        )
        lag_max = GaugeMetricFamily(
            "p2psip_event_loop_lag_max_seconds", "The largest event-loop lag seen since start."
        )
        if proxy is not None:
            unanswered.add_metric([], float(proxy.transactions.unanswered))
            if proxy.overload is not None:
                for (method, reason), count in sorted(proxy.overload.refused.items()):
                    refused.add_metric([method, reason], float(count))
        probe = self._loop_lag
        if probe is not None:
            lag.add_metric(["last"], probe.last_seconds)
            lag.add_metric(["smoothed"], probe.smoothed_seconds)
            lag.add_metric(["p99"], probe.percentile(0.99))
            lag_max.add_metric([], probe.max_seconds)
        yield from (refused, unanswered, lag, lag_max)


__all__ = [
    "OverloadCollector",
    "CALL_SETUP_BUCKETS_SECONDS",
    "FINAL_RESPONSE_BUCKETS_SECONDS",
    "CallSetupTimes",
    "SipCollector",
    "status_class",
]

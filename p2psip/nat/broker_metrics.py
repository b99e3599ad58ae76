"""
The broker's metrics: event counters and levels, through prometheus_client.

Counters (attempts and successes per method, failures, authentication
failures, rate-limited connections, relayed bytes and sessions) are real
``Counter`` objects; ``/status`` reads the same numbers back.  Levels
(clients online, sessions in progress, relays open) are read from the
broker when ``/metrics`` is scraped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric

from p2psip.nat.control_protocol import TCP_METHODS, UDP_PUNCH
from p2psip.util.metrics import counter_values


class BrokerLevels(Protocol):
    """What ``BrokerCollector`` reads from the broker at scrape time."""

    @property
    def clients(self) -> Sized: ...

    @property
    def sessions(self) -> Sized: ...

    @property
    def relays_active(self) -> int: ...


class Metrics:
    """
    The broker's event counters, real ``Counter`` objects in ``registry``.

    ``/metrics`` exports them; ``/status`` reads the same numbers back
    through the properties below.  Method labels come from the fixed set of
    method names, never from client input.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        #: A broker built without one (tests) still counts, in a registry of its own.
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._attempts = Counter(
            "p2psip_mediator_attempts_total",
            "Connection attempts started, per method.",
            ["method"],
            registry=r,
        )
        self._successes = Counter(
            "p2psip_mediator_successes_total",
            "Connections made, per method.",
            ["method"],
            registry=r,
        )
        for method in TCP_METHODS + (UDP_PUNCH,):
            self._attempts.labels(method)
            self._successes.labels(method)
        self._failures = Counter(
            "p2psip_mediator_failures_total",
            "Brokered connections that failed by every method.",
            registry=r,
        )
        self._auth_failures = Counter(
            "p2psip_mediator_auth_failures_total",
            "Control connections that failed authentication.",
            registry=r,
        )
        self._rejected = Counter(
            "p2psip_mediator_rejected_connections_total",
            "Control connections refused by the per-address rate limit.",
            registry=r,
        )
        self._relayed_bytes = Counter(
            "p2psip_mediator_relayed_bytes_total", "Bytes copied by the relay.", registry=r
        )
        self._relay_sessions = Counter(
            "p2psip_mediator_relay_sessions_total", "Relayed sessions set up.", registry=r
        )

    def attempted(self, method: str) -> None:
        self._attempts.labels(method).inc()

    def succeeded(self, method: str) -> None:
        self._successes.labels(method).inc()

    def failed(self) -> None:
        self._failures.inc()

    def auth_failed(self) -> None:
        self._auth_failures.inc()

    def rejected_connection(self) -> None:
        self._rejected.inc()

    def relayed(self, byte_count: int) -> None:
        self._relayed_bytes.inc(byte_count)

    def relay_session(self) -> None:
        self._relay_sessions.inc()

    @staticmethod
    def _value(counter: Counter) -> int:
        return int(counter_values(counter)[()])

    @staticmethod
    def _per_method(counter: Counter) -> dict[str, int]:
        values = counter_values(counter)
        return {method: int(value) for (method,), value in sorted(values.items()) if value}

    @property
    def attempts(self) -> dict[str, int]:
        return self._per_method(self._attempts)

    @property
    def successes(self) -> dict[str, int]:
        return self._per_method(self._successes)

    @property
    def failures(self) -> int:
        return self._value(self._failures)

    @property
    def auth_failures(self) -> int:
        return self._value(self._auth_failures)

    @property
    def rejected_connections(self) -> int:
        return self._value(self._rejected)

    @property
    def relayed_bytes(self) -> int:
        return self._value(self._relayed_bytes)

    @property
    def relay_sessions(self) -> int:
        return self._value(self._relay_sessions)


class BrokerCollector:
    """The broker's levels (clients online, sessions, relays), read at scrape time."""

    def __init__(self, broker: BrokerLevels) -> None:
        self._broker = broker

    def collect(self) -> Iterator[Metric]:
        broker = self._broker
        yield GaugeMetricFamily(
            "p2psip_mediator_clients_online",
            "Clients registered over a control connection.",
            value=float(len(broker.clients)),
        )
        yield GaugeMetricFamily(
            "p2psip_mediator_sessions_in_progress",
            "Connections being brokered.",
            value=float(len(broker.sessions)),
        )
        yield GaugeMetricFamily(
            "p2psip_mediator_relays_active",
            "Relayed sessions open now.",
            value=float(broker.relays_active),
        )

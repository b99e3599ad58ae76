"""
The media relay in ``/status`` and ``/metrics``.

``/status`` (and ``p2psip status``) shows the policy, the port pool and,
per relayed call, what each party sent through the relay: packets, bytes,
RTP loss from sequence numbers, and strangers dropped.  Calls are listed
by a short hash of their Call-ID, never by address.

``/metrics`` exports totals over every session, ended ones included, read
at scrape time:

``p2psip_media_sessions``                    relayed calls now (gauge)
``p2psip_media_ports_in_use``                relay port pairs held now (gauge)
``p2psip_media_ports_capacity``              port pairs in ``media-ports`` (gauge)
``p2psip_media_packets_total{sender}``       packets received by the relay's legs, from callers or callees
``p2psip_media_bytes_total{sender}``         their bytes
``p2psip_media_lost_packets_total{sender}``  RTP packets the senders' sequence numbers show lost
``p2psip_media_stranger_packets_total{sender}`` packets dropped at legs facing that party, from other sources
``p2psip_media_sessions_ended_total{reason}`` sessions ended: bye, cancel, failed, idle, stopped
``p2psip_media_sessions_refused_total``      calls refused for lack of ports (or over the per-source share)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from p2psip.media.anchor import MediaAnchor
from p2psip.media.directory import RelayDirectory
from p2psip.media.sessions import MediaSession

#: Sessions listed one by one in ``/status``; beyond it only the totals.
STATUS_SESSIONS = 50
#: Why a session ends: the label values of ``p2psip_media_sessions_ended_total``.
END_REASONS = ("bye", "cancel", "failed", "idle", "stopped")


def _session_status(session: MediaSession) -> dict[str, Any]:
    return {
        "call": hashlib.sha256(session.key.encode("utf-8", "surrogateescape")).hexdigest()[:12],
        "streams": [stream.media for stream in session.streams],
        "answered": session.answered,
        "from_caller": _counters(session, True),
        "from_callee": _counters(session, False),
    }


def _counters(session: MediaSession, from_caller: bool) -> dict[str, int]:
    counters = session.direction(from_caller)
    return {
        "packets": counters.packets,
        "bytes": counters.bytes,
        "lost": counters.lost,
        "strangers": counters.strangers,
        "unsent": counters.unsent,
    }


def relay_status(
    anchor: MediaAnchor | None, directory: RelayDirectory | None = None
) -> dict[str, Any]:
    """The ``media_relay`` part of the SIP section of ``/status``, with the overlay's relay list."""
    if anchor is None:
        return {"policy": "never"}
    sessions = anchor.sessions
    pool = sessions.pool
    live = list(sessions)
    return {
        "policy": anchor.policy.value,
        "address": anchor.address,
        "ports": f"{pool.low}-{pool.high}",
        "port_pairs": {"in_use": pool.in_use, "capacity": pool.capacity},
        "sessions": len(live),
        "totals": {
            "from_callers": sessions.totals(from_caller=True),
            "from_callees": sessions.totals(from_caller=False),
        },
        "ended": dict(sorted(sessions.ended.items())),
        "refused": sessions.refused,
        "calls": [_session_status(session) for session in live[:STATUS_SESSIONS]],
        "overlay": directory.status() if directory is not None else None,
    }


class MediaRelayCollector:
    """The relay's numbers for ``/metrics``, read at scrape time."""

    def __init__(self, anchor: MediaAnchor) -> None:
        self.anchor = anchor

    def collect(self) -> Iterator[Metric]:
        sessions = self.anchor.sessions
        pool = sessions.pool
        yield GaugeMetricFamily(
            "p2psip_media_sessions", "Calls whose media this relay carries now.", len(sessions)
        )
        yield GaugeMetricFamily(
            "p2psip_media_ports_in_use", "Relay RTP/RTCP port pairs held now.", pool.in_use
        )
        yield GaugeMetricFamily(
            "p2psip_media_ports_capacity",
            "RTP/RTCP port pairs in the media-ports range.",
            pool.capacity,
        )
        by_direction = {
            "caller": sessions.totals(from_caller=True),
            "callee": sessions.totals(from_caller=False),
        }
        for name, key, text in (
            ("p2psip_media_packets", "packets", "Packets received by the relay's legs."),
            ("p2psip_media_bytes", "bytes", "Bytes received by the relay's legs."),
            (
                "p2psip_media_lost_packets",
                "lost",
                "RTP packets lost before the relay, from the senders' sequence numbers.",
            ),
            (
                "p2psip_media_stranger_packets",
                "strangers",
                "Packets dropped because they came from another source than the latched party.",
            ),
            (
                "p2psip_media_unsent_packets",
                "unsent",
                "Packets the relay could not send on (a full socket buffer, a refused destination).",
            ),
        ):
            family = CounterMetricFamily(name, text, labels=["sender"])
            for sender, totals in by_direction.items():
                family.add_metric([sender], totals[key])
            yield family
        ended = CounterMetricFamily(
            "p2psip_media_sessions_ended", "Relayed calls ended, by reason.", labels=["reason"]
        )
        for reason in END_REASONS:
            ended.add_metric([reason], sessions.ended.get(reason, 0))
        yield ended
        yield CounterMetricFamily(
            "p2psip_media_sessions_refused",
            "Calls the relay refused: no free port pair, or over one address's share.",
            sessions.refused,
        )

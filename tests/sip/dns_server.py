"""
A ``twisted.names`` DNS server on a loopback UDP port answering canned
records, for tests that locate SIP servers through real DNS messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet import defer
from twisted.names import common, dns, error, server
from twisted.trial.unittest import TestCase

#: (name, record type) -> the payloads answered for it.
Zone = Mapping[tuple[str, int], Sequence[Any]]


class CannedAuthority(common.ResolverBase):
    """Answers from ``zone``; NXDOMAIN for names it has no record of any type for."""

    def __init__(self, zone: Zone) -> None:
        super().__init__()
        self.zone = {
            (name.lower(), kind): list(payloads) for (name, kind), payloads in zone.items()
        }
        self.queries: list[tuple[str, int]] = []

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Any:
        text = name.decode("ascii").lower().rstrip(".")
        self.queries.append((text, type))
        payloads = self.zone.get((text, type))
        if payloads is None:
            if any(known == text for known, _ in self.zone):
                return defer.succeed(([], [], []))
            return defer.fail(error.AuthoritativeDomainError(text))
        answers = [dns.RRHeader(name, type, cls, 60, payload, auth=True) for payload in payloads]
        return defer.succeed((answers, [], []))


def serve_zone(test: TestCase, reactor: Any, zone: Zone) -> tuple[int, CannedAuthority]:
    """Serve ``zone`` on a free UDP port of 127.0.0.1 (closed at cleanup); the port and the authority."""
    authority = CannedAuthority(zone)
    factory = server.DNSServerFactory(authorities=[authority])
    factory.noisy = False
    port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    return port.getHost().port, authority

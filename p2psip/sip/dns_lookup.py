"""
The DNS side of RFC 3263: runs :func:`p2psip.sip.locating.search` against
a ``twisted.names`` resolver.

:class:`ServerLocator` is the thin adapter: it asks the resolver each
:class:`~p2psip.sip.locating.Query` the search yields (NAPTR, SRV, A,
AAAA), turns the answers into the search's records, and treats a name
that does not exist, a server failure or a timeout as no records, so the
search moves on to its next step.  The resolver is injected:
:func:`make_resolver` builds one for the ``dns-servers`` option (a list of
``HOST:PORT``) or, without it, for the name servers of ``/etc/resolv.conf``
with ``/etc/hosts`` in front, reading the file once rather than arming
``twisted.names``' re-read timer.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IResolver
from twisted.names import client, dns, hosts, resolve
from twisted.python.failure import Failure

from p2psip.sip.locating import (
    OUTBOUND_TRANSPORTS,
    AddressRecord,
    NaptrRecord,
    Query,
    Record,
    Search,
    SrvRecord,
    search,
)
from p2psip.sip.transaction import Hop
from p2psip.sip.uri import SipURI
from p2psip.util.logs import Logger

RESOLV_CONF = Path("/etc/resolv.conf")
HOSTS_FILE = Path("/etc/hosts")
#: Seconds a DNS query waits for each retry (twisted.names retries on this schedule).
QUERY_TIMEOUTS_SECONDS = (1, 3)


def parse_dns_server(text: str) -> tuple[str, int]:
    """
    ``HOST[:PORT]`` (``[IPv6]:PORT`` for IPv6) as a DNS server address; port 53 by default.

    :raises ValueError: naming what is wrong.
    """
    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: write [ADDRESS]:PORT")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        raise ValueError(f"{text!r}: a DNS server must be an IP address, not {host!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port {port} is out of range")
    return host, port


def resolv_conf_servers(path: Path = RESOLV_CONF) -> list[tuple[str, int]]:
    """The ``nameserver`` lines of a resolv.conf, port 53; 127.0.0.1 when there are none."""
    servers: list[tuple[str, int]] = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                servers.append(parse_dns_server(words[1].split("%")[0]))
            except ValueError:
                continue
    return servers or [("127.0.0.1", 53)]


def make_resolver(servers: Sequence[tuple[str, int]], reactor: Any) -> IResolver:
    """
    A resolver asking ``servers``; with none, ``/etc/hosts`` and then the
    servers ``/etc/resolv.conf`` names (the system's resolver, read once).
    """
    asking = client.Resolver(
        servers=list(servers) or resolv_conf_servers(),
        timeout=QUERY_TIMEOUTS_SECONDS,
        reactor=reactor,
    )
    if servers:
        return cast(IResolver, asking)
    return cast(
        IResolver, resolve.ResolverChain([hosts.Resolver(str(HOSTS_FILE).encode()), asking])
    )


def _records(query: Query, answers: Sequence[dns.RRHeader]) -> list[Record]:
    """The records of the wanted type in an answer section, as the search reads them."""
    found: list[Record] = []
    for answer in answers:
        payload = answer.payload
        if isinstance(payload, dns.Record_NAPTR) and query.record_type == "NAPTR":
            found.append(
                NaptrRecord(
                    payload.order,
                    payload.preference,
                    payload.flags.string.decode("ascii", "replace"),
                    payload.service.string.decode("ascii", "replace"),
                    payload.replacement.name.decode("ascii", "replace"),
                )
            )
        elif isinstance(payload, dns.Record_SRV) and query.record_type == "SRV":
            found.append(
                SrvRecord(
                    payload.priority,
                    payload.weight,
                    payload.port,
                    payload.target.name.decode("ascii", "replace"),
                )
            )
        elif isinstance(payload, dns.Record_A) and query.record_type == "A":
            found.append(AddressRecord(payload.dottedQuad()))
        elif isinstance(payload, dns.Record_AAAA) and query.record_type == "AAAA":
            found.append(AddressRecord(socket.inet_ntop(socket.AF_INET6, payload.address)))
    return found


class ServerLocator:
    """Finds the servers a SIP URI's requests go to (RFC 3263), through an injected resolver."""

    log = Logger()

    def __init__(
        self,
        resolver: IResolver,
        rng: random.Random | None = None,
        transports: Collection[str] = OUTBOUND_TRANSPORTS,
    ) -> None:
        self.resolver = resolver
        self.rng = rng or random.Random()
        self.transports = tuple(transports)
        #: Lookups answered with nothing because they failed (timeouts, SERVFAIL).
        self.failed_lookups = 0

    def locate(self, uri: SipURI) -> Deferred[list[Hop]]:
        """The targets for ``uri``, best first (none when DNS has nothing usable)."""
        steps = search(uri, self.transports, self.rng)
        done: Deferred[list[Hop]] = Deferred()
        self._advance(steps, done, None)
        return done

    def _advance(
        self, steps: Search, done: Deferred[list[Hop]], records: Sequence[Record] | None
    ) -> None:
        try:
            query = next(steps) if records is None else steps.send(records)
        except StopIteration as finished:
            done.callback(finished.value)
            return
        except Exception:
            done.errback(Failure())
            return
        self._lookup(query).addCallback(lambda found: self._advance(steps, done, found))

    def _lookup(self, query: Query) -> Deferred[list[Record]]:
        lookups: dict[str, Callable[..., Deferred[Any]]] = {
            "NAPTR": self.resolver.lookupNamingAuthorityPointer,
            "SRV": self.resolver.lookupService,
            "A": self.resolver.lookupAddress,
            "AAAA": self.resolver.lookupIPV6Address,
        }
        try:
            asked = lookups[query.record_type](query.name)
        except Exception:
            asked = succeed(None)  # a name twisted.names refuses to encode finds nothing

        def answered(result: Any) -> list[Record]:
            if result is None:
                return []
            answers = result[0]
            return _records(query, answers)

        def failed(failure: Failure) -> list[Record]:
            if not failure.check(dns.DomainError, dns.AuthoritativeDomainError):
                self.failed_lookups += 1
                self.log.debug(
                    "DNS {type} lookup of {name} failed: {why}",
                    type=query.record_type,
                    name=query.name,
                    why=failure.getErrorMessage(),
                )
            return []

        return cast("Deferred[list[Record]]", asked.addCallbacks(answered, failed))


__all__ = [
    "ServerLocator",
    "make_resolver",
    "parse_dns_server",
    "resolv_conf_servers",
]

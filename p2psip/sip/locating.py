"""
Locating SIP servers (RFC 3263 section 4): which transport, address and
port a request for a URI goes to, worked out from DNS records.

The procedure, for a ``sip:`` or ``sips:`` URI whose host is not an IP
address:

* transport: the URI's ``transport`` parameter; else UDP (TLS for sips)
  when the URI names a port; else the domain's NAPTR records whose
  service is one we can send over (``SIP+D2U``, ``SIP+D2T``,
  ``SIPS+D2T``; only ``SIPS+D2T`` for a sips URI), in order and
  preference; without any, the SRV names ``_sip._udp``, ``_sip._tcp``
  (``_sips._tcp``) that exist; else UDP (TLS) to the host itself;
* address and port: an explicit port means A/AAAA of the host with that
  port; otherwise the SRV records of the chosen name, ordered by priority
  and, within one priority, by RFC 2782's weighted random choice, each
  target's A/AAAA records in turn; without SRV records, A/AAAA of the host
  on the transport's default port (5060, 5061 for TLS).

Every target that comes out, in order, is a :class:`~p2psip.sip.transaction.Hop`:
the caller tries the first and moves to the next on a transport error, a
timeout or a 503 (RFC 3263 s4.3).  An IP-address host needs no DNS.

:func:`search` is sans-IO: a generator that yields the :class:`Query` it
needs next and is sent back the records found (an empty list when the name
does not exist or the lookup failed), and returns the targets.  Tests feed
it canned records; :mod:`p2psip.sip.dns_lookup` feeds it ``twisted.names``
answers.  Records come from the network, so the search bounds what it asks
(:data:`MAX_QUERIES`) and returns (:data:`MAX_TARGETS`).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Collection, Generator, Mapping, Sequence

from attrs import frozen

from p2psip.sip.transaction import Hop
from p2psip.sip.uri import SipURI

#: Transports this stack can open towards another server (outbound TLS needs
#: client-side trust the SIP transport does not have yet).
OUTBOUND_TRANSPORTS: tuple[str, ...] = ("UDP", "TCP")
DEFAULT_PORTS: Mapping[str, int] = {"UDP": 5060, "TCP": 5060, "TLS": 5061}
#: NAPTR service field -> (transport, secure), RFC 3263 s4.1 (SCTP not handled).
NAPTR_SERVICES: Mapping[str, tuple[str, bool]] = {
    "SIP+D2U": ("UDP", False),
    "SIP+D2T": ("TCP", False),
    "SIPS+D2T": ("TLS", True),
}
#: The SRV prefix of each transport (RFC 3263 s4.1: _sips._tcp for TLS).
SRV_PREFIXES: Mapping[str, str] = {"UDP": "_sip._udp.", "TCP": "_sip._tcp.", "TLS": "_sips._tcp."}
#: Lookups one search may make, and targets it may return: the records come
#: from whoever answers DNS for the domain.
MAX_QUERIES = 40
MAX_TARGETS = 16


@frozen
class Query:
    """One DNS lookup the search needs: ``name`` and ``record_type`` (NAPTR, SRV, A, AAAA)."""

    name: str
    record_type: str


@frozen
class NaptrRecord:
    """A NAPTR record (RFC 3403): what RFC 3263 reads of it."""

    order: int
    preference: int
    flags: str
    service: str
    replacement: str


@frozen
class SrvRecord:
    """An SRV record (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str


@frozen
class AddressRecord:
    """An A or AAAA record's address, as text."""

    address: str


Record = NaptrRecord | SrvRecord | AddressRecord
Search = Generator[Query, Sequence[Record], list[Hop]]


def is_ip_address(host: str) -> bool:
    """Whether ``host`` (IPv6 possibly in brackets) is an IP address literal."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _name(text: str) -> str:
    """A domain name as compared and queried: lower case, no trailing dot."""
    return text.lower().rstrip(".")


def uri_transport(uri: SipURI) -> str | None:
    """The transport a URI asks for explicitly (``transport=`` parameter, sips means TLS)."""
    explicit = uri.transport
    if explicit:
        name = explicit.upper()
        return "TLS" if uri.scheme == "sips" and name == "TCP" else name
    return None


def order_srv(records: Sequence[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """
    RFC 2782's order: ascending priority; within a priority, repeatedly a
    weighted random pick among the rest (weight 0 records placed first, so
    they are chosen only rarely while heavier ones remain).
    """
    ordered: list[SrvRecord] = []
    for priority in sorted({record.priority for record in records}):
        remaining = sorted(
            (r for r in records if r.priority == priority), key=lambda r: r.weight != 0
        )
        while remaining:
            total = sum(r.weight for r in remaining)
            pick = rng.randint(0, total)
            running = 0
            for index, record in enumerate(remaining):
                running += record.weight
                if running >= pick:
                    ordered.append(remaining.pop(index))
                    break
    return ordered


def naptr_choices(
    records: Sequence[Record], secure: bool, transports: Collection[str]
) -> list[tuple[str, str]]:
    """
    The (transport, SRV name) pairs a domain's NAPTR records offer, best
    first: only ``s``-flag records for a service we can use, and for a sips
    URI only SIPS+D2T (RFC 3263 s4.1).
    """
    usable: list[tuple[int, int, str, str]] = []
    for record in records:
        if not isinstance(record, NaptrRecord) or record.flags.lower() != "s":
            continue
        service = NAPTR_SERVICES.get(record.service.upper())
        if service is None:
            continue
        transport, service_secure = service
        if transport not in transports or (secure and not service_secure):
            continue
        usable.append((record.order, record.preference, transport, _name(record.replacement)))
    usable.sort(key=lambda item: (item[0], item[1]))
    return [(transport, name) for _, _, transport, name in usable if name]


def search(uri: SipURI, transports: Collection[str], rng: random.Random) -> Search:
    """
    The targets for ``uri`` (RFC 3263 s4), asking for records as it goes.

    ``transports`` are the upper-case transports the caller can use; a
    target on any other is never returned.  Yields :class:`Query` values
    and expects the records found to be sent back; returns the targets,
    which may be none (no record for the name, or only for transports we
    lack).

    Past :data:`MAX_QUERIES` lookups every further one finds nothing, so
    records that fan out without end cost a bounded number of queries.
    """
    transports = frozenset(name.upper() for name in transports)
    secure = uri.scheme == "sips"
    host = uri.host.strip("[]")
    explicit = uri_transport(uri)
    if is_ip_address(host):
        transport = explicit or ("TLS" if secure else "UDP")
        if transport not in transports:
            return []
        return [Hop(transport, host, uri.port or DEFAULT_PORTS.get(transport, 5060))]
    host = _name(host)
    lookups = _Lookups()
    if uri.port is not None:
        transport = explicit or ("TLS" if secure else "UDP")
        if transport not in transports:
            return []
        return (yield from lookups.addresses(host, transport, uri.port))
    # The transport used when no SRV record exists (s4.2): the explicit
    # one, else the first the NAPTR records chose, else UDP (TLS for sips).
    fallback = explicit or ("TLS" if secure else "UDP")
    if explicit is not None:
        if explicit not in transports or explicit not in SRV_PREFIXES:
            return []
        choices = [(explicit, SRV_PREFIXES[explicit] + host)]
    else:
        choices = naptr_choices((yield from lookups.ask(Query(host, "NAPTR"))), secure, transports)
        if choices:
            fallback = choices[0][0]
        else:
            # No usable NAPTR: the SRV names of the transports we can use.
            wanted = ("TLS",) if secure else ("UDP", "TCP", "TLS")
            choices = [(t, SRV_PREFIXES[t] + host) for t in wanted if t in transports]
    targets: list[Hop] = []
    any_srv = False
    for transport, srv_name in choices:
        records = yield from lookups.ask(Query(srv_name, "SRV"))
        services = [r for r in records if isinstance(r, SrvRecord)]
        if not services:
            continue
        any_srv = True
        for record in order_srv(services, rng):
            target = _name(record.target)
            if not target:
                continue  # "." : decidedly not offered here (RFC 2782)
            targets += yield from lookups.addresses(target, transport, record.port)
            if len(targets) >= MAX_TARGETS:
                return _unique(targets)[:MAX_TARGETS]
    if not any_srv and fallback in transports:
        # No SRV record at all: the host itself on the default port (s4.2).
        targets = yield from lookups.addresses(host, fallback, DEFAULT_PORTS[fallback])
    return _unique(targets)[:MAX_TARGETS]


def _unique(targets: list[Hop]) -> list[Hop]:
    seen: set[Hop] = set()
    kept = []
    for hop in targets:
        if hop not in seen:
            seen.add(hop)
            kept.append(hop)
    return kept


class _Lookups:
    """Counts the queries of one search; past :data:`MAX_QUERIES` they find nothing."""

    def __init__(self) -> None:
        self.count = 0

    def ask(self, query: Query) -> Generator[Query, Sequence[Record], Sequence[Record]]:
        self.count += 1
        if self.count > MAX_QUERIES:
            return ()
        records = yield query
        return records

    def addresses(
        self, name: str, transport: str, port: int
    ) -> Generator[Query, Sequence[Record], list[Hop]]:
        """A/AAAA of ``name`` (an address literal needs none) as targets on ``transport``."""
        if is_ip_address(name):
            return [Hop(transport, name.strip("[]"), port)]
        found: list[Hop] = []
        for record_type in ("A", "AAAA"):
            for record in (yield from self.ask(Query(name, record_type))):
                if isinstance(record, AddressRecord) and is_ip_address(record.address):
                    found.append(Hop(transport, record.address, port))
        return found


def run_search(
    uri: SipURI,
    records: Mapping[Query, Sequence[Record]],
    transports: Collection[str] = OUTBOUND_TRANSPORTS,
    rng: random.Random | None = None,
) -> list[Hop]:
    """Run :func:`search` against a fixed table of records (a query not in it finds nothing)."""
    steps = search(uri, transports, rng or random.Random(0))
    try:
        query = next(steps)
        while True:
            query = steps.send(records.get(query, ()))
    except StopIteration as done:
        result: list[Hop] = done.value
        return result


__all__ = [
    "AddressRecord",
    "DEFAULT_PORTS",
    "MAX_QUERIES",
    "MAX_TARGETS",
    "NaptrRecord",
    "OUTBOUND_TRANSPORTS",
    "Query",
    "Record",
    "SrvRecord",
    "is_ip_address",
    "naptr_choices",
    "order_srv",
    "run_search",
    "search",
    "uri_transport",
]

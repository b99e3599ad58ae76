"""
The gateway between the overlay and conventional SIP domains: where a
request for a foreign domain goes, and whether a request or a Route comes
from (or leads to) a domain we federate with.

The rules are :class:`~p2psip.sip.domain_routes.DomainRoutes`; servers are
found with RFC 3263 through a :class:`~p2psip.sip.dns_lookup.ServerLocator`.

* :meth:`Gateway.next_hops`: the targets of a request for a peer domain
  (RFC 3263 on the Request-URI) or a static route (RFC 3263 on its next
  hop), best first, for the proxy to try in turn.
* :meth:`Gateway.domain_of_source`: which foreign domain an address
  belongs to: one of its servers as its DNS records (or the static route)
  give them, or an address configured for it.  The answer for each domain
  is kept :data:`ADDRESS_CACHE_SECONDS`, and one lookup at a time is made
  for it, so a flood of requests costs one round of DNS queries.
* :meth:`Gateway.route_hops`: where a request goes whose top Route names a
  foreign proxy (the Record-Route a peer domain's proxy put on a dialog):
  only when that proxy is one of a foreign domain's servers, else
  :class:`RelayRefused`.
"""

from __future__ import annotations

from attrs import define
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from p2psip.sip.dns_lookup import ServerLocator
from p2psip.sip.domain_routes import Destination, DomainRoutes, RouteKind
from p2psip.sip.locating import is_ip_address
from p2psip.sip.transaction import Hop
from p2psip.sip.uri import SipURI
from p2psip.util.logs import Logger

#: How long the servers found for a foreign domain are trusted as its addresses.
ADDRESS_CACHE_SECONDS = 300.0
#: After a lookup found nothing, how soon to ask again.
EMPTY_CACHE_SECONDS = 30.0


class RelayRefused(Exception):
    """A request asked to be forwarded somewhere outside the ring and the domains we route to."""


@define
class _KnownAddresses:
    hosts: frozenset[str]
    expires_at: float


class Gateway:
    """Routes to and recognises the foreign domains of :class:`DomainRoutes`."""

    log = Logger()

    def __init__(
        self,
        routes: DomainRoutes,
        locator: ServerLocator | None,
        clock: IReactorTime,
        address_cache_seconds: float = ADDRESS_CACHE_SECONDS,
    ) -> None:
        self.routes = routes
        self.locator = locator
        self.clock = clock
        self.address_cache_seconds = address_cache_seconds
        self._known: dict[str, _KnownAddresses] = {}
        self._pending: dict[str, list[Deferred[frozenset[str]]]] = {}

    def destination(self, host: str) -> Destination:
        return self.routes.destination(host)

    def status(self) -> dict[str, object]:
        """The gateway's part of ``/status``: the rules and the DNS lookups that failed."""
        routes = self.routes
        return {
            "aliases": sorted(routes.aliases - {routes.overlay_domain}),
            "peer_domains": sorted(routes.peers),
            "static_routes": {d: str(r.next_hop) for d, r in sorted(routes.static_routes.items())},
            "foreign_callers": routes.foreign_callers.value,
            "failed_dns_lookups": self.locator.failed_lookups if self.locator else 0,
        }

    def next_hops(self, uri: SipURI, destination: Destination) -> Deferred[list[Hop]]:
        """The targets, best first, of a request for ``uri`` in a routed foreign domain."""
        if destination.kind is RouteKind.STATIC:
            assert destination.next_hop is not None
            return self._locate(destination.next_hop)
        if destination.kind is RouteKind.PEER:
            return self._locate(uri)
        return succeed([])

    def _locate(self, uri: SipURI) -> Deferred[list[Hop]]:
        if self.locator is None:
            return succeed([])
        return self.locator.locate(uri)

    # -- recognising foreign servers ---------------------------------------------

    def domain_of_source(self, host: str) -> Deferred[str | None]:
        """The foreign domain whose server (or configured address) ``host`` is; None for a stranger."""
        host = host.lower().strip("[]")
        domains = self.routes.foreign_domains
        if not domains:
            return succeed(None)
        for domain in domains:
            if host in self.routes.configured_addresses(domain):
                return succeed(domain)
        looked_up = gatherResults([self.known_addresses(domain) for domain in domains])

        def first_match(found: list[frozenset[str]]) -> str | None:
            for domain, hosts in zip(domains, found, strict=True):
                if host in hosts:
                    return domain
            return None

        return looked_up.addCallback(first_match)

    def known_addresses(self, domain: str) -> Deferred[frozenset[str]]:
        """
        The addresses of ``domain``'s servers (RFC 3263 on it, or on its
        static next hop) and those configured for it, from the cache when fresh.
        """
        now = self.clock.seconds()
        known = self._known.get(domain)
        if known is not None and known.expires_at > now:
            return succeed(known.hosts)
        waiting: Deferred[frozenset[str]] = Deferred()
        pending = self._pending.get(domain)
        if pending is not None:
            pending.append(waiting)
            return waiting
        self._pending[domain] = [waiting]
        configured = frozenset(self.routes.configured_addresses(domain))

        def found(hops: list[Hop]) -> frozenset[str]:
            return configured | {hop.host.lower() for hop in hops}

        def failed(failure: Failure) -> frozenset[str]:
            self.log.warn(
                "cannot find the SIP servers of {domain}: {why}; requests from it are "
                "recognised only by the addresses configured with sip-peer-domain",
                domain=domain,
                why=failure.getErrorMessage(),
            )
            return configured

        def settle(hosts: frozenset[str]) -> None:
            lifetime = self.address_cache_seconds if hosts - configured else EMPTY_CACHE_SECONDS
            self._known[domain] = _KnownAddresses(hosts, self.clock.seconds() + lifetime)
            for each in self._pending.pop(domain, []):
                each.callback(hosts)

        self._locate(self.routes.locating_uri(domain)).addCallbacks(found, failed).addCallback(
            settle
        )
        return waiting

    def route_hops(self, top: SipURI) -> Deferred[list[Hop]]:
        """
        The targets of a request whose top Route is ``top``, a foreign proxy.

        Allowed when ``top`` names a routed foreign domain (or a static
        route's next-hop host) or one of their servers' addresses;
        otherwise the Deferred fails with :class:`RelayRefused`.
        """
        host = top.host.lower().strip("[]")
        destination = self.routes.destination(host)
        named = destination.kind in (RouteKind.PEER, RouteKind.STATIC) or any(
            route.next_hop.host.lower().strip("[]") == host
            for route in self.routes.static_routes.values()
        )
        if named:
            return self._locate(top)
        if not is_ip_address(host) or not self.routes.foreign_domains:
            return fail(RelayRefused("the Route names no super-node of the ring nor a peer domain"))

        def checked(domain: str | None) -> Deferred[list[Hop]]:
            if domain is None:
                return fail(
                    RelayRefused("the Route names no super-node of the ring nor a peer domain")
                )
            return self._locate(top)

        return self.domain_of_source(host).addCallback(checked)


def first_hop(hops: list[Hop]) -> Hop:
    """The best of some targets (for a stateless forward); RelayRefused when there is none."""
    if not hops:
        raise RelayRefused("no server found for the Route")
    return hops[0]


__all__ = ["ADDRESS_CACHE_SECONDS", "Gateway", "RelayRefused", "first_hop"]

"""
Which domains a super-node routes to, and how: the gateway's rules.

A Request-URI's host falls in one of three groups:

* **ours**: the overlay name and its configured aliases (say the
  conventional domain ``example.org`` whose DNS points at the super-nodes);
  its users are looked up in the DHT;
* **foreign, routed**: a *peer domain* (a conventional SIP domain we
  federate with, located by RFC 3263 from its DNS records) or a domain with
  a *static route* (say a PSTN gateway: every request for it goes to one
  configured next hop).  Our users' calls go there, and requests from them
  for our users are accepted;
* **anything else**: refused.  A super-node is no open relay.

Requests from a foreign domain are recognised by their source address:
one its DNS records (or the static route's target) give, or, for a peer
domain, one configured beside them (:mod:`p2psip.sip.gateway`).

Sans-IO: values in, values out.  The option parsers (``DOMAIN=ADDRESS,...``
and ``DOMAIN=URI``) live here too so the role's options and the tests read
the same syntax.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum

from attrs import field, frozen

from p2psip.sip.errors import SipParseError
from p2psip.sip.uri import SipURI, parse_uri


class ForeignCallers(Enum):
    """Who may call our users from outside the overlay's own domains."""

    #: Anyone, as a public SIP domain (callers from other domains are not
    #: asked for credentials; calls out of the overlay stay for our users).
    ANYONE = "anyone"
    #: Only the configured peer domains and static routes, recognised by
    #: source address; everyone else gets 407 like a stranger claiming our domain.
    PEER_DOMAINS = "peer-domains"


class RouteKind(Enum):
    LOCAL = "local"
    PEER = "peer"
    STATIC = "static"
    UNROUTED = "unrouted"


@frozen
class Destination:
    """What the rules say about one host: its group, the domain, and for a static route its next hop."""

    kind: RouteKind
    domain: str
    next_hop: SipURI | None = None


def _host(text: str) -> str:
    return text.strip().lower().rstrip(".").strip("[]")


def _hosts(names: Iterable[str]) -> frozenset[str]:
    return frozenset(_host(name) for name in names)


def _check_domain(text: str, what: str) -> str:
    name = _host(text)
    if not name or any(c in name for c in " \t,;=<>@/"):
        raise ValueError(f"{what} {text!r} is not a domain name")
    return name


def _check_address(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not an IP address") from None


@frozen
class PeerDomain:
    """A conventional SIP domain we federate with, and addresses it sends from besides its DNS records'."""

    name: str
    addresses: tuple[str, ...] = ()


@frozen
class StaticRoute:
    """Every request for ``domain`` goes to ``next_hop`` (a SIP URI, located by RFC 3263)."""

    domain: str
    next_hop: SipURI


def parse_peer_domain(text: str) -> PeerDomain:
    """
    ``DOMAIN`` or ``DOMAIN=ADDRESS[,ADDRESS...]`` (the ``sip-peer-domain`` option).

    :raises ValueError: naming what is wrong.
    """
    name, _, rest = text.partition("=")
    domain = _check_domain(name, "peer domain")
    addresses = tuple(
        _check_address(part, f"peer domain {domain}") for part in rest.split(",") if part.strip()
    )
    return PeerDomain(domain, addresses)


def parse_static_route(text: str) -> StaticRoute:
    """
    ``DOMAIN=SIP-URI`` (the ``sip-static-route`` option), e.g.
    ``pstn.example.net=sip:192.0.2.30:5060;transport=tcp``.

    :raises ValueError: naming what is wrong.
    """
    name, equals, target = text.partition("=")
    if not equals or not target.strip():
        raise ValueError(f"static route {text!r}: write DOMAIN=sip:HOST[:PORT][;transport=tcp]")
    domain = _check_domain(name, "static route domain")
    try:
        uri = parse_uri(target.strip())
    except SipParseError as e:
        raise ValueError(f"static route for {domain}: {target!r} is not a SIP URI ({e})") from None
    if not isinstance(uri, SipURI) or uri.user is not None:
        raise ValueError(
            f"static route for {domain}: {target!r} must be a sip: URI naming a host, no user"
        )
    return StaticRoute(domain, uri)


@frozen
class DomainRoutes:
    """The rules: our domains, the peer domains, the static routes."""

    overlay_domain: str = field(converter=_host)
    aliases: frozenset[str] = field(default=frozenset(), converter=_hosts)
    peers: Mapping[str, PeerDomain] = field(factory=dict)
    static_routes: Mapping[str, StaticRoute] = field(factory=dict)
    foreign_callers: ForeignCallers = ForeignCallers.ANYONE

    @classmethod
    def build(
        cls,
        overlay_domain: str,
        aliases: Iterable[str] = (),
        peers: Sequence[PeerDomain] = (),
        static_routes: Sequence[StaticRoute] = (),
        foreign_callers: ForeignCallers | None = None,
    ) -> DomainRoutes:
        """
        The rules from option values.  ``foreign_callers`` defaults to
        :attr:`ForeignCallers.PEER_DOMAINS` once any peer domain or static
        route is configured (federating with named domains means the others
        are strangers), else :attr:`ForeignCallers.ANYONE`.

        :raises ValueError: a domain appears in two roles.
        """
        local = {_host(overlay_domain), *map(_host, aliases)}
        seen: dict[str, str] = {name: "overlay domain or alias" for name in local}
        for domain, role in [(p.name, "peer domain") for p in peers] + [
            (r.domain, "static route") for r in static_routes
        ]:
            if domain in seen:
                raise ValueError(f"{domain} is configured both as {seen[domain]} and as {role}")
            seen[domain] = role
        if foreign_callers is None:
            foreign_callers = (
                ForeignCallers.PEER_DOMAINS if peers or static_routes else ForeignCallers.ANYONE
            )
        return cls(
            overlay_domain,
            frozenset(local),
            {p.name: p for p in peers},
            {r.domain: r for r in static_routes},
            foreign_callers,
        )

    def is_local(self, host: str) -> bool:
        """Whether ``host`` is the overlay's domain or one of its aliases."""
        name = _host(host)
        return name == self.overlay_domain or name in self.aliases

    def destination(self, host: str) -> Destination:
        """Where a request whose Request-URI names ``host`` goes."""
        name = _host(host)
        if self.is_local(name):
            return Destination(RouteKind.LOCAL, self.overlay_domain)
        static = self.static_routes.get(name)
        if static is not None:
            return Destination(RouteKind.STATIC, name, static.next_hop)
        if name in self.peers:
            return Destination(RouteKind.PEER, name)
        return Destination(RouteKind.UNROUTED, name)

    @property
    def foreign_domains(self) -> list[str]:
        """Every peer domain and static-route domain, sorted."""
        return sorted({*self.peers, *self.static_routes})

    def configured_addresses(self, domain: str) -> tuple[str, ...]:
        """The source addresses configured for a foreign domain (beside what DNS says)."""
        peer = self.peers.get(domain)
        return peer.addresses if peer is not None else ()

    def locating_uri(self, domain: str) -> SipURI:
        """The URI whose servers (RFC 3263) are the domain's: its static next hop, else ``sip:DOMAIN``."""
        static = self.static_routes.get(domain)
        if static is not None:
            return static.next_hop
        return SipURI(host=domain)


__all__ = [
    "Destination",
    "DomainRoutes",
    "ForeignCallers",
    "PeerDomain",
    "RouteKind",
    "StaticRoute",
    "parse_peer_domain",
    "parse_static_route",
]

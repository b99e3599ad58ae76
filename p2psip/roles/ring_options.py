"""
The options of the ring roles (bootstrap and peer), and the frozen
configuration they are validated into.

An operator gives options on the command line or in the role's section of
``--config FILE`` (:class:`p2psip.config.RoleOptions`).  ``postOptions``
checks them all, reads the small secrets they name (so a bad file stops
the role at once, with the option to fix), and leaves exactly one result:
``options.config``, a frozen :class:`RingRoleConfig`.  ``makeService``
builds the role from that object alone; nothing below it sees the
``Options``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path
from collections.abc import Mapping
from typing import Any, ClassVar

from attrs import field, frozen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.python import usage

from p2psip.config import (
    RoleOptions,
    client_endpoint,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    server_endpoint,
)
from p2psip.overlay.codec import Limits
from p2psip.overlay.mediated import DIRECT_CONNECT_TIMEOUT_SECONDS
from p2psip.overlay.parameters import OverlayConfig
from p2psip.roles.security_options import SecurityConfig, SecurityOptions
from p2psip.sip.digest import ALGORITHMS
from p2psip.sip.digest_offer import DEFAULT_ALGORITHMS, ClientRule, parse_client_rule
from p2psip.sip.dns_lookup import parse_dns_server
from p2psip.sip.domain_routes import (
    DomainRoutes,
    ForeignCallers,
    PeerDomain,
    StaticRoute,
    parse_peer_domain,
    parse_static_route,
)
from p2psip.sip.direct_contacts import DIRECT_CONTACT_POLICIES, direct_contact_policy
from p2psip.sip.location_cache import DEFAULT_MAX_ENTRIES as DEFAULT_LOCATION_CACHE_ENTRIES
from p2psip.sip.overload import (
    DEFAULT_MAX_BACKLOG,
    DEFAULT_MAX_LAG_SECONDS,
    DEFAULT_MAX_PENDING,
    OverloadThresholds,
)
from p2psip.sip.request_limit import DEFAULT_BURST, DEFAULT_REQUESTS_PER_SECOND
from p2psip.sip.transport import (
    MAX_TCP_CONNECTIONS,
    TCP_CONNECTIONS_PER_SOURCE,
    TCP_IDLE_TIMEOUT_SECONDS,
)
from p2psip.util.endpoints import endpoint_interface, is_udp, parse_udp_listen_address
from p2psip.util.local_address import AddressFinder, default_route_address, is_wildcard
from p2psip.web.site import allowed_host


@frozen
class MediatorClientConfig:
    """How a ring member reaches peers behind NATs: the mediator's control port and secret."""

    endpoint: str
    secret: bytes
    direct_timeout_seconds: float


@frozen
class SipTlsCredentials:
    """
    The SIP domain's certificate chain and key for ``--sip-tls`` listeners,
    read and checked when the options are (so a bad file stops the role at once).
    """

    certificate_path: Path
    key_path: Path
    #: PEM: the server certificate first, then any intermediates.
    certificates_pem: bytes
    key_pem: bytes


@frozen
class MediaRelayConfig:
    """The super-node's RTP relay: which calls, on which ports, behind which address."""

    policy: str
    low_port: int
    high_port: int
    #: The IPv4 address written into relayed SDP; None: the SIP advertised host.
    address: str | None
    #: The interface the relay ports bind on ("": every interface).
    interface: str
    idle_timeout_seconds: float


def media_relay_policy(text: str) -> str:
    """Coercer for ``--media-relay``: never, nat-only or always."""
    value = text.strip().lower()
    if value not in MEDIA_POLICIES:
        raise usage.UsageError(f"--media-relay {text!r}: give one of {', '.join(MEDIA_POLICIES)}")
    return value


media_relay_policy.coerceDoc = "never, nat-only or always"  # type: ignore[attr-defined]

MEDIA_POLICIES = ("never", "nat-only", "always")


def direct_contacts_option(text: str) -> str:
    """Coercer for ``--sip-direct-contacts``: public, any or off."""
    try:
        return direct_contact_policy(text)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None


direct_contacts_option.coerceDoc = ", ".join(DIRECT_CONTACT_POLICIES)  # type: ignore[attr-defined]


def port_range(text: str) -> tuple[int, int]:
    """
    Coercer for ``--media-ports``: ``LOW-HIGH``, at least two even/odd
    pairs, above 1023; ``none`` for no local ports (calls go through
    relays other super-nodes list in the overlay).
    """
    if text.strip().lower() == "none":
        return 0, 0
    low_text, dash, high_text = text.strip().partition("-")
    try:
        low, high = int(low_text), int(high_text)
    except ValueError:
        raise usage.UsageError(
            f"--media-ports {text!r}: give a range such as 40000-40999"
        ) from None
    if not dash or not (1024 <= low < high <= 65535) or high - low < 3:
        raise usage.UsageError(
            f"--media-ports {text!r}: give LOW-HIGH with 1024 <= LOW < HIGH <= 65535 and room "
            "for two RTP/RTCP port pairs (a call takes four ports per stream)"
        )
    return low, high


port_range.coerceDoc = "LOW-HIGH, e.g. 40000-40999, or none"  # type: ignore[attr-defined]


def ipv4_address(text: str) -> str:
    """Coercer for ``--media-address``: an IPv4 address (the relay forwards IPv4)."""
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        raise usage.UsageError(
            f"--media-address {text!r} is no IPv4 address; the relay forwards IPv4 only"
        ) from None


@frozen
class SipConfig:
    """The SIP super-node's settings (present when ``--sip`` names a listener)."""

    domain: str
    listeners: tuple[str, ...]
    users_path: Path | None
    digest_algorithms: tuple[str, ...]
    advertise: str | None
    trusted_network: bool
    #: New requests per second per source address; 0: no limit.
    rate_limit_per_second: float = DEFAULT_REQUESTS_PER_SECOND
    rate_limit_burst: int = DEFAULT_BURST
    #: When new INVITEs and REGISTERs get 503 (p2psip.sip.overload).
    overload: OverloadThresholds = OverloadThresholds()
    #: SIP over TCP and TLS: silence that closes a connection, and how many
    #: connections one address, and everyone, may hold.
    idle_timeout_seconds: float = TCP_IDLE_TIMEOUT_SECONDS
    connections_per_source: int = TCP_CONNECTIONS_PER_SOURCE
    max_connections: int = MAX_TCP_CONNECTIONS
    #: Stream endpoints that run SIP over TLS (RFC 3261 s26) with ``tls``.
    tls_listeners: tuple[str, ...] = ()
    tls: SipTlsCredentials | None = None
    #: The gateway's rules: our domains, peer domains, static routes, foreign callers.
    routes: DomainRoutes | None = None
    #: Clients offered other Digest algorithms than ``digest_algorithms``.
    digest_clients: tuple[ClientRule, ...] = ()
    #: DNS servers for RFC 3263 (empty: the system's, from /etc/resolv.conf).
    dns_servers: tuple[tuple[str, int], ...] = ()
    #: AORs whose fetched registrations are cached (``sip-location-cache``); 0: off.
    location_cache_entries: int = DEFAULT_LOCATION_CACHE_ENTRIES
    #: The listeners' ports are shared with this host's other workers (``--workers``).
    shared_ports: bool = False
    #: Which phones calls may reach without their own super-node (``sip-direct-contacts``).
    direct_contacts: str = "public"

    @property
    def domain_routes(self) -> DomainRoutes:
        """The rules, or for a stack built without any, the overlay domain alone."""
        return self.routes if self.routes is not None else DomainRoutes.build(self.domain)

    #: The media relay (``media-relay``, ``media-ports``...); None: ``never``.
    media: MediaRelayConfig | None = None
    #: The transport other nodes reach us by, when the listeners do not decide it
    #: (a thin client behind a NAT: TCP, which the mediator can carry).
    peer_transport_choice: str | None = None

    @property
    def peer_transport(self) -> str:
        """The transport other super-nodes reach us by, as Record-Route names it."""
        if self.peer_transport_choice is not None:
            return self.peer_transport_choice
        if any(is_udp(listener) for listener in self.listeners):
            return "UDP"
        first = self.listeners[0].lower()
        return "TLS" if first.startswith(("ssl:", "tls:")) else "TCP"

    @property
    def listen_interface(self) -> str | None:
        """The interface of the first listener, if it names one other than every interface."""
        interface = endpoint_interface(self.listeners[0])
        return None if is_wildcard(interface) else interface


@frozen
class RingRoleConfig:
    """Everything a ring role is built from."""

    role: str
    title: str
    #: Found a ring when no bootstrap (and no known peer) answers.
    found_ring: bool
    overlay: OverlayConfig
    listen: str
    advertise: str | None
    #: The host other peers reach the overlay listener at (in Attach
    #: candidates, the ring walk, and Via and Record-Route when the SIP
    #: listener names no interface): ``advertise``, else the listener's
    #: interface, else the address of the default-route interface.
    advertised_host: str
    bootstrap: tuple[str, ...]
    http: str
    data_dir: Path
    mediator: MediatorClientConfig | None
    sip: SipConfig | None
    #: Names accepted in Host headers besides the listener's address and localhost.
    http_allowed_hosts: tuple[str, ...] = ()
    #: Certificates and trust: enrolled (the default) or ``--insecure``.
    security: SecurityConfig = field(factory=SecurityConfig)
    #: Inbound overlay connections one address may hold open at once.
    overlay_connections_per_source: int = 32
    #: Where the overlay links' TLS secrets are appended for Wireshark (debugging only).
    overlay_tls_key_log: Path | None = None
    #: Where ``advertised_host`` came from, for the start-up log.
    advertised_because: str = "advertise"
    #: Worker processes of this host (``--workers``; p2psip.roles.workers).
    workers: int = 1
    #: Which of them this process is; None: the supervisor, or the only one.
    worker_index: int | None = None
    #: Log a memory report on SIGUSR2 (``--debug-memory-signal``; p2psip.util.memory_report).
    debug_memory_signal: bool = False


def sip_listen_address(text: str) -> str:
    """Coercer for ``--sip``: ``udp:PORT[:interface=ADDR]`` or a Twisted stream endpoint string."""
    if is_udp(text):
        try:
            parse_udp_listen_address(text)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        return text
    return server_endpoint(text)


sip_listen_address.coerceDoc = "udp:PORT[:interface=ADDR] or a stream endpoint such as tcp:5060"  # type: ignore[attr-defined]


#: The private keys a SIP TLS certificate may have.
SIP_TLS_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)


def read_sip_tls_credentials(certificate_path: str, key_path: str) -> SipTlsCredentials:
    """
    The PEM certificate chain and unencrypted key named by ``--sip-tls-certificate``
    and ``--sip-tls-key``, checked to belong together.

    :raises usage.UsageError: naming the option whose file is missing,
        unreadable, not PEM, or does not match the other.
    """
    certificate_data = _read_option_file("--sip-tls-certificate", certificate_path)
    key_data = _read_option_file("--sip-tls-key", key_path)
    try:
        certificates = x509.load_pem_x509_certificates(certificate_data)
    except ValueError as e:
        raise usage.UsageError(
            f"--sip-tls-certificate {certificate_path} holds no PEM certificate ({e}); give the "
            "SIP domain's certificate, then any intermediates"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError) as e:
        raise usage.UsageError(
            f"--sip-tls-key {key_path} is not an unencrypted PEM private key ({e})"
        ) from None
    if not isinstance(key, SIP_TLS_KEY_TYPES):
        raise usage.UsageError(
            f"--sip-tls-key {key_path} holds a {type(key).__name__}; TLS needs an RSA, ECDSA "
            "or Ed25519 key"
        )
    if _public_der(key.public_key()) != _public_der(certificates[0].public_key()):
        raise usage.UsageError(
            f"--sip-tls-key {key_path} is not the key of the first certificate in "
            f"--sip-tls-certificate {certificate_path}"
        )
    return SipTlsCredentials(
        Path(certificate_path),
        Path(key_path),
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _read_option_file(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise usage.UsageError(
            f"cannot read {option} {path}: {error.strerror}; fix the path or the file's "
            "permissions (the role's user must be able to read it)"
        ) from None


def _public_der(key: object) -> bytes:
    public_bytes = getattr(key, "public_bytes", None)
    if public_bytes is None:
        return b""
    der: bytes = public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def digest_algorithms(text: str) -> str:
    """
    Coercer for ``--sip-digest-algorithms``: a comma-separated list such as ``SHA-256,MD5``.

    Returns the list normalised (upper case, no spaces).
    """
    names = [name.strip().upper() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALGORITHMS]
    if not names or unknown or len(set(names)) != len(names):
        raise usage.UsageError(
            f"{text!r} is not a list of Digest algorithms: write some of {', '.join(ALGORITHMS)} "
            "separated by commas, preferred first, e.g. SHA-256,MD5"
        )
    return ",".join(names)


digest_algorithms.coerceDoc = "a comma-separated list of SHA-256 and MD5"  # type: ignore[attr-defined]


def _coercer(parse: object, doc: str) -> object:
    """Give a parser from the SIP layer the ``coerceDoc`` the option errors quote."""
    parse.coerceDoc = doc  # type: ignore[attr-defined]
    return parse


def domain_name(text: str) -> str:
    """Coercer for ``--sip-domain-alias``: a domain name (or IP address), lower case."""
    if "=" in text:
        raise ValueError(f"{text!r} is not a domain name")
    return parse_peer_domain(text).name


def foreign_callers(text: str) -> ForeignCallers:
    """Coercer for ``--sip-foreign-callers``: ``anyone`` or ``peer-domains``."""
    return ForeignCallers(text.strip().lower())


def dns_servers(text: str) -> list[tuple[str, int]]:
    """Coercer for ``--dns-servers``: HOST[:PORT] entries separated by commas."""
    return [parse_dns_server(part) for part in text.split(",") if part.strip()]


_coercer(domain_name, "a domain name such as example.com")
_coercer(foreign_callers, "anyone or peer-domains")
_coercer(dns_servers, "IP[:PORT] DNS server addresses separated by commas, e.g. 127.0.0.1:5353")
_coercer(parse_peer_domain, "DOMAIN or DOMAIN=ADDRESS[,ADDRESS...], e.g. kam.example=192.0.2.20")
_coercer(parse_client_rule, "USER-AGENT-TEXT=ALGORITHMS, e.g. Linphone=SHA-256,MD5")
_coercer(parse_static_route, "DOMAIN=SIP-URI, e.g. pstn.example=sip:192.0.2.30:5060;transport=tcp")


def check_sip_tls(options: Mapping[str, Any]) -> SipTlsCredentials | None:
    """
    --sip-tls needs a plain listener beside it and the domain's certificate
    and key; the credentials read, or None without any.
    """
    certificate, key = options["sip-tls-certificate"], options["sip-tls-key"]
    if options["sip-tls"]:
        if not options["sip"]:
            raise usage.UsageError(
                "--sip-tls serves phones over TLS; super-nodes reach each other over UDP or "
                "TCP, so give a --sip listener too (e.g. --sip udp:5060)"
            )
        missing = [
            name
            for name, value in (("--sip-tls-certificate", certificate), ("--sip-tls-key", key))
            if not value
        ]
        if missing:
            raise usage.UsageError(
                f"--sip-tls needs {' and '.join(missing)}: the SIP domain's PEM certificate "
                "(chain) and its private key"
            )
    if certificate or key:
        if not (certificate and key):
            given, absent = (
                ("--sip-tls-certificate", "--sip-tls-key")
                if certificate
                else ("--sip-tls-key", "--sip-tls-certificate")
            )
            raise usage.UsageError(f"{given} needs {absent} too")
        return read_sip_tls_credentials(certificate, key)
    return None


def domain_routes(options: Mapping[str, Any]) -> DomainRoutes:
    """The gateway's rules from the options; a domain in two roles stops the role."""
    peers: list[PeerDomain] = list(options["sip-peer-domain"])
    static: list[StaticRoute] = list(options["sip-static-route"])
    try:
        return DomainRoutes.build(
            options["overlay-name"],
            options["sip-domain-alias"],
            peers,
            static,
            options["sip-foreign-callers"],
        )
    except ValueError as e:
        raise usage.UsageError(
            f"{e}: fix --sip-domain-alias, --sip-peer-domain or --sip-static-route"
        ) from None


def sip_config(
    options: Mapping[str, Any],
    tls: SipTlsCredentials | None,
    media: MediaRelayConfig | None = None,
) -> SipConfig:
    """
    The SIP settings from the options :data:`SIP_OPTION_NAMES` names (``--sip``
    given), with ``dns-servers`` where the role has it, and the media relay's.
    """
    return SipConfig(
        domain=options["overlay-name"],
        listeners=tuple(options["sip"]),
        users_path=Path(options["users"]) if options["users"] else None,
        digest_algorithms=tuple(options["sip-digest-algorithms"].split(",")),
        advertise=options["sip-advertise"],
        trusted_network=bool(options["sip-trusted-network"]),
        rate_limit_per_second=options["sip-rate-limit"],
        rate_limit_burst=options["sip-rate-burst"],
        overload=OverloadThresholds(
            options["sip-overload-pending"],
            options["sip-overload-lag"],
            max_backlog=options["sip-overload-backlog"],
        ),
        idle_timeout_seconds=options["sip-idle-timeout"],
        location_cache_entries=options["sip-location-cache"],
        direct_contacts=options["sip-direct-contacts"],
        connections_per_source=options["sip-connections-per-source"],
        max_connections=options["sip-max-connections"],
        tls_listeners=tuple(options["sip-tls"]),
        tls=tls if options["sip-tls"] else None,
        digest_clients=tuple(options["sip-digest-client"]),
        routes=domain_routes(options),
        dns_servers=tuple(options.get("dns-servers") or ()),
        media=media,
    )


class RingRoleOptions(RoleOptions, SecurityOptions):
    """Options of every role that is a member of the ring, SIP included."""

    role: ClassVar[str] = ""
    #: Shown on the status page.
    title: ClassVar[str] = ""
    repeatable: ClassVar[tuple[str, ...]] = (
        "bootstrap",
        "sip",
        "sip-tls",
        "http-allowed-hosts",
        "sip-domain-alias",
        "sip-peer-domain",
        "sip-static-route",
        "sip-digest-client",
    )
    default_http: ClassVar[str] = "tcp:8084:interface=127.0.0.1"
    default_data_dir: ClassVar[str] = "/var/lib/p2psip"

    optParameters = [
        [
            "overlay-name",
            None,
            "p2psip.test",
            "Overlay (and SIP domain) name; every peer of a ring uses the same.",
        ],
        [
            "overlay",
            None,
            "tcp:6084",
            "Endpoint to listen on for RELOAD links, e.g. tcp:6084.",
            server_endpoint,
        ],
        [
            "bootstrap",
            None,
            None,
            "Client endpoint of a bootstrap or known peer, e.g. tcp:198.51.100.1:6084.",
            client_endpoint,
        ],
        [
            "http",
            None,
            None,
            "Endpoint of the status page, /metrics and admin API (loopback by default).",
            server_endpoint,
        ],
        [
            "http-allowed-hosts",
            None,
            None,
            "Host name, besides the --http address and localhost, that clients may put in the "
            "Host header (a name in front of a proxy, say); others are refused against DNS "
            "rebinding.",
            allowed_host,
        ],
        [
            "data-dir",
            None,
            None,
            "Directory for the node key, its certificate and the admin API token.",
        ],
        [
            "advertise",
            None,
            None,
            "Address other peers (and phones, without --sip-advertise) use to reach this node "
            "(default: the --overlay interface; for a listener on every interface the address "
            "of the interface of the default route).",
        ],
        [
            "overlay-tls-key-log",
            None,
            None,
            "File the overlay links' TLS secrets are appended to (NSS key log format), so "
            "Wireshark can decrypt a capture; for debugging only: whoever reads the file reads "
            "the ring's traffic.",
        ],
        ["successors", None, 4, "Successor list size.", int],
        ["predecessors", None, 4, "Predecessor list size.", int],
        ["replicas", None, 2, "Copies of every value kept on the next successors.", int],
        [
            "registrations-per-signer",
            None,
            10000,
            "Most SIP registrations (and user certificates) one node may have stored at this "
            "peer. A super-node signs those of every phone it serves, so in a ring of N peers "
            "one super-node serves at most about N/3 times this many phones; set the same on "
            "every peer. Each costs about 2 KiB here.",
            positive_int,
        ],
        [
            "update-interval",
            None,
            60.0,
            "Seconds between Chord Updates to neighbours (stabilisation).",
            float,
        ],
        [
            "ping-interval",
            None,
            15.0,
            "Seconds of silence before a link is pinged; a Ping (or anything) left "
            "unacknowledged for --link-ack-timeout declares the peer dead.",
            float,
        ],
        ["request-timeout", None, 15.0, "RELOAD transaction timeout in seconds.", float],
        [
            "link-ack-timeout",
            None,
            5.0,
            "Seconds a peer may leave a message over its link unacknowledged before the link "
            "is closed and the peer taken for dead (or stuck).",
            float,
        ],
        ["max-message-size", None, 1_048_576, "Largest RELOAD message accepted, in bytes.", int],
        [
            "mediator",
            None,
            None,
            "Client endpoint of a p2psip-mediator's control port (e.g. tcp:198.51.100.9:3479): "
            "peers that a direct connect does not reach are reached through it.",
            client_endpoint,
        ],
        [
            "mediator-secret",
            None,
            None,
            "This node's own secret at the mediator (`p2psip mediator secret NODE-ID` on the "
            "mediator host prints it).",
        ],
        [
            "mediator-secret-file",
            None,
            None,
            "File whose first line is this node's own secret at the mediator; wins over "
            "--mediator-secret.",
        ],
        [
            "direct-connect-timeout",
            None,
            DIRECT_CONNECT_TIMEOUT_SECONDS,
            "Seconds a direct connect to a peer may take before the mediator is asked.",
            positive_float,
        ],
        [
            "sip",
            None,
            None,
            "SIP listener, udp:PORT[:interface=ADDR] or tcp:PORT[:interface=ADDR]; "
            "without any the node serves no SIP.",
            sip_listen_address,
        ],
        [
            "sip-tls",
            None,
            None,
            "SIP over TLS listener for phones: a stream endpoint such as tcp:5061 on which TLS "
            "runs with --sip-tls-certificate and --sip-tls-key; needs a --sip listener too.",
            server_endpoint,
        ],
        [
            "sip-tls-certificate",
            None,
            None,
            "PEM certificate of the SIP domain for --sip-tls, then any intermediates.",
        ],
        ["sip-tls-key", None, None, "PEM private key (unencrypted) of --sip-tls-certificate."],
        ["users", None, None, "Digest users file (made with `p2psip users add --file FILE AOR`)."],
        [
            "sip-digest-algorithms",
            None,
            ",".join(DEFAULT_ALGORITHMS),
            "Digest algorithms challenges offer, preferred first.  MD5 alone registers every "
            "phone (baresip 1.0 aborts on any SHA-256 challenge); offer SHA-256 per user "
            "(`p2psip users add --offer`) or per client (--sip-digest-client).",
            digest_algorithms,
        ],
        [
            "sip-digest-client",
            None,
            None,
            "USER-AGENT-TEXT=ALGORITHMS: requests whose User-Agent contains the text (any case) "
            "are offered that list instead, e.g. Linphone=SHA-256,MD5.",
            parse_client_rule,
        ],
        [
            "sip-advertise",
            None,
            None,
            "Host other super-nodes and phones reach the SIP listener at "
            "(default: the first --sip interface, else the overlay address).",
        ],
        [
            "media-relay",
            None,
            "never",
            "Which calls this super-node relays RTP for: never, nat-only (a phone served "
            "here shows NAT evidence) or always (every call with a phone served here).",
            media_relay_policy,
        ],
        [
            "media-ports",
            None,
            "40000-40999",
            "UDP port range of the media relay (four ports per relayed stream); none: relay "
            "only through the relays of other super-nodes, found in the overlay.",
            port_range,
        ],
        [
            "media-address",
            None,
            None,
            "IPv4 address phones send relayed media to, written into SDP (default: "
            "--sip-advertise, else the SIP host).",
            ipv4_address,
        ],
        [
            "media-interface",
            None,
            "",
            "Interface the relay ports bind on (default: every interface).",
        ],
        [
            "media-timeout",
            None,
            60.0,
            "Seconds without a packet after which a relayed call's ports are freed.",
            positive_float,
        ],
        [
            "sip-rate-limit",
            None,
            DEFAULT_REQUESTS_PER_SECOND,
            "New SIP requests per second one source address may send; above it they get 503 "
            "with Retry-After.  0: no limit (a benchmark driving the node from one address).",
            non_negative_float,
        ],
        [
            "sip-rate-burst",
            None,
            DEFAULT_BURST,
            "New SIP requests a quiet source address may send at once, above --sip-rate-limit.",
            positive_int,
        ],
        [
            "workers",
            None,
            1,
            "Worker processes for this super-node host, each its own ring peer "
            "(DATA_DIR/worker-K, overlay port +K, http port +1+K), sharing the SIP ports "
            "(SO_REUSEPORT); use one per core.",
            positive_int,
        ],
        [
            "worker",
            None,
            None,
            "Set by --workers on the processes it starts: which worker this is (0 to N-1).",
            int,
        ],
        [
            "sip-location-cache",
            None,
            DEFAULT_LOCATION_CACHE_ENTRIES,
            "AORs whose registrations fetched from the overlay are remembered (at most 30 s, "
            "never past their expiry), so repeated calls need no overlay lookup.  0: off.",
            non_negative_int,
        ],
        [
            "sip-direct-contacts",
            None,
            "public",
            "Phones a call may reach from the caller's super-node, skipping their own: public "
            "(registered from their own public address, no NAT), any (private and loopback "
            "addresses too: one LAN or lab) or off (every call crosses the callee's super-node).",
            direct_contacts_option,
        ],
        [
            "sip-overload-pending",
            None,
            DEFAULT_MAX_PENDING,
            "Requests being worked on (no final response yet) past which new INVITEs and "
            "REGISTERs get 503 with Retry-After.  0: not checked.",
            non_negative_int,
        ],
        [
            "sip-overload-lag",
            None,
            DEFAULT_MAX_LAG_SECONDS,
            "Smoothed event-loop lag, in seconds, past which new INVITEs and REGISTERs get 503 "
            "with Retry-After.  0: not checked.",
            non_negative_float,
        ],
        [
            "sip-overload-backlog",
            None,
            DEFAULT_MAX_BACKLOG,
            "Fill of a SIP UDP socket's receive queue (0-1, its share of the socket buffer) "
            "past which new INVITEs and REGISTERs get 503 with Retry-After: a flood shows "
            "there before the loop lag.  0: not checked.",
            fraction,
        ],
        [
            "sip-idle-timeout",
            None,
            TCP_IDLE_TIMEOUT_SECONDS,
            "Seconds without a byte (CRLF keepalives count) after which a SIP TCP or TLS "
            "connection is closed.",
            positive_float,
        ],
        [
            "sip-connections-per-source",
            None,
            TCP_CONNECTIONS_PER_SOURCE,
            "SIP TCP and TLS connections one address may hold open at once; more are refused.",
            positive_int,
        ],
        [
            "sip-max-connections",
            None,
            MAX_TCP_CONNECTIONS,
            "SIP TCP and TLS connections open at once, from everyone.",
            positive_int,
        ],
        [
            "sip-domain-alias",
            None,
            None,
            "Another domain this overlay's users are reached at (a conventional domain whose "
            "DNS points at the super-nodes): sip:alice@ALIAS is alice of the overlay.",
            domain_name,
        ],
        [
            "sip-peer-domain",
            None,
            None,
            "A conventional SIP domain the gateway federates with, DOMAIN or "
            "DOMAIN=ADDRESS,...: our users' calls to it are sent to its servers (RFC 3263), and "
            "requests from its servers (or the ADDRESSes) for our users are accepted.",
            parse_peer_domain,
        ],
        [
            "sip-static-route",
            None,
            None,
            "DOMAIN=SIP-URI: our users' calls to DOMAIN go to that next hop (a PSTN gateway, "
            "say), which is also accepted as a source of calls for our users.",
            parse_static_route,
        ],
        [
            "sip-foreign-callers",
            None,
            None,
            "Who may call our users from other domains: anyone, or peer-domains (the peer "
            "domains and static routes only; others get 407).  Default: peer-domains once a "
            "peer domain or static route is configured, else anyone.",
            foreign_callers,
        ],
        [
            "dns-servers",
            None,
            None,
            "DNS servers for locating other domains' SIP servers (RFC 3263), IP[:PORT] "
            "separated by commas (default: the system's, from /etc/resolv.conf).",
            dns_servers,
        ],
        [
            "overlay-connections-per-source",
            None,
            32,
            "Overlay (RELOAD) connections one address may open to this node at once.",
            positive_int,
        ],
    ]
    optFlags = [
        [
            "sip-trusted-network",
            None,
            "Accept REGISTER without Digest authentication (closed networks only).",
        ],
        [
            "debug-memory-signal",
            None,
            "Debugging only: on SIGUSR2, log the live objects that grew most since the last "
            "report (and, under PYTHONTRACEMALLOC=1, the allocation sites); walks the heap.",
        ],
    ]

    #: The validated configuration, set by ``postOptions``.
    config: RingRoleConfig
    sip_tls: SipTlsCredentials | None
    #: Finds the default-route interface's address for a wildcard listener
    #: without --advertise; tests replace it on the instance.
    find_default_address: AddressFinder = staticmethod(default_route_address)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Keep the arguments: ``--workers`` starts its workers with the same ones."""
        self.arguments: list[str] = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def postOptions(self) -> None:
        super().postOptions()
        for name in ("successors", "predecessors"):
            if self[name] < 1:
                raise usage.UsageError(f"--{name} must be at least 1")
        if self["replicas"] < 0 or self["replicas"] > self["successors"]:
            raise usage.UsageError("--replicas must be between 0 and --successors")
        for name in ("update-interval", "ping-interval", "request-timeout", "link-ack-timeout"):
            if self[name] <= 0:
                raise usage.UsageError(f"--{name} must be a positive number of seconds")
        if self["max-message-size"] < 4096:
            raise usage.UsageError("--max-message-size must be at least 4096 bytes")
        if self["sip"] and not self["users"] and not self["sip-trusted-network"]:
            raise usage.UsageError(
                "--sip needs a users file for Digest authentication: give --users FILE (make it "
                "with `p2psip users add --file FILE sip:alice@DOMAIN`), or --sip-trusted-network "
                "to run without authentication on a closed network"
            )
        self._check_sip_tls()
        self.check_bootstrap()
        self.config = self._validated()

    def _check_sip_tls(self) -> None:
        self.sip_tls: SipTlsCredentials | None = check_sip_tls(self)

    def check_bootstrap(self) -> None:
        """Roles that must join a ring refuse to start without a way in."""

    def founds_ring(self) -> bool:
        """Whether this role founds a ring when nobody it knows answers."""
        return not self["bootstrap"]

    def _validated(self) -> RingRoleConfig:
        data_dir = Path(self["data-dir"] or os.path.join(self.default_data_dir, self.role))
        overlay = OverlayConfig(
            overlay_name=self["overlay-name"],
            successors=self["successors"],
            predecessors=self["predecessors"],
            replicas=self["replicas"],
            update_interval_seconds=self["update-interval"],
            ping_interval_seconds=self["ping-interval"],
            request_timeout_seconds=self["request-timeout"],
            link_ack_timeout_seconds=self["link-ack-timeout"],
            limits=Limits(max_message_bytes=self["max-message-size"]),
            registrations_per_signer=self["registrations-per-signer"],
        )
        mediator = mediator_client_config(self, self.role)
        sip = sip_config(self, self.sip_tls, media=self._media_relay()) if self["sip"] else None
        advertised_host, advertised_because = self._advertised()
        config = RingRoleConfig(
            role=self.role,
            title=self.title or f"p2psip {self.role}",
            found_ring=self.founds_ring(),
            overlay=overlay,
            listen=self["overlay"],
            advertise=self["advertise"],
            advertised_host=advertised_host,
            advertised_because=advertised_because,
            bootstrap=tuple(self["bootstrap"]),
            http=self["http"] or self.default_http,
            data_dir=data_dir,
            mediator=mediator,
            sip=sip,
            http_allowed_hosts=tuple(self["http-allowed-hosts"]),
            security=self.security_config(),
            overlay_connections_per_source=self["overlay-connections-per-source"],
            overlay_tls_key_log=(
                Path(self["overlay-tls-key-log"]) if self["overlay-tls-key-log"] else None
            ),
            workers=self["workers"],
            debug_memory_signal=bool(self["debug-memory-signal"]),
        )
        index = self["worker"]
        if index is not None:
            if not 0 <= index < config.workers:
                raise usage.UsageError(
                    f"--worker {index} is not one of the {config.workers} --workers"
                )
            from p2psip.roles.workers import worker_config

            return worker_config(config, index, config.workers)
        if config.workers > 1:
            from p2psip.roles.workers import check_supervisor_config

            check_supervisor_config(config)
        return config

    def _media_relay(self) -> MediaRelayConfig | None:
        """The relay's settings; None for ``--media-relay never``."""
        if self["media-relay"] == "never":
            return None
        ports = self["media-ports"]
        low, high = port_range(ports) if isinstance(ports, str) else ports
        address = self["media-address"]
        if address is None:
            host = self["sip-advertise"] or endpoint_interface(self["sip"][0]) or ""
            try:
                address = str(ipaddress.IPv4Address(host)) if host else None
            except ValueError:
                raise usage.UsageError(
                    f"--media-relay {self['media-relay']} needs an IPv4 address to write into "
                    f"SDP, and the SIP host {host!r} is none: give --media-address"
                ) from None
            if address in (None, "0.0.0.0"):
                raise usage.UsageError(
                    f"--media-relay {self['media-relay']} needs the address phones send media to: "
                    "give --media-address (or --sip-advertise as an IPv4 address)"
                )
        return MediaRelayConfig(
            policy=self["media-relay"],
            low_port=low,
            high_port=high,
            address=address,
            interface=self["media-interface"],
            idle_timeout_seconds=self["media-timeout"],
        )

    def _advertised(self) -> tuple[str, str]:
        """
        The host other peers reach this node at, and where it came from.

        A listener on every interface gives no address to tell them; then
        the default-route interface's address is taken, and a host without
        one stops the role with the option to set (127.0.0.1 would send
        every other host back to itself).
        """
        if self["advertise"]:
            if is_wildcard(self["advertise"]):
                raise usage.UsageError(
                    f"--advertise {self['advertise']} means every interface, which no other host "
                    "can connect to: give the address (or host name) other peers reach this node at"
                )
            return self["advertise"], "advertise"
        listen = self["overlay"]
        interface = endpoint_interface(listen)
        if interface is not None and not is_wildcard(interface):
            return interface, "the --overlay interface"
        ipv6 = listen.lower().startswith("tcp6:") or (interface or "").count(":") > 0
        found = self.find_default_address(socket.AF_INET6 if ipv6 else socket.AF_INET)
        if found is None:
            where = (
                f"advertise = ADDRESS in the [{self.role}] section of {self.config_source} "
                "(or --advertise ADDRESS)"
                if self.config_source
                else "--advertise ADDRESS"
            )
            raise usage.UsageError(
                f"--overlay {listen} listens on every interface and this host has no default "
                "route, so this node cannot tell other peers which address reaches it: set "
                f"{where}, or name the interface in the listener (e.g. "
                f"{listen.split(':')[0]}:PORT:interface=ADDRESS)"
            )
        return found, (
            f"the address of the default-route interface, since --overlay {listen} listens on "
            "every interface; set advertise to choose another"
        )


def mediator_client_config(options: Mapping[str, Any], role: str) -> MediatorClientConfig | None:
    """``--mediator`` with its secret (read now, so a bad file stops the role at once); None without."""
    if not options["mediator"]:
        return None
    return MediatorClientConfig(
        endpoint=options["mediator"],
        secret=_mediator_secret(options, role),
        direct_timeout_seconds=options["direct-connect-timeout"],
    )


def _mediator_secret(options: Mapping[str, Any], role: str) -> bytes:
    """The secret for the mediator's challenge."""
    path = options["mediator-secret-file"]
    if path:
        try:
            with open(path, encoding="utf-8") as secret_file:
                secret = secret_file.readline().strip()
        except OSError as error:
            raise usage.UsageError(
                f"cannot read --mediator-secret-file {path}: {error.strerror}; "
                "fix the path or the file's permissions"
            ) from None
        if not secret:
            raise usage.UsageError(
                f"--mediator-secret-file {path} is empty; put the secret on its first line"
            )
        return secret.encode("utf-8")
    if options["mediator-secret"]:
        return str(options["mediator-secret"]).encode("utf-8")
    raise usage.UsageError(
        "--mediator needs the secret it checks: give --mediator-secret or "
        f"--mediator-secret-file (or 'mediator-secret-file' in the [{role}] section of "
        "--config)"
    )


#: The SIP options every role with a SIP stack takes (the thin client too).
SIP_OPTION_NAMES = frozenset(
    name
    for name, *_ in [*RingRoleOptions.optParameters, *RingRoleOptions.optFlags]
    if name.startswith("sip") or name == "users"
)

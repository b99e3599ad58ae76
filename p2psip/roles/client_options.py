"""
The options of the thin client role (``twistd p2psip-client``) and the
frozen configuration they are validated into.

A thin client is a RELOAD client (RFC 6940 s3.2.1) with a SIP adaptor in
front: it attaches to one peer of the ring (found through ``--bootstrap``
or the peers it cached), and an ordinary SIP phone on the same host
registers with it and calls through it.  So it takes the ring roles'
security options (certificates from the overlay CA, or ``--insecure``)
and their SIP options, but none of a ring member's: no overlay listener,
no successors, no replicas.

Phones are trusted by where they are: with every ``--sip`` listener on a
loopback interface (the default, ``udp:5062:interface=127.0.0.1`` and
``tcp:5062:interface=127.0.0.1``) only processes on this host can reach
the adaptor, and Digest is off unless ``--users`` turns it on.  A listener
on any other interface needs ``--users`` (Digest) or an explicit
``--sip-trusted-network``.

Behind a NAT, ``--mediator`` (with the client's secret there) lets SIP
between two thin clients cross both NATs: the client logs in to the STUNT
mediator under its Node-ID and opens its streams to other clients through
it when the address they announce does not answer
(:mod:`p2psip.roles.client_traversal`); the adaptor is then reached over
TCP.

Media: a thin client has no relay ports of its own.  With ``--media-relay
always`` (or ``nat-only``) it sends its calls through the media relay of a
super-node it finds in the overlay (the MEDIA-RELAY list,
:mod:`p2psip.media.directory`), which rewrites the SDP so that the RTP
crosses it; the default, ``never``, leaves the media to the phones.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, ClassVar

from attrs import evolve, field, frozen
from twisted.python import usage

from p2psip.config import RoleOptions, client_endpoint, positive_float, server_endpoint
from p2psip.overlay.codec import Limits
from p2psip.overlay.parameters import OverlayConfig
from p2psip.roles.ring_options import (
    SIP_OPTION_NAMES,
    MediaRelayConfig,
    MediatorClientConfig,
    RingRoleOptions,
    SipConfig,
    check_sip_tls,
    media_relay_policy,
    mediator_client_config,
    sip_config,
    sip_listen_address,
)
from p2psip.roles.security_options import SecurityConfig, SecurityOptions
from p2psip.util.endpoints import endpoint_interface

#: The SIP adaptor's listeners unless ``--sip`` names others: loopback only.
DEFAULT_SIP_LISTENERS = ("udp:5062:interface=127.0.0.1", "tcp:5062:interface=127.0.0.1")


@frozen
class ClientConfig:
    """Everything the thin client role is built from."""

    title: str
    overlay: OverlayConfig
    bootstrap: tuple[str, ...]
    http: str
    data_dir: Path
    sip: SipConfig
    security: SecurityConfig = field(factory=SecurityConfig)
    http_allowed_hosts: tuple[str, ...] = ()
    overlay_tls_key_log: Path | None = None
    role: str = "client"
    #: A client never founds a ring (read by the credentials loader).
    found_ring: bool = False
    #: The STUNT mediator that connects this client's SIP to clients behind NATs.
    mediator: MediatorClientConfig | None = None


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (an address, or localhost) is a loopback one."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def is_loopback_listener(description: str) -> bool:
    """Whether a listen string names a loopback interface (no interface: every one)."""
    interface = endpoint_interface(description)
    return bool(interface) and is_loopback_host(interface or "")


def _ring_parameters(*names: str) -> list[list[Any]]:
    """The ring roles' declarations of ``names``: one definition, one help text."""
    chosen = [p for p in RingRoleOptions.optParameters if p[0] in names]
    assert len(chosen) == len(names), names
    return chosen


class Options(RoleOptions, SecurityOptions):
    """``twistd p2psip-client``: a thin client and its local SIP adaptor."""

    role: ClassVar[str] = "client"
    title: ClassVar[str] = "p2psip client"
    synopsis = "--bootstrap tcp:HOST:PORT [--sip udp:5062:interface=127.0.0.1] [options]"
    longdesc = (
        "Run a p2psip thin client: a RELOAD client attached to one peer of the ring, with a "
        "SIP adaptor that phones on this host register with and call through."
    )
    repeatable: ClassVar[tuple[str, ...]] = (
        "bootstrap",
        "http-allowed-hosts",
        *(name for name in RingRoleOptions.repeatable if name in SIP_OPTION_NAMES),
    )
    default_data_dir: ClassVar[str] = "/var/lib/p2psip"

    optParameters = [
        *_ring_parameters("overlay-name"),
        [
            "bootstrap",
            None,
            None,
            "Client endpoint of a bootstrap or peer of the ring, e.g. tcp:198.51.100.1:6084; "
            "the client attaches to the peer responsible for its Node-ID, found through it.",
            client_endpoint,
        ],
        [
            "http",
            None,
            "tcp:8088:interface=127.0.0.1",
            "Endpoint of the status page, /status, /metrics and admin API (loopback by default).",
            server_endpoint,
        ],
        *_ring_parameters("http-allowed-hosts"),
        [
            "data-dir",
            None,
            None,
            "Directory for the client's key, its node and user certificates, the known peers "
            "and the admin API token (default /var/lib/p2psip/client).",
        ],
        *_ring_parameters("overlay-tls-key-log"),
        *_ring_parameters(
            "mediator", "mediator-secret", "mediator-secret-file", "direct-connect-timeout"
        ),
        [
            "update-interval",
            None,
            60.0,
            "Seconds between checks that the attachment peer still owns this client's Node-ID "
            "(and re-publications of its certificates).",
            positive_float,
        ],
        [
            "ping-interval",
            None,
            15.0,
            "Seconds of silence before the link to the attachment peer is pinged; twice this "
            "plus the request timeout declares the peer dead.",
            positive_float,
        ],
        ["request-timeout", None, 15.0, "RELOAD transaction timeout in seconds.", positive_float],
        ["max-message-size", None, 1_048_576, "Largest RELOAD message accepted, in bytes.", int],
        [
            "sip",
            None,
            None,
            "Listener of the SIP adaptor phones register with, udp:PORT[:interface=ADDR] or "
            "tcp:PORT[:interface=ADDR]; default udp:5062 and tcp:5062 on 127.0.0.1.  Its "
            "first UDP (else TCP) listener is also where other nodes send this client's calls.",
            sip_listen_address,
        ],
        [
            "sip-advertise",
            None,
            None,
            "Host other nodes reach the SIP adaptor at (default: the first --sip interface).",
        ],
        *[
            p
            for p in RingRoleOptions.optParameters
            if p[0] in SIP_OPTION_NAMES and p[0] not in ("sip", "sip-advertise")
        ],
        [
            "media-relay",
            None,
            "never",
            "Which calls go through a super-node's media relay, found in the overlay: never, "
            "nat-only (the phone or the callee shows NAT evidence) or always.",
            media_relay_policy,
        ],
    ]
    optFlags = [f for f in RingRoleOptions.optFlags if f[0] in SIP_OPTION_NAMES]

    #: The validated configuration, set by ``postOptions``.
    config: ClientConfig

    def postOptions(self) -> None:
        super().postOptions()
        if not self["bootstrap"]:
            raise usage.UsageError(
                "a client needs at least one --bootstrap ENDPOINT (or 'bootstrap =' in the "
                "[client] section of its --config file), e.g. --bootstrap tcp:198.51.100.1:6084"
            )
        if self["max-message-size"] < 4096:
            raise usage.UsageError("--max-message-size must be at least 4096 bytes")
        if not self["sip"]:
            self["sip"] = list(DEFAULT_SIP_LISTENERS)
        exposed = [
            listener
            for listener in [*self["sip"], *self["sip-tls"]]
            if not is_loopback_listener(listener)
        ]
        if exposed and not self["users"] and not self["sip-trusted-network"]:
            raise usage.UsageError(
                f"--sip {exposed[0]} is reachable from other hosts, so phones must authenticate: "
                "give --users FILE (`p2psip users add --file FILE sip:alice@DOMAIN`), listen on "
                "127.0.0.1 only (the default), or give --sip-trusted-network on a closed network"
            )
        tls = check_sip_tls(self)
        sip = sip_config(self, tls, media=self._media_relay())
        if not self["users"]:
            # Loopback only (checked above) or trusted explicitly: no Digest.
            sip = evolve(sip, trusted_network=True)
        mediator = mediator_client_config(self, self.role)
        if mediator is not None:
            # The mediator carries TCP streams: other nodes reach the adaptor over TCP.
            if not any(listener.lower().startswith("tcp") for listener in self["sip"]):
                raise usage.UsageError(
                    "--mediator carries SIP over TCP: add a TCP adaptor listener, e.g. "
                    "--sip tcp:5062:interface=127.0.0.1 (the default has one)"
                )
            sip = evolve(sip, peer_transport_choice="TCP")
        overlay = OverlayConfig(
            overlay_name=self["overlay-name"],
            update_interval_seconds=self["update-interval"],
            ping_interval_seconds=self["ping-interval"],
            request_timeout_seconds=self["request-timeout"],
            limits=Limits(max_message_bytes=self["max-message-size"]),
        )
        self.config = ClientConfig(
            title=self.title,
            overlay=overlay,
            bootstrap=tuple(self["bootstrap"]),
            http=self["http"],
            data_dir=Path(self["data-dir"] or os.path.join(self.default_data_dir, self.role)),
            sip=sip,
            security=self.security_config(),
            http_allowed_hosts=tuple(self["http-allowed-hosts"]),
            overlay_tls_key_log=(
                Path(self["overlay-tls-key-log"]) if self["overlay-tls-key-log"] else None
            ),
            mediator=mediator,
        )

    def _media_relay(self) -> MediaRelayConfig | None:
        """
        No ports of its own (``media-ports none`` of a super-node): every
        relayed call goes through a super-node's relay.  The address is
        never written into SDP, since this node relays nothing itself.
        """
        if self["media-relay"] == "never":
            return None
        return MediaRelayConfig(
            policy=self["media-relay"],
            low_port=0,
            high_port=0,
            address=None,
            interface="",
            idle_timeout_seconds=60.0,
        )


__all__ = [
    "ClientConfig",
    "Options",
    "DEFAULT_SIP_LISTENERS",
    "is_loopback_host",
    "is_loopback_listener",
]

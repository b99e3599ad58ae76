"""
The ``p2psip-mediator`` role: STUN (UDP and TCP), the STUNT control port and
broker, the relay of last resort, and the status pages.

``twistd -n p2psip-mediator --config etc/mediator.ini`` is the whole story;
every option can be set in the ``[mediator]`` section of that file, and the
command line wins.
"""

from __future__ import annotations

import os
from typing import Any

from attrs import frozen
from twisted.application import strports
from twisted.application.service import MultiService
from twisted.python import usage

from p2psip.util.reactor import IRoleReactor, as_role_reactor
from p2psip.config import RoleOptions, server_endpoint
from p2psip.nat import mediator, stun_server
from p2psip.nat.broker import Broker, BrokerPolicy
from p2psip.nat.control_auth import Secrets, parse_secrets_file
from p2psip.util.endpoints import (
    UDPListenAddress,
    is_udp,
    parse_host_port,
    parse_udp_listen_address,
    stream_listen_port,
)
from p2psip.util.metrics import role_registry
from p2psip.web.site import allowed_host, build_site, http_service

#: Where an operator turns the relay on or off, for failure reasons.
RELAY_SETTING = "mediator.ini [mediator] relay (or --relay yes)"

#: The STUN port clients are told to probe when no listener names one
#: (``systemd:`` sockets): the IANA port.
DEFAULT_STUN_PORT = 3478


def yes_no(value: str) -> bool:
    word = value.strip().lower()
    if word in ("yes", "true", "on", "1"):
        return True
    if word in ("no", "false", "off", "0"):
        return False
    raise ValueError(value)


yes_no.coerceDoc = "yes or no"  # type: ignore[attr-defined]


#: A STUN client sends a handful of requests per session and a behaviour
#: probe a few dozen; these leave room for a NAT full of clients behind one
#: address while keeping the server from reflecting floods.
STUN_REQUESTS_PER_SECOND = 100.0
STUN_REQUEST_BURST = 200


@frozen
class MediatorConfig:
    """Everything the mediator is built from, checked by ``Options.postOptions``."""

    stun_udp: tuple[UDPListenAddress, ...]
    stun_stream: tuple[str, ...]
    #: RFC 5780's second address and port of this host, if configured.
    alternate: tuple[str, int] | None
    control: str
    http: str
    secrets: Secrets
    policy: BrokerPolicy
    relay_limits: mediator.RelayLimits
    connections_per_minute_per_address: int
    #: Names accepted in Host headers besides the listener's address and localhost.
    http_allowed_hosts: tuple[str, ...] = ()
    #: Control messages one source address may send per second, and at once.
    control_messages_per_second: float = mediator.CONTROL_MESSAGES_PER_SECOND
    control_messages_burst: int = mediator.CONTROL_MESSAGE_BURST
    #: STUN datagrams answered per source address per second, and at once (0: no limit).
    stun_requests_per_second: float = STUN_REQUESTS_PER_SECOND
    stun_request_burst: int = STUN_REQUEST_BURST

    @property
    def stun_udp_port(self) -> int:
        """The UDP port clients probe: the first UDP listener's."""
        return self.stun_udp[0].port if self.stun_udp else DEFAULT_STUN_PORT

    @property
    def stun_tcp_port(self) -> int:
        """The TCP port clients probe for port prediction: the first stream listener's."""
        for description in self.stun_stream:
            port = stream_listen_port(description)
            if port is not None:
                return port
        return DEFAULT_STUN_PORT


class Options(RoleOptions):
    role = "mediator"
    repeatable = ("stun", "http-allowed-hosts")
    optParameters = [
        [
            "stun",
            None,
            "udp:3478 tcp:3478",
            "STUN listener: udp:PORT[:interface=ADDR] or a TCP endpoint; clients probe the TCP one.",
        ],
        [
            "stun-alternate",
            None,
            None,
            "IP:PORT or [IPv6]:PORT, a second address and port of this host: RFC 5780 behaviour discovery over UDP "
            "(needs --stun udp:PORT:interface=PRIMARY_IP).",
        ],
        [
            "control",
            None,
            "tcp:3479",
            "STUNT control listener (clients stay connected here).",
            server_endpoint,
        ],
        [
            "http",
            None,
            "tcp:8087:interface=127.0.0.1",
            "/status and /metrics listener.",
            server_endpoint,
        ],
        [
            "http-allowed-hosts",
            None,
            None,
            "Host name, besides the --http address and localhost, that clients may put in the "
            "Host header (a name Prometheus scrapes, say); others are refused against DNS "
            "rebinding.",
            allowed_host,
        ],
        [
            "data-dir",
            None,
            None,
            "State folder; a file 'secrets' there is read when no secret is given.",
        ],
        [
            "secret",
            None,
            None,
            "Shared secret each client's own secret is derived from (`p2psip mediator secret "
            "ID` prints it); clients never get this one.",
        ],
        [
            "secrets-file",
            None,
            None,
            "File of 'ID SECRET' lines: per-client secrets (win over the derived ones).",
        ],
        ["relay", None, True, "Relay TCP streams when no direct path works.", yes_no],
        [
            "relay-sessions-per-client",
            None,
            4,
            "Relayed sessions one client may hold at once.",
            int,
        ],
        ["max-relays", None, 256, "Relayed sessions at once, from all clients.", int],
        [
            "relay-bytes-per-session",
            None,
            100 * 1024 * 1024,
            "A relayed session ends after this many bytes.",
            int,
        ],
        [
            "relay-rate-bytes-per-second",
            None,
            1024 * 1024,
            "Each direction of a relay is paused above this.",
            int,
        ],
        ["relay-idle-seconds", None, 300.0, "A relayed session idle this long is closed.", float],
        ["max-clients", None, 1000, "Registered clients at once; more IDs are refused.", int],
        [
            "max-sessions-per-client",
            None,
            8,
            "Connection attempts one client may have in progress.",
            int,
        ],
        [
            "connections-per-minute-per-address",
            None,
            60,
            "New control connections per source address.",
            int,
        ],
        [
            "control-messages-per-second",
            None,
            mediator.CONTROL_MESSAGES_PER_SECOND,
            "Control messages one source address may send per second; past it (and the "
            "burst) its connection is closed.",
            float,
        ],
        [
            "control-messages-burst",
            None,
            mediator.CONTROL_MESSAGE_BURST,
            "Control messages a quiet source address may send at once.",
            int,
        ],
        [
            "stun-requests-per-second",
            None,
            STUN_REQUESTS_PER_SECOND,
            "STUN datagrams answered per source address per second; past it (and the burst) "
            "they are dropped and logged. 0 answers everything (load tests from one address).",
            float,
        ],
        [
            "stun-request-burst",
            None,
            STUN_REQUEST_BURST,
            "STUN datagrams a quiet source address may have answered at once.",
            int,
        ],
        ["low-ttl", None, True, "Try STUNT's low-TTL SYN after simultaneous open.", yes_no],
        [
            "low-ttl-hops",
            None,
            2,
            "IP TTL of that SYN: past the client's NAT, short of the peer's.",
            int,
        ],
        ["attempt-deadline-seconds", None, 4.0, "How long each side tries one method.", float],
    ]

    config: MediatorConfig

    def postOptions(self) -> None:
        super().postOptions()
        stun_udp, stun_stream = self._stun_listeners()
        self.config = MediatorConfig(
            stun_udp=stun_udp,
            stun_stream=stun_stream,
            alternate=self._alternate(stun_udp),
            control=self["control"],
            http=self["http"],
            secrets=self._secrets(),
            policy=self._policy(),
            relay_limits=mediator.RelayLimits(
                max_bytes_per_session=self["relay-bytes-per-session"],
                rate_bytes_per_second=self["relay-rate-bytes-per-second"],
                idle_timeout_seconds=self["relay-idle-seconds"],
            ),
            connections_per_minute_per_address=self["connections-per-minute-per-address"],
            http_allowed_hosts=tuple(self["http-allowed-hosts"]),
            control_messages_per_second=self["control-messages-per-second"],
            control_messages_burst=self["control-messages-burst"],
            stun_requests_per_second=self["stun-requests-per-second"],
            stun_request_burst=self["stun-request-burst"],
        )

    def _stun_listeners(self) -> tuple[tuple[UDPListenAddress, ...], tuple[str, ...]]:
        udp: list[UDPListenAddress] = []
        stream: list[str] = []
        for description in self["stun"]:
            try:
                if is_udp(description):
                    udp.append(parse_udp_listen_address(description))
                else:
                    stream.append(server_endpoint(description))
                    stream_listen_port(description)
            except (ValueError, usage.UsageError) as e:
                raise usage.UsageError(f"--stun (or 'stun' in [mediator]): {e}") from None
        if not udp and not stream:
            raise usage.UsageError("--stun needs at least one listener, e.g. udp:3478 tcp:3478")
        return tuple(udp), tuple(stream)

    def _alternate(self, udp: tuple[UDPListenAddress, ...]) -> tuple[str, int] | None:
        if not self["stun-alternate"]:
            return None
        try:
            alternate = parse_host_port(self["stun-alternate"])
        except ValueError as e:
            raise usage.UsageError(f"--stun-alternate: {e}") from None
        if len(udp) != 1 or not udp[0].interface:
            raise usage.UsageError(
                "--stun-alternate needs exactly one UDP STUN listener bound to the primary IP: "
                "--stun udp:3478:interface=PRIMARY_IP"
            )
        return alternate

    def _secrets(self) -> Secrets:
        for name in (
            "relay-sessions-per-client",
            "relay-bytes-per-session",
            "relay-rate-bytes-per-second",
            "max-clients",
            "max-sessions-per-client",
            "connections-per-minute-per-address",
            "low-ttl-hops",
            "max-relays",
            "control-messages-burst",
        ):
            if self[name] < 1:
                raise usage.UsageError(f"--{name} (or '{name}' in [mediator]) must be at least 1")
        if self["stun-requests-per-second"] < 0:
            raise usage.UsageError(
                "--stun-requests-per-second (or 'stun-requests-per-second' in [mediator]) "
                "must be 0 (no limit) or more"
            )
        if self["stun-requests-per-second"] > 0 and self["stun-request-burst"] < 1:
            raise usage.UsageError(
                "--stun-request-burst (or 'stun-request-burst' in [mediator]) must be at least 1"
            )
        if not self["control-messages-per-second"] > 0:
            raise usage.UsageError(
                "--control-messages-per-second (or 'control-messages-per-second' in [mediator]) "
                "must be above 0"
            )
        secrets_file = self["secrets-file"]
        if not secrets_file and self["data-dir"]:
            candidate = os.path.join(self["data-dir"], "secrets")
            secrets_file = candidate if os.path.exists(candidate) else None
        per_id: dict[str, bytes] = {}
        if secrets_file:
            try:
                with open(secrets_file, encoding="utf-8") as f:
                    per_id = parse_secrets_file(f.read())
            except OSError as e:
                raise usage.UsageError(
                    f"cannot read the secrets file {secrets_file}: {e.strerror}"
                ) from None
            except ValueError as e:
                raise usage.UsageError(f"secrets file {secrets_file}: {e}; fix that line") from None
        if not self["secret"] and not per_id:
            raise usage.UsageError(
                "clients must authenticate: give --secret or --secrets-file "
                "(or 'secret'/'secrets-file' in [mediator] of --config)"
            )
        return Secrets(
            shared=self["secret"].encode("utf-8") if self["secret"] else None, per_id=per_id
        )

    def _policy(self) -> BrokerPolicy:
        return BrokerPolicy(
            relay_enabled=self["relay"],
            low_ttl_enabled=self["low-ttl"],
            max_clients=self["max-clients"],
            max_sessions_per_client=self["max-sessions-per-client"],
            max_relays_per_client=self["relay-sessions-per-client"],
            max_relays=self["max-relays"],
            attempt_deadline_seconds=self["attempt-deadline-seconds"],
            low_ttl=self["low-ttl-hops"],
            relay_config_hint=RELAY_SETTING,
        )


class MediatorRole(MultiService):
    """
    The running mediator: STUN listeners, the control port, the status site.

    Children start in the order they were added: STUN first (clients probe
    it as soon as the broker answers them), then the control port, then
    HTTP.
    """

    def __init__(
        self,
        broker: Broker,
        responder: stun_server.StunResponder,
        control_factory: mediator.ControlServerFactory,
    ) -> None:
        super().__init__()
        self.broker = broker
        self.responder = responder
        self.control_factory = control_factory

    def status(self) -> dict[str, Any]:
        """The ``/status`` document: the broker's, plus the STUN counters."""
        document = self.broker.status()
        document["stun"] = self.responder.metrics()
        return document


def make_mediator(config: MediatorConfig, reactor: IRoleReactor) -> MediatorRole:
    """Build every part of the mediator from ``config``, wired together."""
    responder = stun_server.StunResponder()
    registry = role_registry()
    broker = Broker(
        reactor,
        config.secrets,
        config.policy,
        stun_tcp_port=config.stun_tcp_port,
        stun_udp_port=config.stun_udp_port,
        registry=registry,
    )
    registry.register(mediator.StunCollector(responder.metrics))
    control = mediator.ControlServerFactory(
        broker,
        reactor,
        config.relay_limits,
        config.connections_per_minute_per_address,
        messages_per_second=config.control_messages_per_second,
        message_burst=config.control_messages_burst,
    )
    role = MediatorRole(broker, responder, control)
    alternate_ip, alternate_port = config.alternate or (None, None)
    for address in config.stun_udp:
        stun_server.StunUdpService(
            address.port,
            interface=address.interface,
            alternate_ip=alternate_ip,
            alternate_port=alternate_port,
            responder=responder,
            reactor=reactor,
            requests_per_second=config.stun_requests_per_second,
            request_burst=config.stun_request_burst,
        ).setServiceParent(role)
    for description in config.stun_stream:
        # With the clock, idle STUN-over-TCP connections are closed and
        # their number is bounded; without it they would stay open forever.
        factory = stun_server.StunTcpServerFactory(responder, clock=reactor)
        strports.service(description, factory, reactor=reactor).setServiceParent(role)
    strports.service(config.control, control, reactor=reactor).setServiceParent(role)
    site = build_site(
        status=role.status,
        metrics=registry,
        api={},
        admin_token=None,
        title="p2psip mediator",
        allowed_hosts=config.http_allowed_hosts,
        reactor=reactor,
    )
    http_service(config.http, site, reactor).setServiceParent(role)
    return role


def makeService(options: Options, reactor: IRoleReactor | None = None) -> MediatorRole:
    """twistd's entry point: the checked configuration, built."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = as_role_reactor(global_reactor)
    return make_mediator(options.config, reactor)

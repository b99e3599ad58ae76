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

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.python import usage

from p2psip.config import RoleOptions
from p2psip.nat import mediator, stun_server
from p2psip.nat.broker import Broker, BrokerPolicy
from p2psip.nat.control_auth import Secrets, parse_secrets_file
from p2psip.util.metrics import role_registry
from p2psip.web.site import build_site, http_service

#: Where an operator turns the relay on or off, for failure reasons.
RELAY_SETTING = "mediator.ini [mediator] relay (or --relay yes)"


def yes_no(value: str) -> bool:
    word = value.strip().lower()
    if word in ("yes", "true", "on", "1"):
        return True
    if word in ("no", "false", "off", "0"):
        return False
    raise ValueError(value)


yes_no.coerceDoc = "yes or no"  # type: ignore[attr-defined]


def parse_udp(description: str) -> tuple[int, str]:
    """``udp:PORT[:interface=ADDR]`` -> (port, interface)."""
    parts = description.split(":")
    if parts[0] != "udp" or len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"{description!r}: expected udp:PORT[:interface=ADDR]")
    interface = ""
    for extra in parts[2:]:
        name, _, value = extra.partition("=")
        if name != "interface" or not value:
            raise ValueError(f"{description!r}: unknown option {extra!r} (only interface=ADDR)")
        interface = value
    return int(parts[1]), interface


def _tcp_port(description: str) -> int:
    """The port of a TCP server endpoint string (tcp:PORT, tcp:port=PORT), 0 if none."""
    for part in description.split(":")[1:]:
        if part.isdigit():
            return int(part)
        if part.startswith("port=") and part[5:].isdigit():
            return int(part[5:])
    return 0


class Options(RoleOptions):
    role = "mediator"
    repeatable = ("stun",)
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
            "IP:PORT, a second address and port of this host: RFC 5780 behaviour discovery over UDP "
            "(needs --stun udp:PORT:interface=PRIMARY_IP).",
        ],
        ["control", None, "tcp:3479", "STUNT control listener (clients stay connected here)."],
        ["http", None, "tcp:8087:interface=127.0.0.1", "/status and /metrics listener."],
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
            "Shared secret every client proves knowing (HMAC challenge-response).",
        ],
        [
            "secrets-file",
            None,
            None,
            "File of 'ID SECRET' lines: per-client secrets (win over --secret).",
        ],
        ["relay", None, True, "Relay TCP streams when no direct path works.", yes_no],
        [
            "relay-sessions-per-client",
            None,
            4,
            "Relayed sessions one client may hold at once.",
            int,
        ],
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

    def postOptions(self) -> None:
        super().postOptions()
        for description in self["stun"]:
            if description.startswith("udp:"):
                try:
                    parse_udp(description)
                except ValueError as e:
                    raise usage.UsageError(f"--stun {e}") from None
        self["alternate"] = None
        if self["stun-alternate"]:
            host, _, port = self["stun-alternate"].rpartition(":")
            udp = [parse_udp(d) for d in self["stun"] if d.startswith("udp:")]
            if not host or not port.isdigit():
                raise usage.UsageError("--stun-alternate takes IP:PORT, e.g. 198.51.100.11:3479")
            if len(udp) != 1 or not udp[0][1]:
                raise usage.UsageError(
                    "--stun-alternate needs exactly one UDP STUN listener bound to the primary IP: "
                    "--stun udp:3478:interface=PRIMARY_IP"
                )
            self["alternate"] = (host, int(port))
        for name in (
            "relay-sessions-per-client",
            "relay-bytes-per-session",
            "relay-rate-bytes-per-second",
            "max-clients",
            "max-sessions-per-client",
            "connections-per-minute-per-address",
            "low-ttl-hops",
        ):
            if self[name] < 1:
                raise usage.UsageError(f"--{name} (or '{name}' in [mediator]) must be at least 1")
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
        self["secrets"] = Secrets(
            shared=self["secret"].encode("utf-8") if self["secret"] else None, per_id=per_id
        )

    def policy(self) -> BrokerPolicy:
        return BrokerPolicy(
            relay_enabled=self["relay"],
            low_ttl_enabled=self["low-ttl"],
            max_clients=self["max-clients"],
            max_sessions_per_client=self["max-sessions-per-client"],
            max_relays_per_client=self["relay-sessions-per-client"],
            attempt_deadline_seconds=self["attempt-deadline-seconds"],
            low_ttl=self["low-ttl-hops"],
            relay_config_hint=RELAY_SETTING,
        )

    def relay_limits(self) -> mediator.RelayLimits:
        return mediator.RelayLimits(
            max_bytes_per_session=self["relay-bytes-per-session"],
            rate_bytes_per_second=self["relay-rate-bytes-per-second"],
            idle_timeout_seconds=self["relay-idle-seconds"],
        )


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    top = MultiService()
    responder = stun_server.StunResponder()
    stun_tcp_port = stun_udp_port = 3478
    for description in options["stun"]:
        if description.startswith("udp:"):
            port, interface = parse_udp(description)
            stun_udp_port = port
            alternate = options["alternate"]
            stun_server.StunUdpService(
                port,
                interface=interface,
                alternate_ip=alternate[0] if alternate else None,
                alternate_port=alternate[1] if alternate else None,
                responder=responder,
                reactor=reactor,
            ).setServiceParent(top)
        else:
            stun_tcp_port = _tcp_port(description) or stun_tcp_port
            strports.service(
                description, stun_server.StunTcpServerFactory(responder), reactor=reactor
            ).setServiceParent(top)
    registry = role_registry()
    broker = Broker(
        reactor,
        options["secrets"],
        options.policy(),
        stun_tcp_port=stun_tcp_port,
        stun_udp_port=stun_udp_port,
        registry=registry,
    )
    registry.register(mediator.StunCollector(responder.metrics))
    control = mediator.ControlServerFactory(
        broker, reactor, options.relay_limits(), options["connections-per-minute-per-address"]
    )
    strports.service(options["control"], control, reactor=reactor).setServiceParent(top)

    def status() -> dict[str, Any]:
        document = broker.status()
        document["stun"] = responder.metrics()
        return document

    site = build_site(
        status=status, metrics=registry, api={}, title="p2psip mediator", reactor=reactor
    )
    http_service(options["http"], site, reactor).setServiceParent(top)
    top.broker = broker  # type: ignore[attr-defined]
    top.control_factory = control  # type: ignore[attr-defined]
    return top

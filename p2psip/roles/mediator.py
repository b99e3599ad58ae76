"""
The ``p2psip-mediator`` role: STUN (UDP and TCP), the STUNT control port and
broker, the relay of last resort, and the status pages.

``twistd -n p2psip-mediator --config etc/mediator.ini`` is the whole story;
every ``[mediator]`` key can also be given as a flag, and flags win.
"""

from __future__ import annotations

import configparser
import os
from typing import Any

import attrs
from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.python import usage
from twisted.web.server import Site

from p2psip.nat import mediator, stun_server, stunt

DEFAULT_STUN = ["udp:3478", "tcp:3478"]
DEFAULT_CONTROL = "tcp:3479"
DEFAULT_HTTP = "tcp:8087:interface=127.0.0.1"


@attrs.frozen
class MediatorConfig:
    """Everything ``mediator.ini`` can say, with defaults."""

    stun: tuple[str, ...] = ()
    control: str = ""
    http: str = ""
    data_dir: str = ""
    secret: str = ""
    secrets_file: str = ""
    policy: stunt.BrokerPolicy = stunt.BrokerPolicy()
    relay_limits: mediator.RelayLimits = mediator.RelayLimits()
    connections_per_minute_per_address: int = 60


_KEYS: dict[str, dict[str, type]] = {
    "mediator": {"stun": str, "control": str, "http": str, "data-dir": str, "secret": str, "secrets-file": str},
    "relay": {
        "enabled": bool,
        "max-sessions-per-client": int,
        "max-bytes-per-session": int,
        "rate-bytes-per-second": int,
        "idle-timeout-seconds": float,
    },
    "limits": {"max-clients": int, "max-sessions-per-client": int, "connections-per-minute-per-address": int},
    "traversal": {"low-ttl": bool, "low-ttl-hops": int, "attempt-deadline-seconds": float},
}


def config_from_string(text: str, source: str = "mediator.ini") -> MediatorConfig:
    """
    Parse ``mediator.ini``.

    :raises ValueError: for unknown sections or keys and bad values, naming
        the file, section and key.
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source)
    except configparser.Error as e:
        raise ValueError(f"{source}: {e}") from None
    values: dict[str, dict[str, Any]] = {}
    for section in parser.sections():
        if section not in _KEYS:
            raise ValueError(f"{source}: unknown section [{section}] (known: {', '.join(_KEYS)})")
        for key in parser[section]:
            kind = _KEYS[section].get(key)
            if kind is None:
                raise ValueError(f"{source}: unknown key {key!r} in [{section}]")
            try:
                if kind is bool:
                    value: Any = parser.getboolean(section, key)
                elif kind is int:
                    value = parser.getint(section, key)
                elif kind is float:
                    value = parser.getfloat(section, key)
                else:
                    value = parser.get(section, key).strip()
            except ValueError:
                expected = {bool: "yes or no", int: "an integer", float: "a number"}.get(kind, "text")
                raise ValueError(f"{source}: [{section}] {key} must be {expected}") from None
            if kind in (int, float) and value < 0:
                raise ValueError(f"{source}: [{section}] {key} must not be negative")
            values.setdefault(section, {})[key] = value
    m, r, li, t = (values.get(s, {}) for s in ("mediator", "relay", "limits", "traversal"))
    default_policy = stunt.BrokerPolicy()
    default_relay = mediator.RelayLimits()
    return MediatorConfig(
        stun=tuple(m.get("stun", "").split()),
        control=m.get("control", ""),
        http=m.get("http", ""),
        data_dir=m.get("data-dir", ""),
        secret=m.get("secret", ""),
        secrets_file=m.get("secrets-file", ""),
        policy=stunt.BrokerPolicy(
            relay_enabled=r.get("enabled", default_policy.relay_enabled),
            low_ttl_enabled=t.get("low-ttl", default_policy.low_ttl_enabled),
            max_clients=li.get("max-clients", default_policy.max_clients),
            max_sessions_per_client=li.get("max-sessions-per-client", default_policy.max_sessions_per_client),
            max_relays_per_client=r.get("max-sessions-per-client", default_policy.max_relays_per_client),
            attempt_deadline_seconds=t.get("attempt-deadline-seconds", default_policy.attempt_deadline_seconds),
            low_ttl=t.get("low-ttl-hops", default_policy.low_ttl),
        ),
        relay_limits=mediator.RelayLimits(
            max_bytes_per_session=r.get("max-bytes-per-session", default_relay.max_bytes_per_session),
            rate_bytes_per_second=max(1, r.get("rate-bytes-per-second", default_relay.rate_bytes_per_second)),
            idle_timeout_seconds=r.get("idle-timeout-seconds", default_relay.idle_timeout_seconds),
        ),
        connections_per_minute_per_address=li.get("connections-per-minute-per-address", 60),
    )


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
    parts = description.split(":")
    for part in parts[1:]:
        if part.isdigit():
            return int(part)
    for part in parts:
        if part.startswith("port="):
            return int(part[5:])
    return 0


class Options(usage.Options):
    optParameters = [
        ["config", None, None, "INI file (see etc/mediator.ini); flags win over it."],
        ["control", None, None, f"STUNT control listener (default {DEFAULT_CONTROL})."],
        ["http", None, None, f"/status and /metrics listener (default {DEFAULT_HTTP})."],
        ["data-dir", None, None, "Folder for state; a 'secrets' file there is used when no secret is given."],
        ["secret", None, None, "Shared secret every client proves knowing (HMAC challenge-response)."],
        ["secrets-file", None, None, "File of 'ID SECRET' lines: per-client secrets."],
    ]
    optFlags = [["no-relay", None, "Never relay (same as [relay] enabled = no)."]]

    def __init__(self) -> None:
        super().__init__()
        self["stun"] = []

    def opt_stun(self, description: str) -> None:
        """STUN listener, udp:PORT[:interface=ADDR] or a TCP endpoint (repeatable; default udp:3478 and tcp:3478)."""
        self["stun"].append(description)

    def postOptions(self) -> None:  # noqa: N802 - Twisted's name
        config = MediatorConfig()
        if self["config"]:
            try:
                with open(self["config"], encoding="utf-8") as f:
                    config = config_from_string(f.read(), self["config"])
            except OSError as e:
                raise usage.UsageError(f"cannot read --config {self['config']}: {e.strerror}") from None
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        stun = self["stun"] or list(config.stun) or DEFAULT_STUN
        for description in stun:
            if description.startswith("udp:"):
                try:
                    parse_udp(description)
                except ValueError as e:
                    raise usage.UsageError(f"--stun {e}") from None
        data_dir = self["data-dir"] or config.data_dir
        secret = self["secret"] or config.secret
        secrets_file = self["secrets-file"] or config.secrets_file
        if not secrets_file and data_dir and os.path.exists(os.path.join(data_dir, "secrets")):
            secrets_file = os.path.join(data_dir, "secrets")
        per_id: dict[str, bytes] = {}
        if secrets_file:
            try:
                with open(secrets_file, encoding="utf-8") as f:
                    per_id = stunt.parse_secrets_file(f.read())
            except OSError as e:
                raise usage.UsageError(f"cannot read secrets file {secrets_file}: {e.strerror}") from None
            except ValueError as e:
                raise usage.UsageError(f"secrets file {secrets_file}: {e}") from None
        if not secret and not per_id:
            raise usage.UsageError(
                "clients must authenticate: give --secret, --secrets-file, or [mediator] secret in --config"
            )
        policy = config.policy
        if self["no-relay"]:
            policy = attrs.evolve(policy, relay_enabled=False)
        self["resolved"] = attrs.evolve(
            config,
            stun=tuple(stun),
            control=self["control"] or config.control or DEFAULT_CONTROL,
            http=self["http"] or config.http or DEFAULT_HTTP,
            data_dir=data_dir,
            policy=policy,
        )
        self["secrets"] = stunt.Secrets(shared=secret.encode("utf-8") if secret else None, per_id=per_id)


def makeService(options: Options, reactor: Any = None) -> IService:  # noqa: N802 - Twisted's name
    if reactor is None:
        from twisted.internet import reactor
    config: MediatorConfig = options["resolved"]
    top = MultiService()
    responder = stun_server.StunResponder()
    stun_tcp_port = stun_udp_port = 3478
    for description in config.stun:
        if description.startswith("udp:"):
            port, interface = parse_udp(description)
            stun_udp_port = port
            stun_server.StunUdpService(port, interface=interface, responder=responder, reactor=reactor).setServiceParent(
                top
            )
        else:
            stun_tcp_port = _tcp_port(description) or stun_tcp_port
            strports.service(description, stun_server.StunTcpServerFactory(responder), reactor=reactor).setServiceParent(
                top
            )
    broker = stunt.Broker(
        reactor, options["secrets"], config.policy, stun_tcp_port=stun_tcp_port, stun_udp_port=stun_udp_port
    )
    control = mediator.ControlServerFactory(
        broker, reactor, config.relay_limits, config.connections_per_minute_per_address
    )
    strports.service(config.control, control, reactor=reactor).setServiceParent(top)

    def status() -> dict[str, Any]:
        document = broker.status()
        document["stun"] = responder.metrics()
        return document

    strports.service(config.http, Site(mediator.status_resource(status)), reactor=reactor).setServiceParent(top)
    top.broker = broker  # type: ignore[attr-defined]
    top.control_factory = control  # type: ignore[attr-defined]
    return top
